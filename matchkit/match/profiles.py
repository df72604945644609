"""Calibration profiles: a calibrated pair decision saved as a TOML file.

A profile is plain data: metadata (name, target precision, what it was
calibrated on, when, with which matchkit), optional ``Settings`` overrides
and the fitted ``PairCalibrator``. Loading never executes anything.

A SHA-256 checksum over the canonical payload refuses files changed after
calibration by accident (a bad copy, an edit by someone who did not read
the header). It is unkeyed, so it proves nothing against someone who means
it: anyone can edit a value and recompute the checksum. So every value is
checked anyway: each setting against its range in ``config.RANGES`` (the
same check ``Settings`` and the command-line options use), the calibrator's
numbers against theirs. To change a profile, re-run ``matchkit calibrate``.

The matchkit version recorded in a profile is compared with the running
one: a profile written by a newer major or minor release is refused (it
may rely on features or settings this version computes differently, and
a silently different decision is worse than an error); one from the same
or an older release, or from a newer patch release, loads.

Every problem is a ``ProfileError`` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matchkit.util.version import __version__
from matchkit.util.fs import atomic_write_bytes
from matchkit.match.calibrate import CalibratorError, PairCalibrator
from matchkit.config import Settings, SettingsError, check_setting
from matchkit.match.edits import configs_dirs
from matchkit.relation import DEFAULT_LEVEL, LEVELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMAT = 1
_TOP = {"format", "name", "target_precision", "created", "matchkit_version", "checksum",
        "data", "settings", "calibrator"}


class ProfileError(ValueError):
    """A profile that cannot be found, read or trusted."""


@dataclass
class Profile:
    name: str
    target_precision: float
    calibrator: PairCalibrator
    #: Settings overrides applied before matching (field name -> value).
    settings: dict = field(default_factory=dict)
    #: What the profile was calibrated on (folder, photos, suite, pairs...).
    data: dict = field(default_factory=dict)
    created: str = ""
    matchkit_version: str = __version__
    path: str = ""

    @property
    def level(self) -> str:
        """The ``--level`` the profile was calibrated for: its positives were
        the edits that level groups (older profiles: "copies")."""
        return str(self.data.get("level", DEFAULT_LEVEL))

    def check_level(self, level: str | None) -> None:
        """Raise ``ProfileError`` when ``level`` (None: the profile's own) is
        not the level the profile was fitted for; callers check before a run
        starts so a wrong flag fails in one line, not after extraction."""
        if level is not None and level != self.level:
            raise ProfileError(
                f"profile {self.name!r} was calibrated for --level {self.level}, not {level} "
                f"(fit one with: matchkit calibrate PHOTOS --level {level} --out FILE)")

    def apply(self, settings: Settings, level: str | None = None) -> Settings:
        """``settings`` with the profile's overrides, at the profile's level.

        Its threshold only means something at the level it was fitted for (a
        copies profile learned that a recolour is a non-match), so asking for
        another ``level`` raises ``ProfileError`` rather than deciding with it.
        """
        self.check_level(level)
        settings = settings.with_(**self.settings) if self.settings else settings
        return settings.with_(level=self.level)

    def payload(self) -> dict:
        return {"format": FORMAT, "name": self.name,
                "target_precision": float(self.target_precision),
                "created": self.created or _now(), "matchkit_version": self.matchkit_version,
                "data": _plain(self.data), "settings": dict(self.settings),
                "calibrator": _plain(self.calibrator.to_dict())}


def checksum(payload: dict) -> str:
    """SHA-256 of the payload's canonical JSON (sorted keys, no checksum key)."""
    body = {k: v for k, v in payload.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def save_profile(profile: Profile, path: str | os.PathLike) -> Path:
    payload = profile.payload()
    payload["checksum"] = checksum(payload)
    text = ("# matchkit calibration profile, written by `matchkit calibrate`.\n"
            "# Do not edit: the checksum covers every value below.\n" + dump_toml(payload))
    # Writing what we read back must give the same checksum (floats round-trip via
    # repr), and a profile that would be refused on loading is not written at all.
    back = tomllib.loads(text)
    if checksum(back) != payload["checksum"]:
        raise ProfileError("internal error: profile does not round-trip through TOML")
    profile_from_dict(back, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """A profile by path (``x.toml``) or by name (``configs/NAME.toml``)."""
    path = resolve_profile(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"profile {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read profile {path}: {e}") from None
    return profile_from_dict(data, str(path))


def profile_from_dict(data: dict, path: str = "") -> Profile:
    """Check every value of a loaded profile (see the module docstring)."""
    where = f"profile {path}" if path else "profile"
    missing = _TOP - set(data) - {"settings", "data"}
    if missing:
        raise ProfileError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = set(data) - _TOP
    if unknown:
        raise ProfileError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    if data["format"] != FORMAT:
        raise ProfileError(f"{where}: profile format {data['format']!r} is not supported "
                           f"(this matchkit reads format {FORMAT})")
    _check_version(data["matchkit_version"], where)
    if data["checksum"] != checksum(data):
        raise ProfileError(f"{where}: checksum mismatch, the file was changed after "
                           f"calibration (re-run matchkit calibrate)")
    for key in ("name", "created", "matchkit_version"):
        if not isinstance(data[key], str):
            raise ProfileError(f"{where}: {key} must be a string")
    tp = data["target_precision"]
    if isinstance(tp, bool) or not isinstance(tp, (int, float)) or not 0 < tp < 1:
        raise ProfileError(f"{where}: target_precision must be a number in (0, 1), got {tp!r}")
    for key in ("data", "settings", "calibrator"):
        if key in data and not isinstance(data[key], dict):
            raise ProfileError(f"{where}: [{key}] must be a table")
    level = data.get("data", {}).get("level", DEFAULT_LEVEL)
    if level not in LEVELS:
        raise ProfileError(f"{where}: level must be one of {', '.join(LEVELS)}, got {level!r}")
    settings = _check_settings(data.get("settings", {}), where)
    try:
        cal = PairCalibrator.from_dict(data["calibrator"])
    except CalibratorError as e:
        raise ProfileError(f"{where}: {e}") from None
    if cal.target_precision != tp:
        raise ProfileError(f"{where}: target_precision {tp} differs from the calibrator's "
                           f"{cal.target_precision}")
    return Profile(data["name"], float(tp), cal, settings, dict(data.get("data", {})),
                   data["created"], data["matchkit_version"], path)


def resolve_profile(name_or_path: str | os.PathLike) -> Path:
    """The file of a profile: a path to an existing file, or ``NAME`` in a configs
    folder (``$MATCHKIT_CONFIGS``, then the repository's ``configs/``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == ".toml" or os.sep in str(name_or_path):
        raise ProfileError(f"profile file not found: {name_or_path}")
    for d in configs_dirs():
        if (d / f"{name_or_path}.toml").is_file():
            return d / f"{name_or_path}.toml"
    raise ProfileError(f"unknown profile {str(name_or_path)!r} "
                       f"(available: {', '.join(available_profiles()) or 'none'}; "
                       f"or give a path to a .toml file)")


def available_profiles() -> list[str]:
    return sorted({p.stem for d in configs_dirs() for p in d.glob("*.toml")})


def _check_settings(overrides: dict, where: str) -> dict:
    for key, value in overrides.items():
        try:
            check_setting(key, value)
        except SettingsError as e:
            raise ProfileError(f"{where}: {e}") from None
    return dict(overrides)


def _release(version) -> tuple[int, int] | None:
    """(major, minor) of a version text such as ``0.1.0`` or ``1.2.0rc1``."""
    m = re.match(r"(\d+)\.(\d+)(?![\d])", version) if isinstance(version, str) else None
    return (int(m[1]), int(m[2])) if m else None


def _check_version(version, where: str) -> None:
    """Refuse a profile written by a newer major or minor release than this one."""
    if not isinstance(version, str):
        raise ProfileError(f"{where}: matchkit_version must be a string")
    theirs = _release(version)
    if theirs is None:
        raise ProfileError(f"{where}: matchkit_version {version!r} is not a version number")
    ours = _release(__version__)
    if ours is not None and theirs > ours:
        raise ProfileError(f"{where}: written by matchkit {version}, newer than this matchkit "
                           f"{__version__}; upgrade matchkit or re-run matchkit calibrate")


def _plain(value):
    """Numpy scalars and tuples to plain Python values; None entries dropped (TOML has no null)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- a small TOML writer for the structure above ----------------------------------

def dump_toml(data: dict) -> str:
    """TOML text of a dict of scalars, lists of scalars and nested dicts (tables)."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: dict, prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix:
        lines.append("")
        lines.append("[" + ".".join(_key(k) for k in prefix) + "]")
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables.items():
        _table(v, prefix + [k], lines)


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ProfileError(f"cannot save a non-finite number ({v})")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a valid TOML basic string (\uXXXX escapes)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ProfileError(f"cannot save a {type(v).__name__} in a profile")
