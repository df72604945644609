"""Do two stored grey thumbnails show one picture, laid frame to frame?

A pHash match is a claim about the lowest frequencies of two pictures. On a
picture with little structure (a blank label sheet, a page with a few faint
lines, a transparent grid over grey) those frequencies are set by a frame
line or a faint pattern, so two different near-blank pictures, or a blank
page and a grid, hash alike although nobody would call them one picture.
A match decided on global signals alone (no local verification) is therefore
accepted only if the thumbnails that matchkit stores anyway agree as well:

- where either picture is *near-blank* (few pixels stand out from its
  background), its pHash carries no evidence: its few marks must lie where
  the other picture's marks lie and the other's where its own lie
  (``structure_agreement``): a blank page and its thumbnail keep their frame
  line in place; a blank sheet and a label sheet, or two sheets with
  different faint lines, do not;
- otherwise the thumbnails must not clearly disagree (``frame_disagrees``):
  a whole-frame correlation and a share of agreeing cells both far below
  what any resize, re-encode, blur or overlay leaves.

Turned or mirrored matches (a dihedral pHash variant) are compared in every
orientation, the best one counting.

The same thumbnails also *prove* a copy that the pHash misses
(``frames_prove_copy``): on a smooth picture (a wallpaper of soft gradients)
the lowest frequencies carry little energy, so a logo laid over it moves the
pHash far (100 of 256 bits on the real dev set's LXQt waves with and without
their logo) while frame to frame nearly every cell of the two pictures still
agrees.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchkit.signals.local import Overlap, compare_overlap

#: A pixel is a mark when it is this many grey levels (0-255) away from the
#: picture's background (its median grey level).
MARK_LEVEL = 8.0
#: A picture is near-blank when fewer than this share of its thumbnail
#: pixels are marks. Real dev set (benchmarks/REALDEV.md): blank label sheets
#: and their thumbnails 0.04-0.06, paper textures 0-0.04, label and ruler
#: pages 0.09-0.18; the sparsest photos of the calib halves (a beetle and a
#: spoonbill on white) 0.09-0.10, most photos 0.5 and more.
NEAR_BLANK = 0.07
#: Marks are compared on a coarse grid of GRID x GRID cells (both frames
#: stretched onto it), each mark cell counting as placed when the other
#: picture has a mark cell within one cell of it.
GRID = 32
#: Least share of either picture's mark cells placed on the other's. Real
#: dev set: a blank page and its thumbnail 1.0; a blank sheet against label
#: sheets 0.36-0.61, against a grid 0.23-0.24; a framed page with one more
#: faint line than another (tests/test_thumbcheck.py) 0.82-0.84, the frame
#: being most of both pictures' marks.
MIN_STRUCTURE_AGREEMENT = 0.9
#: Frame to frame, a pair clearly disagrees below both: whole-overlap
#: correlation ... (real dev set: two different grids 0.42; true pHash pairs
#: 0.63 and more, when measured)
DISAGREE_CORRELATION = 0.5
#: ... and share of agreeing cells (two different grids 0.06; true pHash
#: pairs 0.86 and more).
DISAGREE_AGREEMENT = 0.2


def marks(thumb: np.ndarray) -> tuple[float, np.ndarray]:
    """Share of the thumbnail's pixels that stand out from its background,
    and where they are on the coarse ``GRID`` (boolean GRID x GRID)."""
    t = np.asarray(thumb, np.float32)
    if t.size == 0:
        return 0.0, np.zeros((GRID, GRID), bool)
    m = (np.abs(t - float(np.median(t))) > MARK_LEVEL).astype(np.float32)
    return float(m.mean()), cv2.resize(m, (GRID, GRID), interpolation=cv2.INTER_AREA) > 0


def _orientations(x: np.ndarray, turned: bool) -> list[np.ndarray]:
    """``x`` itself, or all 8 of its rotations and mirrors when ``turned``."""
    if not turned:
        return [x]
    out = []
    for k in range(4):
        r = np.rot90(x, k)
        out += [r, r[:, ::-1]]
    return [np.ascontiguousarray(r) for r in out]


def _placed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of ``a``'s mark cells with a mark cell of ``b`` within one cell
    (1.0 when ``a`` has none)."""
    n = int(a.sum())
    if n == 0:
        return 1.0
    near = cv2.dilate(b.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return float((a & near).sum()) / n


def structure_agreement(thumb_a: np.ndarray, thumb_b: np.ndarray, turned: bool = False) -> float:
    """How well the two pictures' marks lie on each other, frame to frame
    (0-1: the smaller share of either's marks placed on the other's)."""
    ca = marks(thumb_a)[1]
    cb = marks(thumb_b)[1]
    return max(min(_placed(ca, o), _placed(o, ca)) for o in _orientations(cb, turned))


def frame_overlap(thumb_a: np.ndarray, thumb_b: np.ndarray) -> Overlap:
    """``local_overlap.compare_overlap`` of the two thumbnails laid frame to frame
    (b stretched onto a's frame when their aspect ratios differ)."""
    (ha, wa), (hb, wb) = thumb_a.shape[:2], thumb_b.shape[:2]
    return compare_overlap(thumb_a, thumb_b, [[wb / wa, 0, 0], [0, hb / ha, 0]], (wa, ha), (wb, hb))


def coarse(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail on the ``GRID`` x ``GRID`` grid (both frames stretched)."""
    return cv2.resize(np.asarray(thumb, np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    d = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / d if d > 0 else 0.0


def frame_disagrees(thumb_a: np.ndarray, thumb_b: np.ndarray, turned: bool = False) -> bool:
    """Whether the textured thumbnails clearly show different pictures, frame
    to frame (False when there is too little texture to tell). A coarse look
    first: most pairs agree on the ``GRID`` grid already and need no more."""
    ca = coarse(thumb_a)
    if any(_correlation(ca, b) >= DISAGREE_CORRELATION
           for b in _orientations(coarse(thumb_b), turned)):
        return False
    for b in _orientations(thumb_b, turned):
        o = frame_overlap(thumb_a, b)
        if o.correlation <= -1.0 or not (o.correlation < DISAGREE_CORRELATION
                                          and o.agreement < DISAGREE_AGREEMENT):
            return False
    return True


def thumbnails_refute(thumb_a: np.ndarray, thumb_b: np.ndarray, turned: bool = False,
                      marked: tuple[float, float] | None = None) -> bool:
    """Whether the stored thumbnails refute a match decided on global signals
    alone (see the module docstring). ``marked``: the two thumbnails' shares
    of marks (``marks``), when the caller keeps them per image."""
    share_a, share_b = marked or (marks(thumb_a)[0], marks(thumb_b)[0])
    if min(share_a, share_b) < NEAR_BLANK:
        return structure_agreement(thumb_a, thumb_b, turned) < MIN_STRUCTURE_AGREEMENT
    return frame_disagrees(thumb_a, thumb_b, turned)


#: Frame to frame, a pair of textured thumbnails of one aspect ratio is a copy
#: when the whole overlap correlates at least this much ... (real dev set: a
#: wallpaper and the same wallpaper with a logo 0.96; light/dark and
#: recoloured wallpapers reach 0.9 and more in grey too, and are left out by
#: ``PROOF_EQUAL`` and the colour rules)
PROOF_CORRELATION = 0.9
#: ... and this share of its cells agree (the logo: 4% of the cells) ...
PROOF_AGREEMENT = 0.9
#: ... and this share of the pixels are equal, within ``EQUAL_LEVEL`` grey
#: levels (after a one-pixel blur): the copy keeps the picture's pixels
#: outside the overlay. Correlation alone does not tell two different smooth
#: gradients apart (0.9 and more); they have 0.14-0.34 of equal pixels (tests/
#: test_thumbcheck.py), recoloured and light/dark wallpapers 0.27-0.42 (real
#: dev set), the waves and their logo 0.93-0.94.
PROOF_EQUAL = 0.85
EQUAL_LEVEL = 6.0


def equal_share(thumb_a: np.ndarray, thumb_b: np.ndarray) -> float:
    """Share of a's thumbnail pixels that b's, laid frame to frame, equals
    within ``EQUAL_LEVEL`` grey levels."""
    a = cv2.GaussianBlur(np.asarray(thumb_a, np.float32), (0, 0), 1.0)
    b = cv2.GaussianBlur(np.asarray(thumb_b, np.float32), (0, 0), 1.0)
    if a.shape != b.shape:
        shrink = b.shape[0] >= a.shape[0] and b.shape[1] >= a.shape[1]
        b = cv2.resize(b, (a.shape[1], a.shape[0]),
                       interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return float((np.abs(a - b) <= EQUAL_LEVEL).mean())


def frames_prove_copy(thumb_a: np.ndarray, thumb_b: np.ndarray,
                      marked: tuple[float, float] | None = None) -> bool:
    """Whether two thumbnails of one framing, laid frame to frame, show one
    picture however far their pHashes are (see the module docstring). Needs
    texture: near-blank pictures (``NEAR_BLANK``) prove nothing. A coarse
    look first: most candidate pairs fail it at once."""
    share_a, share_b = marked or (marks(thumb_a)[0], marks(thumb_b)[0])
    if min(share_a, share_b) < NEAR_BLANK:
        return False
    if _correlation(coarse(thumb_a), coarse(thumb_b)) < PROOF_CORRELATION:
        return False
    if equal_share(thumb_a, thumb_b) < PROOF_EQUAL:
        return False
    o = frame_overlap(thumb_a, thumb_b)
    return o.correlation >= PROOF_CORRELATION and o.agreement >= PROOF_AGREEMENT
