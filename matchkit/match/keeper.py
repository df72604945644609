"""Which copy of a picture to keep: the one a person would choose.

The user decides first: files in a reference folder (``--keep-in``) are
always kept, then each ``--prefer`` rule in order. The built-in rule follows.

Resolution first, but the resolution of the picture itself. A copy rotated
onto a canvas, padded, letterboxed or shown inside a screenshot has more
pixels than the photo inside it, yet none of the extra pixels is picture,
and the picture in it was resampled. So a copy is scored by its picture
pixels, discounted by the share of synthetic fill around them, and a grey
copy of a colour picture is discounted again. Copies with equal scores
(the usual case: same resolution, no fill) are ordered by how well they are
encoded: a lossless file, then the highest JPEG quality (estimated from the
quantisation tables, so a quality-30 re-encode never beats its source), then
the larger file, the older file and the path (a stable order).

A re-photograph (a print or a screen photographed, with the bezel, border
and desk around the picture) is never kept over the original it shows,
however many pixels it has: its picture was resampled through a camera, and
the rest of its frame is not picture.

Copies with the same pixels are one picture in several files; there a
bigger file is not a better one. The file in a lossy format is the source
(a PNG with a JPEG's pixels was made from that JPEG, never the other way
round), then the older and the smaller file.

Every choice can say why it was made (:func:`keep_reason`): the first
criterion on which the keeper beats the runner-up.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from matchkit.signals.colour import LEVELS
from matchkit.store.gallery import StoredImage
from matchkit.io.jpeg_quality import jpeg_quality  # noqa: F401  (re-exported)

FILL_TOLERANCE = 1.0
"""Grey levels a pixel may differ from the border colour and still be fill.
Synthetic fill (a canvas, padding) is flat to within JPEG noise; natural flat
backgrounds (sky, studio white) are not that flat, so they stay picture."""

GREY_MASS = 0.98
"""Share of pixels on the grey diagonal of the colour histogram above which
a copy counts as grey."""

GREY_FACTOR = 0.5
"""Score factor of a grey copy: a colour copy wins unless the grey one has
more than twice the picture pixels."""

WHOLE_SHARE = 0.9
"""A picture share at least this large counts as the whole image. JPEG noise
moves the measured share by a few percent between copies of the same
picture; those copies must tie, so that encoding quality decides."""

#: Formats that store any RGB picture exactly. A file in one of them with
#: another file's pixels is a re-save of that file, never its source. (GIF
#: is left out: 256 colours lose a photo's colours, as a JPEG loses detail.)
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "DIB", "TIFF", "PPM", "PGM", "PBM", "PNM", "TGA",
                              "ICO", "QOI"})
#: Formats that lose information when saving: the source of a lossless copy.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "AVIF", "HEIF", "JPEG2000"})
#: Quality rank of a lossless file, above every JPEG quality (1-100).
LOSSLESS_QUALITY = 101

_FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "JFIF": "JPEG", "TIF": "TIFF",
                   "JP2": "JPEG2000", "J2K": "JPEG2000", "HEIC": "HEIF"}


def normal_format(name: str | None) -> str:
    """Pillow's name of an image format (``jpg`` -> ``JPEG``)."""
    name = (name or "").strip().upper().lstrip(".")
    return _FORMAT_ALIASES.get(name, name)


# ---------------------------------------------------------------- measurements

def grey_share(histogram: np.ndarray) -> float:
    """Share of pixels whose RGB cell lies on the grey diagonal (r = g = b),
    from a :func:`colour.colour_histogram`; 1.0 for an empty histogram."""
    h = np.asarray(histogram, np.float64).reshape(LEVELS, LEVELS, LEVELS)
    total = h.sum()
    if total == 0:
        return 1.0
    diagonal = np.arange(LEVELS)
    return float(h[diagonal, diagonal, diagonal].sum() / total)


def grey_shares(histograms: np.ndarray) -> np.ndarray:
    """:func:`grey_share` of each row of ``histograms`` (n, bins) at once (a
    clustering asks it of most images; one by one it took about 17 us each
    in a 1% add to 10,000 images, 0.17 s)."""
    h = np.asarray(histograms).reshape(-1, LEVELS ** 3)
    total = h.sum(1, dtype=np.float64)
    diagonal = np.arange(LEVELS) * (LEVELS * LEVELS + LEVELS + 1)
    on = h[:, diagonal].sum(1, dtype=np.float64)
    return np.divide(on, total, out=np.ones(len(h)), where=total > 0)


def hull_share(mask: np.ndarray) -> float:
    """Share of the image inside the convex hull of a picture mask.

    Synthetic fill lies *around* the picture (padding, the canvas of a
    rotated copy), so the picture is a convex block and its hull is the
    picture. Flat patches *inside* the picture are not fill: a black night
    sky between stars is picture, and the hull of the stars covers it."""
    mask = np.asarray(mask, bool)
    if mask.all() or not mask.any():
        return 1.0
    # The hull of all mask pixels is the hull of each row's first and last
    # one: a few hundred points instead of the whole mask.
    rows = np.flatnonzero(mask.any(axis=1))
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = mask.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    ends = np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)])
    hull = cv2.convexHull(ends.astype(np.int32).reshape(-1, 1, 2))
    out = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(out, hull, 1)
    return float(out.mean())


def quality_rank(img: StoredImage) -> int:
    """How well a file is encoded: ``LOSSLESS_QUALITY`` for lossless formats,
    the estimated quality of a JPEG, 0 when unknown (other lossy formats)."""
    fmt = normal_format(img.format)
    if fmt in LOSSLESS_FORMATS:
        return LOSSLESS_QUALITY
    q = getattr(img, "jpeg_quality", None)
    return int(q) if q is not None else 0


def picture_score(pixels: float, picture_share: float = 1.0, grey: bool = False) -> float:
    """Quality of a copy as pixels: picture pixels, less for fill and for grey.

    ``picture_share`` is the fraction of the image that is picture (not
    fill, frame or screen furniture); from WHOLE_SHARE up it counts as 1.
    The fill discount (``0.5 + 0.5 * share``) makes a rotated or padded copy
    lose to the plain copy with the same picture pixels, while a much larger
    copy still wins.
    """
    share = float(picture_share)
    share = 1.0 if share >= WHOLE_SHARE else max(0.0, share)
    score = pixels * share * (0.5 + 0.5 * share)
    return score * (GREY_FACTOR if grey else 1.0)


# ---------------------------------------------------------------- user policy

@dataclass(frozen=True)
class Preference:
    """One ``--prefer`` rule: ``oldest``, ``newest``, ``largest``, ``smallest``
    (file bytes), ``format:FMT`` or ``path:GLOB``."""

    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


PREFERENCE_HELP = "oldest, newest, largest, smallest, format:FMT or path:GLOB"


def parse_preference(text: str) -> Preference:
    """A :class:`Preference` from its command-line form; ValueError if malformed."""
    text = str(text).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    if not sep and kind in ("oldest", "newest", "largest", "smallest"):
        return Preference(kind)
    if sep and kind == "format" and arg.strip():
        return Preference("format", normal_format(arg))
    if sep and kind == "path" and arg:
        return Preference("path", arg)
    raise ValueError(f"unknown --prefer {text!r} (use {PREFERENCE_HELP})")


@dataclass(frozen=True)
class KeeperPolicy:
    """What the user asked for: reference folders and preferences, in order."""

    keep_in: tuple[str, ...] = ()
    prefer: tuple[Preference, ...] = ()

    @classmethod
    def make(cls, keep_in: Iterable[str | os.PathLike] = (),
             prefer: Iterable[str | Preference] = ()) -> "KeeperPolicy":
        """Folders resolved like gallery paths; preferences parsed (ValueError).
        A single string is one folder or one rule, not a sequence of letters."""
        keep_in = [keep_in] if isinstance(keep_in, (str, os.PathLike)) else keep_in
        prefer = [prefer] if isinstance(prefer, (str, Preference)) else prefer
        folders = tuple(str(Path(f).resolve()) for f in keep_in)
        prefs = tuple(p if isinstance(p, Preference) else parse_preference(p) for p in prefer)
        return cls(folders, prefs)

    def reference(self, path: str) -> str | None:
        """The reference folder holding ``path`` (None: not in one)."""
        for folder in self.keep_in:
            if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
                return folder
        return None


# ---------------------------------------------------------------- ranking

@dataclass
class Candidate:
    """What the ranking knows about one file: its gallery row and, for
    near copies, the measured picture share and greyness."""

    image: StoredImage
    picture_share: float = 1.0
    grey: bool = False
    #: A re-photograph of another member (``picture.rephotograph``).
    rephotographed: bool = False

    @property
    def path(self) -> str:
        return self.image.path

    def score(self) -> int:
        return round(picture_score(self.image.pixels, self.picture_share, self.grey))


@dataclass(frozen=True)
class Criterion:
    """One step of an ordering: a sort key (smaller wins) and the sentence
    that says why the winner beat the runner-up on it."""

    key: Callable[[Candidate], Any]
    why: Callable[[Candidate, Candidate], str]


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 2**20:.1f} MB"


def _user_criteria(policy: KeeperPolicy) -> list[Criterion]:
    out = [Criterion(lambda c: 0 if policy.reference(c.path) else 1,
                     lambda k, r: f"in reference folder {policy.reference(k.path)}")]
    for p in policy.prefer:
        said = f"preferred: {p}"
        if p.kind == "oldest":
            out.append(Criterion(lambda c: c.image.mtime_ns, lambda k, r, s=said: s))
        elif p.kind == "newest":
            out.append(Criterion(lambda c: -c.image.mtime_ns, lambda k, r, s=said: s))
        elif p.kind == "largest":
            out.append(Criterion(lambda c: -c.image.size, lambda k, r, s=said: s))
        elif p.kind == "smallest":
            out.append(Criterion(lambda c: c.image.size, lambda k, r, s=said: s))
        elif p.kind == "format":
            out.append(Criterion(
                lambda c, f=p.arg: 0 if normal_format(c.image.format) == f else 1,
                lambda k, r, s=said: s))
        elif p.kind == "path":
            out.append(Criterion(
                lambda c, g=p.arg: 0 if fnmatch.fnmatchcase(c.path, g) else 1,
                lambda k, r, s=said: s))
    return out


def _why_picture(k: Candidate, r: Candidate) -> str:
    if r.grey and not k.grey:
        return "colour copy over a grey one"
    if k.image.pixels > r.image.pixels:
        return (f"most picture pixels ({k.image.width}x{k.image.height} vs "
                f"{r.image.width}x{r.image.height})")
    return "least fill around the picture"


def _why_quality(k: Candidate, r: Candidate) -> str:
    qk, qr = quality_rank(k.image), quality_rank(r.image)
    if qk == LOSSLESS_QUALITY:
        other = f"JPEG quality {qr}" if qr else normal_format(r.image.format) or "lossy file"
        return f"lossless {normal_format(k.image.format)} over {other}"
    if qr:
        return f"highest JPEG quality ({qk} vs {qr})"
    return f"JPEG quality {qk} over {normal_format(r.image.format) or 'unknown format'}"


_PLAIN_TAIL = [
    Criterion(lambda c: c.image.mtime_ns, lambda k, r: "oldest file"),
    Criterion(lambda c: c.path, lambda k, r: "first by path"),
]


def near_criteria(policy: KeeperPolicy = KeeperPolicy()) -> list[Criterion]:
    """The order among copies that differ in pixels (members of a cluster)."""
    return _user_criteria(policy) + [
        Criterion(lambda c: c.rephotographed,
                  lambda k, r: "the original, not a re-photograph of it"),
        Criterion(lambda c: -c.score(), _why_picture),
        Criterion(lambda c: -quality_rank(c.image), _why_quality),
        Criterion(lambda c: -c.image.size,
                  lambda k, r: f"largest file ({_kb(k.image.size)} vs {_kb(r.image.size)})"),
        *_PLAIN_TAIL,
    ]


def _source_format(c: Candidate) -> int:
    return 0 if normal_format(c.image.format) in LOSSY_FORMATS else 1


def same_pixels_criteria(policy: KeeperPolicy = KeeperPolicy()) -> list[Criterion]:
    """The order among files with the same pixels (or bytes)."""
    return _user_criteria(policy) + [
        Criterion(_source_format, lambda k, r: (
            f"original {normal_format(k.image.format)}; the "
            f"{normal_format(r.image.format)} has the same pixels")),
        Criterion(lambda c: c.image.mtime_ns, lambda k, r: "oldest file with the same pixels"),
        Criterion(lambda c: c.image.size, lambda k, r: (
            f"smallest file with the same pixels ({_kb(k.image.size)} vs {_kb(r.image.size)})")),
        Criterion(lambda c: c.path, lambda k, r: "first by path"),
    ]


def sort_key(criteria: Sequence[Criterion], c: Candidate) -> tuple:
    return tuple(cr.key(c) for cr in criteria)


def _deciding(criteria: Sequence[Criterion], keeper: Candidate, other: Candidate) -> int:
    """Index of the first criterion that tells ``keeper`` and ``other`` apart."""
    return next((n for n, cr in enumerate(criteria) if cr.key(keeper) != cr.key(other)),
                len(criteria))


def why(criteria: Sequence[Criterion], keeper: Candidate, runner_up: Candidate) -> str:
    """Why ``keeper`` ranks before ``runner_up``: the first criterion that tells them apart."""
    n = _deciding(criteria, keeper, runner_up)
    return criteria[n].why(keeper, runner_up) if n < len(criteria) else "first by path"


def explain(criteria: Sequence[Criterion], policy: KeeperPolicy, keeper: Candidate,
            others: Sequence[Candidate]) -> str:
    """Why ``keeper`` beat ``others`` (best first), in a few words.

    Against the runner-up (the closest call); a user rule (reference folder,
    ``--prefer``) that set the keeper above some other member is named first,
    even when the runner-up lost on a later criterion (two reference files)."""
    if not others:
        return ""
    parts = []
    n_user = 1 + len(policy.prefer)
    first = min(others, key=lambda o: _deciding(criteria, keeper, o))
    if _deciding(criteria, keeper, first) < n_user:
        parts.append(why(criteria, keeper, first))
    parts.append(why(criteria, keeper, others[0]))
    return "; ".join(dict.fromkeys(parts))


def keeper_priority(img: StoredImage, picture_share: float | None = None,
                    grey: bool = False, policy: KeeperPolicy = KeeperPolicy()) -> tuple:
    """Sort key among near copies, best first (see :func:`near_criteria`).
    Without ``picture_share`` the whole image counts."""
    c = Candidate(img, 1.0 if picture_share is None else picture_share, grey)
    return sort_key(near_criteria(policy), c)
