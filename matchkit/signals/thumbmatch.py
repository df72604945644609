"""Icons drawn at several sizes: compare aligned thumbnails, not keypoints.

An icon theme ships one drawing at 256 and 48 px (or 128 and 64 px). ORB
cannot verify such a pair: a 48 px picture upscaled to the working side has
few keypoints (147 of the real dev set's 209 rejected icon pairs had zero
inliers), and the small file is often hand-hinted, so its pHash lies 60-112
bits from the large one's. Icon look-alikes (folder colours where only a
corner ribbon differs, trash empty/full, volume levels) on the other hand
share the silhouette and most pixels. So for *icon-like* images (both sides
at most ``ICON_SIDE`` and drawn on transparency) this module:

- views each image as a viewer sees it: composited over the same mid-grey as
  ``load.TRANSPARENT_BACKGROUND``, cropped to the bounding box of its opaque
  part (themes pad small sizes differently), resampled to the smaller
  image's size (at most ``GRID`` pixels), in Lab, with its alpha;
- compares two views on what survives a redraw at another size: the
  silhouette (alpha IoU), the luminance layout (correlation on a coarse
  grid) and, pixel by pixel with a one-pixel tolerance for hinting, colour
  and lightness; a region that changed (a full trash can, a badge) or was
  recoloured to another hue (a folder's ribbon) is measured as its share of
  the icon;
- ``IconDecider`` keeps a pair of two sizes only when it passes these
  absolute tests *and* each image is the other's closest view among the
  candidates of the other's size: a theme draws each picture once per size,
  so a 128 px folder's own 64 px rendering is nearer to it than the 64 px
  folder of another colour or state, whose ribbon or badge differs on top of
  the same redraw noise. "Closest" is measured mostly on the coarse layout
  (``COARSE`` cells, one-cell tolerance, ``IconComparison.rank``), where
  the redraw itself (a darker outline, an emblem drawn as lines, text drawn
  as bars) averages out: pixel by pixel, a GNOME folder's 256 px drawing is
  nearer the plain 48 px folder than its own 48 px file with the same
  emblem. Identical copies (a theme's colour shipped twice) tie and are all
  kept. Two icons of one size with a drawn difference are
  not copies (there is no redraw to excuse it).

Candidates for such images come from a small cosine index over a coarse
view of each icon (16x16 luminance layout plus 8x8 colour, ``_code``): k
nearest neighbours of other sizes per icon (``icon_candidates``), so the
cost per image is bounded, unlike an all-pairs scan.

The views themselves (``IconView``, ``icon_view``, ``icon_blob``...) are
made in ``thumbmatch_views``; their names are imported back here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from matchkit.signals import Signal
from matchkit.signals.thumbmatch_views import COARSE, IconView, _resample
from matchkit.signals.thumbmatch_views import (  # noqa: F401  (re-exported)
    CODE_CELLS, CODE_COLOUR, ICON_SIDE, MIN_SIDE, OPAQUE, _code, _icon_rgba, icon_blob, icon_like,
    icon_view, icon_views)

#: Longest side of the aligned views: the size of a typical small icon
#: rendering (48 px); larger pairs are compared at this size.
GRID = 48
#: Where either image is at least this opaque counts as the icon's area.
AREA_ALPHA = 0.3
#: Per-pixel changes, after the one-pixel tolerance, that count as a changed
#: pixel: a colour (a, b) distance, a lightness step and an alpha step (in
#: percent), each well above what resampling leaves on a flat region.
CHANGE_AB = 15.0
CHANGE_L = 20.0
CHANGE_ALPHA = 40.0

# Absolute tests. They only bound how far a redraw at another size may go;
# telling one drawing from its look-alikes (another state, colour or family
# member of the same silhouette) is the closest-view rule's job
# (``IconDecider``). Chosen on the real dev set's icon pairs at two sizes
# (benchmarks/REALDEV.md): GNOME's hand-hinted 48 px icons (dark outlines, a
# simplified glyph, a thinner body) failed the first, tighter values (0.2,
# 0.7, 0.6, 0.15, 0.3) on 16 true pairs that are each other's closest view,
# while no look-alike that is a closest view came in with the looser ones.
# They also guard the orphans, icons whose own rendering at the other size is
# missing: with every size of every group left out in turn (450 cases), 6
# then matched another icon, with the tight and with the loose values alike
# (8 of 454 with the closest view ranked by ``IconComparison.rank``, which
# finds 16 more true pairs with every size present: a sibling of one family,
# e.g. another volume level or folder emblem, pairs with the orphan).
#: The opaque parts' bounding boxes have about one shape: hinting moves an
#: edge by a pixel or two (a few percent at 48 px, more on a flat device
#: drawn a pixel taller); another member of an icon family often has another
#: silhouette.
MAX_ASPECT_LOG = 0.3
#: Soft IoU of the aligned alpha masks: the same drawing covers about the
#: same area (a hinted outline or a thinner body costs some).
MIN_ALPHA_IOU = 0.6
#: Correlation of the coarse luminance layouts: one drawing has its light and
#: dark parts in about the same places at every size; another glyph on the
#: same page or device moves them.
MIN_CORRELATION = 0.5
#: Largest connected changed region, as a share of the icon area: another
#: drawing forms a big block; hinting noise is thin, a redrawn glyph or a
#: darker outline round a small emblem a modest one.
MAX_CHANGED_BLOB = 0.25
#: All changed pixels, as a share of the icon area.
MAX_CHANGED = 0.45
#: A region recoloured to another hue: an (a, b) distance above this (blue
#: to red, gold to silver; a redraw at another size keeps the hue of a solid
#: region and changes it only along thin edges) ...
RECOLOUR_AB = 50.0
#: ... over more than this share of the icon in one piece: a folder's colour
#: ribbon (Mint-Y: about 3% of the icon), a coloured badge. On the dev set 95%
#: of the true pairs stay under 1.7% and all but one under 2.5%; two thirds
#: of the folder-colour look-alikes exceed it (the rest differ in colours
#: closer than that, and only ``IconDecider``'s closest-view rule parts them).
MAX_RECOLOURED = 0.025
#: Views this close to the closest one tie with it: identical copies (a
#: theme's colour shipped twice) give the same distance, not a similar one.
TIE_SLACK = 1e-3
#: Weight of the full-grid ``distance`` in the closest-view rank, added to
#: the coarse ``closeness``: the coarse layout alone loses siblings that a
#: plain resize keeps apart pixel by pixel (renderings at 24 px of the dev
#: set's GNOME 256 px and Mint-Y 128 px icons: 199 own renderings accepted
#: with ``distance``, 183 with ``closeness``, 198 with this sum; 0 others
#: with each), while on the real 48 px redraws it ranks like ``closeness``
#: (276 true pairs with ``closeness``, 278 with this sum, 262 with ``distance``).
RANK_DISTANCE = 0.25
#: Nearest neighbours asked of the candidate index per icon.
NEIGHBOURS = 16


@dataclass
class IconComparison:
    """What ``compare`` measured about two icon views."""

    aspect: float
    alpha_iou: float
    correlation: float
    changed: float
    changed_blob: float
    #: Largest region recoloured to another hue (``RECOLOUR_AB``), share of the icon.
    recoloured: float
    #: Mean tolerant Lab+alpha difference over the icon area: how close.
    distance: float
    #: The same difference on the coarse layout (``COARSE`` cells on the
    #: longer side, one-cell tolerance): how close for the closest-view rule
    #: (``IconDecider``, with ``rank``). -1: not measured (evidence stored
    #: before it was).
    closeness: float = -1.0

    def rank(self) -> float:
        """What ``IconDecider`` ranks views by: ``closeness`` plus a little of
        the full-grid ``distance`` (``RANK_DISTANCE``); ``distance`` alone
        when ``closeness`` was not measured."""
        if self.closeness < 0:
            return self.distance
        return self.closeness + RANK_DISTANCE * self.distance

    def to_evidence(self) -> dict:
        """The measures, rounded, for the JSON report."""
        return {k: round(float(getattr(self, k)), 3) for k in (
            "alpha_iou", "correlation", "changed", "changed_blob", "recoloured", "distance",
            "closeness")}

    def passes(self) -> bool:
        """The absolute tests: one silhouette, one layout, no changed part."""
        return not self.failures()

    def failures(self) -> list[str]:
        """The absolute tests this pair fails, as "measure value limit"
        (for diagnostics: ``benchmarks/bench_real.py --misses``)."""
        tests = (("aspect", self.aspect, "<=", MAX_ASPECT_LOG),
                 ("alpha_iou", self.alpha_iou, ">=", MIN_ALPHA_IOU),
                 ("correlation", self.correlation, ">=", MIN_CORRELATION),
                 ("changed_blob", self.changed_blob, "<=", MAX_CHANGED_BLOB),
                 ("changed", self.changed, "<=", MAX_CHANGED),
                 ("recoloured", self.recoloured, "<=", MAX_RECOLOURED))
        return [f"{name} {value:.3f} (limit {op} {limit})" for name, value, op, limit in tests
                if not (value <= limit if op == "<=" else value >= limit)]


_TOLERANCE = np.ones((3, 3), np.uint8)


def _tolerant_difference(x: np.ndarray, y: np.ndarray,
                          y_range: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per pixel and channel, how far x lies outside the range y takes in the
    pixel's 3x3 neighbourhood: a one-pixel shift of an edge (hinting, another
    rounding of the outline) costs nothing, a recoloured region does.
    ``y_range``: ``_neighbourhood_range(y)``, if already known."""
    lo, hi = _neighbourhood_range(y) if y_range is None else y_range
    d = lo - x
    np.maximum(d, x - hi, out=d)
    return np.maximum(d, 0.0, out=d)


def _neighbourhood_range(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of each channel in each pixel's 3x3 neighbourhood."""
    y = np.ascontiguousarray(y)  # (OpenCV takes up to 4 channels at once)
    return (cv2.erode(y, _TOLERANCE).reshape(y.shape),
            cv2.dilate(y, _TOLERANCE).reshape(y.shape))


class ViewCache:
    """Resampled views of icons, kept for a run's comparisons (bounded).

    A run compares each icon with many others, nearly always at a handful of
    grid sizes (the real dev set: 17,908 comparisons needed 3,489 distinct
    (icon, grid) views of the 35,816 made), and making a view (resampling,
    Lab conversion) was about half of a comparison. Entries hold their view,
    so the ``id`` in a key can name no other icon while its entry lives;
    the least recently used go first past ``max_bytes``."""

    def __init__(self, max_bytes: int = 128 << 20):
        self.max_bytes, self.bytes = max_bytes, 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, view: IconView, kind: str, h: int, w: int, make: Callable[[], tuple]):
        key = (id(view), kind, h, w)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[1]
        value = make()
        for a in value:  # (shared by later comparisons: never to be written)
            a.setflags(write=False)
        size = sum(a.nbytes for a in value)
        self._entries[key] = (view, value, size)
        self.bytes += size
        self._evict(keep=1)
        return value

    def trim(self, max_bytes: int) -> None:
        """Lower the bound to ``max_bytes``, dropping the least recently used."""
        self.max_bytes = max_bytes
        self._evict(keep=0)

    def _evict(self, keep: int) -> None:
        """Drop the least recently used entries past ``max_bytes`` (but the last ``keep``)."""
        while self.bytes > self.max_bytes and len(self._entries) > keep:
            self.bytes -= self._entries.popitem(last=False)[1][2]


#: What ``IconDecider`` keeps of its views once its pairs are compared.
LATER_VIEWS_BYTES = 8 << 20


def _lab_alpha(v: IconView, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A view at ``h`` x ``w``: Lab + alpha (x100) channels, and the alpha."""
    alpha = _resample(v.alpha, h, w)
    lab = cv2.cvtColor(_resample(v.rgb, h, w), cv2.COLOR_RGB2Lab)
    return np.concatenate([lab, alpha[..., None] * 100.0], -1), alpha


def _grid_view(v: IconView, h: int, w: int) -> tuple[np.ndarray, ...]:
    """One side of ``compare``: Lab + alpha (x100) at ``h`` x ``w``, the
    alpha, the coarse luminance layout and the 3x3 range of the first."""
    x, alpha = _lab_alpha(v, h, w)
    return (x, alpha, _resample(x[..., 0], COARSE, COARSE).ravel(), *_neighbourhood_range(x))


def _cells(v: IconView, ch: int, cw: int) -> tuple[np.ndarray, ...]:
    """One side of ``_coarse_distance``: Lab + alpha (x100) on its coarse
    grid, and its 3x3 range."""
    x, _ = _lab_alpha(v, ch, cw)
    return (x, *_neighbourhood_range(x))


def _made(cache: ViewCache | None, v: IconView, kind: str, h: int, w: int, make) -> tuple:
    return make(v, h, w) if cache is None else cache.get(v, kind, h, w, lambda: make(v, h, w))


def _grid(va: IconView, vb: IconView) -> tuple[int, int]:
    """Height and width at which ``compare`` aligns two views: the smaller
    one's, at most ``GRID`` on the longer side."""
    small = va if va.alpha.size <= vb.alpha.size else vb
    h, w = small.alpha.shape
    s = min(1.0, GRID / max(h, w))
    return max(8, round(h * s)), max(8, round(w * s))


def compare(va: IconView, vb: IconView, cache: ViewCache | None = None) -> IconComparison:
    """Align two icon views (bounding box to bounding box, at the smaller
    one's size) and measure silhouette, layout and changed regions.
    ``cache`` keeps each side's resampled view for the next comparison."""
    h, w = _grid(va, vb)
    xa, aa, la, *range_a = _made(cache, va, "grid", h, w, _grid_view)
    xb, ab, lb, *range_b = _made(cache, vb, "grid", h, w, _grid_view)
    aspect = abs(float(np.log((va.alpha.shape[1] / va.alpha.shape[0])
                              / (vb.alpha.shape[1] / vb.alpha.shape[0]))))
    iou = float(np.minimum(aa, ab).sum() / max(1e-6, float(np.maximum(aa, ab).sum())))
    corr = (float(np.corrcoef(la, lb)[0, 1]) if la.std() > 1e-3 and lb.std() > 1e-3
            else float(np.abs(la - lb).max() < 1.0))
    d = np.maximum(_tolerant_difference(xa, xb, range_b), _tolerant_difference(xb, xa, range_a))
    area = np.maximum(aa, ab) > AREA_ALPHA
    n = max(1, int(area.sum()))
    d_ab = np.hypot(d[..., 1], d[..., 2])
    changed = (d_ab > CHANGE_AB) | (d[..., 0] > CHANGE_L) | (d[..., 3] > CHANGE_ALPHA)
    changed &= area
    distance = float((d_ab + d[..., 0] + d[..., 3])[area].mean()) if area.any() else 0.0
    return IconComparison(aspect, iou, corr, float(changed.sum()) / n, _largest(changed) / n,
                          _largest((d_ab > RECOLOUR_AB) & area) / n, distance,
                          _coarse_distance(va, vb, h, w, cache))


def _coarse_distance(va: IconView, vb: IconView, h: int, w: int,
                     cache: ViewCache | None = None) -> float:
    """Mean tolerant Lab+alpha difference of two views on a grid of
    ``COARSE`` cells on the longer side (the aspect of ``compare``'s ``h`` x
    ``w`` grid), with a one-cell tolerance. What a redraw at another size
    changes (a darker outline, hinted edges, fine text drawn as bars)
    averages out in a cell; another glyph, badge or picture on the same page
    or folder fills cells and does not. The full-grid ``distance`` is
    dominated by the redraw: a GNOME folder's 256 px drawing is nearer the
    plain 48 px folder than its own 48 px file with the same emblem."""
    s = COARSE / max(h, w)
    ch, cw = max(4, round(h * s)), max(4, round(w * s))
    (xa, *range_a), (xb, *range_b) = (_made(cache, v, "cells", ch, cw, _cells) for v in (va, vb))
    d = np.maximum(_tolerant_difference(xa, xb, range_b), _tolerant_difference(xb, xa, range_a))
    area = np.maximum(xa[..., 3], xb[..., 3]) > AREA_ALPHA * 100.0
    total = np.hypot(d[..., 1], d[..., 2]) + d[..., 0] + d[..., 3]
    return float(total[area].mean()) if area.any() else 0.0


def _largest(mask: np.ndarray) -> float:
    """Pixel count of the largest 8-connected region of ``mask``."""
    if not mask.any():
        return 0.0
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0.0


def icon_candidates(views: dict[int, IconView], neighbours: int = NEIGHBOURS
                    ) -> set[tuple[int, int]]:
    """Pairs (a < b) of icons of different sizes that are among each other's
    ``neighbours`` nearest by their coarse luminance view: one kNN query per
    icon in a cosine index, restricted to icons of other sizes (a theme's
    colour and state variants of one size would otherwise fill the
    neighbour list). Flat icons, with no layout to compare, are left out."""
    from matchkit.index.vectors import VectorIndex

    ids = [i for i, v in views.items() if float(np.abs(v.code).sum()) > 0]
    if len(ids) < 2:
        return set()
    index = VectorIndex("icon-view", len(views[ids[0]].code), dtype="f32", threads=1)
    index.add(np.array(ids, np.int64), np.stack([views[i].code for i in ids]))
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in ids:
        by_size.setdefault(views[i].size, []).append(i)
    out = set()
    for size, group in by_size.items():
        others = np.array(sorted(i for i in ids if views[i].size != size), np.int64)
        if not len(others):
            continue
        keys, _ = index.search(np.stack([views[i].code for i in group]),
                               min(neighbours, len(others)), allowed=others)
        for i, row in zip(group, keys.tolist()):
            out.update((i, j) if i < j else (j, i) for j in row if j >= 0)
    return out


#: At one size there is no redraw to excuse a difference: two icons of one
#: size whose changed pixels (after the one-pixel tolerance) exceed this share
#: of the icon were drawn apart (a state, a colour, a grey "disabled" look),
#: whatever their hashes say. Re-encodings of one file change no pixel that much.
MAX_CHANGED_SAME_SIZE = 0.01


class IconDecider:
    """Match / no match for pairs of icons (see the module docstring).

    Built once per run from the candidate pairs, so that it knows each
    icon's closest view at every other size; pairs met later (a second hop
    while clustering) are judged against the same closest views."""

    def __init__(self, views: dict[int, IconView], pairs: list[tuple[int, int]]):
        self.views = views
        todo = sorted({(min(a, b), max(a, b)) for a, b in pairs
                       if a in views and b in views and a != b})
        #: Resampled views, shared by this decider's comparisons; pairs
        #: compared at one grid size come together, so each view is made
        #: about once per size it is compared at.
        self._cache = ViewCache()
        todo.sort(key=lambda ab: (_grid(views[ab[0]], views[ab[1]]), ab))
        # One thread: a comparison is many small NumPy and OpenCV calls that
        # each take the GIL back, so two threads mostly wait for each other
        # (real dev set, 17,908 comparisons: 10.8 s of candidate search on
        # two threads, 5.7 s on one).
        self.compared: dict[tuple[int, int], IconComparison] = {
            ab: compare(views[ab[0]], views[ab[1]], self._cache) for ab in todo}
        # Later pairs (second hops) are few: keep a little of the cache for them.
        self._cache.trim(LATER_VIEWS_BYTES)
        #: Closest view per (image, size of the other image), passing or not
        #: (``IconComparison.rank``).
        self.best: dict[tuple[int, tuple[int, int]], float] = {}
        for (a, b), c in self.compared.items():
            if self.views[a].size != self.views[b].size:
                for x, y in ((a, b), (b, a)):
                    key = (x, views[y].size)
                    self.best[key] = min(self.best.get(key, c.rank()), c.rank())

    def _compare(self, a: int, b: int) -> IconComparison | None:
        a, b = min(a, b), max(a, b)
        if (a, b) not in self.compared:
            va, vb = self.views.get(a), self.views.get(b)
            if va is None or vb is None:
                return None
            self.compared[(a, b)] = compare(va, vb, self._cache)
        return self.compared[(a, b)]

    def decide(self, a: int, b: int) -> tuple[bool | None, IconComparison | None]:
        """(True: a copy at another size; False: not a copy; None: not a pair
        of icons, left to the other rules, or a same-size pair without a drawn
        difference) and the comparison."""
        c = self._compare(a, b)
        if c is None:
            return None, None
        if self.views[a].size == self.views[b].size:
            return (False if c.changed > MAX_CHANGED_SAME_SIZE else None), c
        return c.passes() and self._closest(a, b, c) and self._closest(b, a, c), c

    def _closest(self, x: int, y: int, c: IconComparison) -> bool:
        best = self.best.get((x, self.views[y].size), c.rank())
        return c.rank() <= best + TIE_SLACK


# -- the icon signal -----------------------------------------------------------

@dataclass(frozen=True)
class IconSignal(Signal):
    """Icons drawn on transparency, compared on aligned thumbnails (above)."""

    name: str = "icon"
    record_fields: tuple[str, ...] = ("icon",)
    stores: tuple[str, ...] = ("images.icon",)
    candidates: str | None = "icons with a close coarse layout (icon_candidates)"

    def extract_fields(self, views, settings) -> dict:
        loaded = views.loaded
        return {"icon": icon_blob(views.path) if icon_like((loaded.width, loaded.height))
                else None}

    def to_columns(self, record) -> dict:
        return {"icon": record.icon}  # PNG of the icon view, or NULL

    def evidence(self, pair) -> dict:
        return {"icon": pair.extra["icon"].to_evidence()} if "icon" in pair.extra else {}
