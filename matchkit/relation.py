"""What relates two matched images, and which relations a run groups.

A user who asks for duplicates means copies of one picture, not the dark
version of a wallpaper or another shot of the same scene. Every reported pair
therefore says how its images relate, as one of ``KINDS`` (ordered from the
closest to the loosest relation), and a *level* says which kinds form
clusters: ``copies`` (the default: exact through recapture), ``variants``
(also the same artwork recoloured) or ``similar`` (also different shots).

``classify`` is the one place that turns measured evidence (see
``RelationEvidence``; verification fills it in ``match/pairs.py``) into a kind.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from matchkit.signals.thumbmatch_views import ICON_SIDE

KINDS: tuple[str, ...] = (
    "exact",        # the same file bytes
    "same-pixels",  # the same decoded pixels in another file or container
    "resized",      # the whole picture resampled, re-encoded or converted
    "crop",         # one image shows only part of the other
    "edited",       # overlay, caption, sticker, blur, padding, grey, flip or rotation
    "recapture",    # re-photographed print or screen: a perspective transform
    "variant",      # the same artwork in other colours or lightness, a state variant
    "same-scene",   # different shots: bursts, stereo, video frames, exposure series
)

def compose(first: str, second: str) -> str:
    """The relation of B and C when A relates to each (``first``: A-B,
    ``second``: A-C): the looser of the two in ``KINDS`` order. Two resized
    copies of one picture are resized copies of each other; a crop and a
    resized copy of it, a crop; anything and an edited copy, edited."""
    return max(first, second, key=KINDS.index)


#: The loosest kind that each level groups; levels are nested.
LEVELS: dict[str, str] = {"copies": "recapture", "variants": "variant", "similar": "same-scene"}
DEFAULT_LEVEL = "copies"

#: Overlap cells that agree at least this much: the copy shows the picture
#: unchanged apart from resampling and re-encoding (below: an overlay or a
#: blur changed part of it).
UNCHANGED_AGREEMENT = 0.97
#: Smaller share of either picture inside the overlap that still counts as the
#: whole picture (borders lost to resampling, a thin frame).
WHOLE_COVERAGE = 0.9
#: A crop shows part of the other picture: one image's frame lies inside the
#: other's. When neither frame has more than this share inside the other,
#: they are two windows onto a larger picture, each showing what the other
#: lacks (neighbouring pages cut from one map, a pan across a scene), not a
#: copy of either. The share is measured on whole frames (``local_overlap.Overlap.
#: contained``): a contained crop gives 0.95-1.0 (thumbnail pixel rounding);
#: two Tux Paint maps cut from one world map (real dev set) about 0.8 and 0.4.
CONTAINED_FRAME = 0.9
#: Perspective strength (how much the homography's depth term varies across
#: the image) from which a copy counts as a recapture: flat scans and resizes
#: stay near 0; a 10-degree keystone is about 0.05.
RECAPTURE_PERSPECTIVE = 0.03
#: Light/dark versions of one artwork: the mean grey level of the two
#: thumbnails moves by at least this much (0-255) while the colour histograms
#: share less than ``LIGHT_DARK_COLOUR`` ... Chosen on the real dev set
#: (benchmarks/REALDEV.md): its light/dark wallpapers move 30 levels at a
#: colour similarity of 0.34-0.36 (b/w layouts 17, 0.33); its true copies
#: (shipped previews, icons at two sizes) move at most 13 levels and keep a
#: similarity of 0.79 or more. Both tests together: a brightness edit of a
#: photo moves the lightness but keeps most of its colour histogram.
LIGHT_DARK_SHIFT = 20.0
#: Icon-sized pictures (both sides at most ``ICON_SIDE`` pixels, defined by
#: the icon signal, ``signals.thumbmatch_views``) ...
#: ... in these lossless formats, at the same size and with other pixels, were
#: drawn apart on purpose (a state badge, a folder colour, another member of
#: an icon family): a codec or a resize would have changed the size or the
#: format. The real dev set's 5,000 icon look-alikes are of this kind; none
#: of its true pairs is (identical files are found by their bytes or pixels).
LOSSLESS_FORMATS = frozenset({"PNG", "GIF", "BMP", "TIFF", "ICO", "PPM"})
LIGHT_DARK_COLOUR = 0.5
#: Two whole pictures (neither grey, neither turned) whose colour histograms
#: share less than this are a recolour even when the lightness stayed: the
#: same layout in other colours, which a hue test misses when the colours are
#: pale (LXQt origami green vs dark 0.30, waves blue vs purple 0.00, a menu in
#: sepia vs violet-grey 0.33). True copies of the real dev set that are not
#: grey keep 0.86 or more; pHash-matched copies of the hard calib half (blur,
#: captions, emoji, downscale) 0.59 or more.
RECOLOUR_COLOUR = 0.45


def check_level(level: str) -> str:
    """``level`` itself if known, else ValueError naming the known levels."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (choose from {', '.join(LEVELS)})")
    return level


def in_level(kind: str, level: str) -> bool:
    """Whether pairs of relation ``kind`` form clusters at ``level``."""
    return KINDS.index(kind) <= KINDS.index(LEVELS[check_level(level)])


@dataclass
class RelationEvidence:
    """What was measured about a matched pair, for ``classify``. Defaults are
    the neutral values: a field a pair has no measurement for does not steer it."""

    same_bytes: bool = False
    same_pixels: bool = False
    #: One planar transform (affine or homography) maps the whole overlap:
    #: its inliers spread over the picture both images share.
    geometry: bool = True
    #: Share of each image's picture inside the aligned overlap.
    coverage_a: float = 1.0
    coverage_b: float = 1.0
    #: The larger of the two frames' shares inside the other (``local_overlap.Overlap.contained``).
    contained: float = 1.0
    #: The aligned pixels agree: over the whole overlap, or in most of its cells.
    pixels_agree: bool = True
    #: Share of the textured overlap where the aligned pixels agree (None: not measured).
    agreement: float | None = None
    #: The colours agree where the pictures overlap (False: a recolour).
    colour_agree: bool = True
    #: Either image is a grey copy.
    grey_a: bool = False
    grey_b: bool = False
    #: Mean grey level moved between the two thumbnails (0-255), and the
    #: colour-histogram similarity (``colour.histogram_similarity``).
    lightness_shift: float = 0.0
    colour_similarity: float = 1.0
    #: Both images are lossless icons of one size with different pixels
    #: (``ICON_SIDE``): drawn apart on purpose.
    redrawn: bool = False
    #: Perspective strength of the transform (0: affine).
    perspective: float = 0.0
    #: Mirror image, rotation or padding on a flat canvas: geometry edits.
    reoriented: bool = False
    padded: bool = False


def classify(ev: RelationEvidence) -> str:
    """The relation kind of one matched pair."""
    if ev.same_bytes:
        return "exact"
    if ev.same_pixels:
        return "same-pixels"
    if not ev.geometry:
        # Matches that no single plane explains: a 3-D scene seen twice.
        return "same-scene"
    if not ev.pixels_agree:
        # The layout lines up but the pixels do not: light/dark versions,
        # state variants, another rendering of the same artwork.
        return "variant"
    if ev.redrawn and ev.grey_a == ev.grey_b:
        # One icon drawn twice at one size: a state or colour variant (a
        # grey copy stays an edit).
        return "variant"
    if light_dark(ev):
        # The same shapes over another ground: the light and dark theme.
        return "variant"
    if recoloured(ev):
        # The whole picture in other colours at the same lightness.
        return "variant"
    if not ev.colour_agree and not (ev.grey_a or ev.grey_b):
        # Same shapes and light, other colours: a recolour (a grey copy has
        # lost its colours, which is an edit).
        return "variant"
    if ev.perspective >= RECAPTURE_PERSPECTIVE:
        return "recapture"
    if ev.contained < CONTAINED_FRAME:
        # Neither lies inside the other: two windows onto one larger
        # picture (a pan across it), not a copy of either.
        return "same-scene"
    whole = min(ev.coverage_a, ev.coverage_b) >= WHOLE_COVERAGE
    # Padding frames the whole picture; one that shows only part of the other
    # is a crop, whatever its flat borders (a portrait slice of a wallpaper).
    if (ev.grey_a != ev.grey_b or ev.reoriented or (ev.padded and whole)
            or (ev.agreement is not None and ev.agreement < UNCHANGED_AGREEMENT)):
        return "edited"
    if not whole:
        return "crop"
    return "resized"


def redrawn_icons(size_a: tuple[int, int], format_a: str | None, size_b: tuple[int, int],
                  format_b: str | None) -> bool:
    """Whether two images (not the same pixels) are one icon drawn twice: both
    lossless, icon-sized and of one size (see ``ICON_SIDE``)."""
    return (size_a == size_b and max(size_a) <= ICON_SIDE
            and (format_a or "").upper() in LOSSLESS_FORMATS
            and (format_b or "").upper() in LOSSLESS_FORMATS)


def light_dark(ev: RelationEvidence) -> bool:
    """Whether a pair is a light and a dark version of one artwork: lightness
    moved far and the colours changed with it. Not for a grey copy (an edit),
    nor for a turned one: a rotation's canvas (black corners) moves the
    whole-frame measures, and the hard set's colour-jittered copies are turned."""
    return (ev.lightness_shift >= LIGHT_DARK_SHIFT and ev.colour_similarity < LIGHT_DARK_COLOUR
            and not (ev.grey_a or ev.grey_b or ev.reoriented))


def recoloured(ev: RelationEvidence) -> bool:
    """Whether two whole pictures are one layout in other colours: their
    colour histograms barely overlap (``RECOLOUR_COLOUR``). Not for a grey
    copy (an edit), a turned one (a rotation's canvas and the hard set's
    colour-jittered copies), nor a crop (a part has other colours than the
    whole)."""
    return (ev.colour_similarity < RECOLOUR_COLOUR
            and min(ev.coverage_a, ev.coverage_b) >= WHOLE_COVERAGE
            and not (ev.grey_a or ev.grey_b or ev.reoriented))


#: Hue histogram bins, and the chroma (0-255 RGB spread) below which a colour
#: cell counts as grey and has no hue.
HUE_BINS = 12
MIN_CHROMA = 40.0
#: Share of an image's pixels that must have a hue for its colours to be
#: compared (greyish pictures carry no colour evidence).
MIN_COLOURFUL = 0.1
#: Least hue-histogram intersection of two copies. Colour jitter, JPEG and a
#: different white balance keep most hues; a recolour moves them all. On the
#: recapture calib set screen photos of a picture reach 0.24-0.42 against it
#: (a colour cast), the recolours of tests/test_relation.py 0.0; 0.5 turned
#: recaptures into variants.
MIN_HUE_SIMILARITY = 0.15


#: The calibration feature ``hue_similarity`` (``pairfeatures``) looks at paler colours too
#: (a colour cell one histogram step from grey), so that photos with little
#: saturated colour still say whether their hues moved: with the thresholds
#: above, 61% of the recoloured calib-half photos had no hue to compare.
FEATURE_MIN_CHROMA = 20.0
FEATURE_MIN_COLOURFUL = 0.03


@functools.lru_cache(maxsize=4)
def _hue_table(min_chroma: float) -> tuple[np.ndarray, np.ndarray]:
    from matchkit.signals.colour import LEVELS as CL

    centres = (np.arange(CL) + 0.5) * (256 / CL)
    r, g, b = np.meshgrid(centres, centres, centres, indexing="ij")
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = mx - mn
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.where(mx == r, ((g - b) / safe) % 6,
                   np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    bins = np.minimum((hue * HUE_BINS).astype(int), HUE_BINS - 1).ravel()
    return bins, (chroma >= min_chroma).ravel()


def hue_histogram(colour_histogram: np.ndarray, min_chroma: float = MIN_CHROMA,
                  min_colourful: float = MIN_COLOURFUL) -> np.ndarray | None:
    """Normalised hue histogram of a ``colour.colour_histogram`` (its colourful
    cells only); None when too few pixels have a hue to compare."""
    bins, colourful = _hue_table(min_chroma)
    h = np.asarray(colour_histogram, np.float64).ravel()
    total = h.sum()
    if total == 0 or h[colourful].sum() < min_colourful * total:
        return None
    out = np.bincount(bins[colourful], weights=h[colourful], minlength=HUE_BINS)
    return out / out.sum()


def hue_overlap(ha: np.ndarray | None, hb: np.ndarray | None) -> float | None:
    """Intersection (0-1) of two images' hue distributions (``hue_histogram``
    results); None when either has too little colour to say. Neighbouring hue
    bins count half: a slight white-balance shift is no recolour."""
    if ha is None or hb is None:
        return None
    return soft_overlap(soften_hues(ha), soften_hues(hb))


#: Each hue bin's neighbours on the hue circle (what ``np.roll`` by 1 and -1 gives).
_PREV = np.roll(np.arange(HUE_BINS), 1)
_NEXT = np.roll(np.arange(HUE_BINS), -1)


def soften_hues(h: np.ndarray | None) -> np.ndarray | None:
    """A ``hue_histogram`` with half of each bin spread to its two neighbours:
    what ``hue_overlap`` compares. Computed once per image by callers that
    compare one image with many (``evidence.colour_facts``)."""
    return None if h is None else 0.5 * h + 0.25 * (h[_PREV] + h[_NEXT])


def soft_overlap(sa: np.ndarray | None, sb: np.ndarray | None) -> float | None:
    """``hue_overlap`` of two ``soften_hues`` results."""
    if sa is None or sb is None:
        return None
    return float(np.minimum(sa, sb).sum())


def hues_agree(ha: np.ndarray | None, hb: np.ndarray | None) -> bool:
    """Whether two images' colours are those of one picture: their hue
    distributions (``hue_histogram``) overlap (True when either has too
    little colour to say)."""
    sim = hue_overlap(ha, hb)
    return sim is None or sim >= MIN_HUE_SIMILARITY


def soft_hues_agree(sa: np.ndarray | None, sb: np.ndarray | None) -> bool:
    """``hues_agree`` of two ``soften_hues`` results."""
    sim = soft_overlap(sa, sb)
    return sim is None or sim >= MIN_HUE_SIMILARITY
