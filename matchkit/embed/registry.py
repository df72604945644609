"""Models by name, described as data (timm/open_clip style).

Each named model is a TOML file in ``matchkit/embed/models/`` (shipped inside
the package, so an installed matchkit finds them):

* ``kind = "clip"``: ``source`` (hub id or directory), optional ``templates``
  (prompt templates, each with one ``{}``) and ``text_model`` (a multilingual
  text encoder paired with the image tower).
* ``kind = "onnx"``: ``file`` (path, relative to the TOML) or ``package`` +
  ``file`` (a file inside an installed Python package, found without copying
  it) and ``install`` (how to get that package), plus the preprocessing and
  tensor fields of :class:`matchkit.embed.onnxmodel.ONNXEmbedder`.

``load_embedder`` also takes paths: a directory with a CLIP ``config.json``
loads as CLIP, a ``.onnx`` file as ONNX (its sibling ``NAME.toml`` describes
preprocessing, if present), and a ``.toml`` file as that config.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from matchkit.embed.base import Embedder, EmbedderError, ModelNotFound

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The model used when none is named.
DEFAULT_MODEL = "clip-vit-b32"

_KINDS = ("clip", "onnx")
_META_KEYS = ("name", "kind", "description", "license", "install", "package", "file", "source")


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry (what ``matchkit models`` lists)."""

    name: str
    kind: str
    description: str = ""
    source: str = ""
    has_text: bool = False
    available: bool = False
    how_to_get: str = ""
    config: dict = field(default_factory=dict, repr=False, compare=False)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ModelNotFound(f"cannot read model config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EmbedderError(f"model config {path} is not valid TOML: {exc}") from exc


def _builtin_configs() -> dict[str, dict]:
    out = {}
    folder = resources.files("matchkit.embed") / "models"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with entry.open("rb") as f:
                cfg = tomllib.load(f)
            cfg.setdefault("name", entry.name[: -len(".toml")])
            out[cfg["name"]] = cfg
    return out


def _package_file(cfg: dict) -> Path:
    """Locate ``cfg['file']`` inside the installed package ``cfg['package']``
    without importing it or copying anything."""
    package = cfg["package"]
    install = cfg.get("install") or f"pip install {package}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model {cfg.get('name', package)!r} needs the Python package "
                            f"{package!r}, which is not installed; install it with `{install}`")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / cfg["file"]
        if candidate.is_file():
            return candidate
    raise ModelNotFound(f"package {package!r} is installed but has no {cfg['file']!r}; "
                        f"reinstall it with `{install}`")


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:
        return False


def _info(cfg: dict) -> ModelInfo:
    kind = cfg.get("kind", "")
    available, how = False, cfg.get("install", "")
    if kind == "clip":
        src = cfg.get("source", "")
        available = (Path(src).expanduser().is_dir() or _hub_cached(src)) \
            and importlib.util.find_spec("transformers") is not None
        how = how or (f"pip install 'matchkit[clip]'; huggingface-cli download {src} "
                      "--local-dir DIR on a connected machine, then pass DIR")
    elif kind == "onnx":
        try:
            available = (_package_file(cfg) if "package" in cfg else Path(cfg["file"])).is_file()
        except (EmbedderError, KeyError):
            available = False
        available = available and importlib.util.find_spec("onnxruntime") is not None
        how = how or "pip install 'matchkit[onnx]'"
    return ModelInfo(name=cfg["name"], kind=kind, description=cfg.get("description", ""),
                     source=cfg.get("source", "") or cfg.get("package", "") or cfg.get("file", ""),
                     has_text=kind == "clip", available=bool(available), how_to_get=how,
                     config=dict(cfg))


def list_models() -> list[ModelInfo]:
    """The named models, with whether each can be loaded on this machine right now."""
    return [_info(cfg) for cfg in _builtin_configs().values()]


def load_embedder(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str = "cpu",
                  batch_size: int = 32, **kw: Any) -> Embedder:
    """An embedder by registry name, checkpoint directory, ``.onnx`` file or ``.toml`` config.

    Keyword arguments override config fields (``templates``, ``threads``,
    ``fp16``, ``text_model``, ONNX preprocessing fields, ``name``).
    Raises :class:`ModelNotFound` (with how to get the model) when it is not
    on this machine, :class:`EmbedderError` for a broken description.
    """
    key = str(name_or_path)
    builtin = _builtin_configs()
    if key in builtin:
        return _build(dict(builtin[key]), base_dir=None, device=device, batch_size=batch_size, kw=kw)
    path = Path(key).expanduser()
    if path.suffix.lower() == ".toml":
        cfg = _read_toml(path)
        cfg.setdefault("name", str(path.resolve()))
        return _build(cfg, base_dir=path.parent, device=device, batch_size=batch_size, kw=kw)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelNotFound(f"ONNX model file {path} does not exist")
        sidecar = path.with_suffix(".toml")
        cfg = _read_toml(sidecar) if sidecar.is_file() else {}
        cfg.update(kind="onnx", file=str(path.resolve()))
        cfg.pop("package", None)
        cfg.setdefault("name", str(path.resolve()))
        return _build(cfg, base_dir=path.parent, device=device, batch_size=batch_size, kw=kw)
    if path.is_dir():
        from matchkit.embed.clip import is_clip_dir

        if not is_clip_dir(path):
            raise ModelNotFound(f"{path} is a directory but not a CLIP checkpoint "
                                "(no config.json with model_type 'clip')")
        cfg = {"kind": "clip", "source": str(path.resolve()), "name": str(path.resolve())}
        return _build(cfg, base_dir=None, device=device, batch_size=batch_size, kw=kw)
    if path.exists():
        raise ModelNotFound(f"{path} is not a model: pass a CLIP checkpoint directory, "
                            "a .onnx file or a .toml model config")
    looks_like_hub_id = key.count("/") == 1 and not key.startswith((".", "/", "~")) \
        and not path.parent.exists()
    if looks_like_hub_id:
        # A hub id that a registered model uses gets that model's name, so a gallery
        # indexed with "clip-vit-b32" accepts "openai/clip-vit-base-patch32" and back.
        same = [c for c in builtin.values() if c.get("kind") == "clip"
                and c.get("source") == key and not c.get("text_model")]
        cfg = dict(same[0]) if same else {"kind": "clip", "source": key, "name": key}
        return _build(cfg, base_dir=None, device=device, batch_size=batch_size, kw=kw)
    raise ModelNotFound(f"unknown model {key!r}: not a registered name ({', '.join(builtin)}) "
                        "and no such file or directory. Pass a registered name, a CLIP checkpoint "
                        "directory (download one with `huggingface-cli download "
                        "openai/clip-vit-base-patch32 --local-dir DIR` on a connected machine), "
                        "a .onnx file or a .toml model config")


def _build(cfg: dict, *, base_dir: Path | None, device: str, batch_size: int,
           kw: dict) -> Embedder:
    cfg = {**cfg, **kw}
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise EmbedderError(f"model config {cfg.get('name')!r}: kind must be one of "
                            f"{', '.join(_KINDS)}, not {kind!r}")
    name = cfg["name"]
    params = {k: v for k, v in cfg.items() if k not in _META_KEYS}
    if kind == "clip":
        from matchkit.embed.clip import CLIPEmbedder as cls
    else:
        from matchkit.embed.onnxmodel import ONNXEmbedder as cls
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "path", "source"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise EmbedderError(f"model config {name!r}: unknown field(s) {', '.join(unknown)} for "
                            f"kind {kind!r} (known: {', '.join(sorted(allowed))})")
    if kind == "clip":
        source = str(cfg.get("source") or "")
        if not source:
            raise EmbedderError(f"model config {name!r} has no `source`")
        if base_dir is not None and (base_dir / source).is_dir():
            source = str((base_dir / source).resolve())
        text_model = params.pop("text_model", None)
        if text_model and base_dir is not None and (base_dir / text_model).is_dir():
            text_model = str((base_dir / text_model).resolve())
        return cls(source, name=name, device=device, batch_size=batch_size,
                            text_model=text_model, **params)
    if "package" in cfg:
        path = _package_file(cfg)
    elif cfg.get("file"):
        path = Path(cfg["file"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ModelNotFound(f"model {name!r}: ONNX file {path} does not exist"
                                + (f"; {cfg['install']}" if cfg.get("install") else ""))
    else:
        raise EmbedderError(f"model config {name!r} needs `file` (or `package` and `file`)")
    return cls(path, name=name, device=device, batch_size=batch_size, **params)
