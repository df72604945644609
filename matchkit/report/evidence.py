"""Side-by-side pictures of the keypoints that made two images a local-feature match.

A reviewer trusts "same picture" much faster when the matched points are
drawn: lines between the two images that all agree on one crop, rotation or
overlay. The report JSON carries only counts (inliers, transform), so the
points are found again with the same functions the pipeline uses
(:func:`matchkit.signals.local.extract_local` and :func:`matchkit.signals.local.verify`,
mirrored when the copy is a mirror image). When the pair's evidence already
lists inlier ``points`` they are used as they are.

This costs two decodes and two ORB extractions per pair (tens of
milliseconds), so callers draw only pairs matched by local features and cap
how many (see :func:`draw_pairs`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import cv2
import numpy as np

from matchkit.util.fs import atomic_write_bytes
from matchkit.config import Settings
from matchkit.io.load import ImageLoadError, load_image
from matchkit.signals.local import LocalFeatures, extract_local, verify, working_grey

#: Most lines drawn per picture (evenly chosen among the inliers): more only clutters.
MAX_LINES = 60


@dataclass
class PairPicture:
    """Outcome of drawing one pair."""

    a: str
    b: str
    name: str | None = None   # picture file name inside the output folder
    inliers: int = 0
    matches: int = 0
    mirrored: bool = False
    error: str | None = None  # why there is no picture


@dataclass
class _Working:
    rgb: np.ndarray          # colour image at working size (BGR for OpenCV)
    feats: LocalFeatures     # ORB features on the working grey image
    mirrored: LocalFeatures | None = None


class _FeatureCache:
    """Working images and features per path; a keeper is shared by many pairs."""

    def __init__(self, settings: Settings, size: int = 64):
        self.settings, self.size = settings, size
        self.data: OrderedDict[str, _Working] = OrderedDict()
        self.lock = Lock()

    def get(self, path: str) -> _Working:
        with self.lock:
            if path in self.data:
                self.data.move_to_end(path)
                return self.data[path]
        s = self.settings
        img = load_image(path, max_side=s.work_side, max_pixels=s.max_pixels).image
        grey = working_grey(img, s.work_side)
        rgb = cv2.resize(np.asarray(img)[:, :, ::-1], (grey.shape[1], grey.shape[0]),
                         interpolation=cv2.INTER_AREA)
        w = _Working(np.ascontiguousarray(rgb), extract_local(grey, s.n_features))
        with self.lock:
            self.data[path] = w
            if len(self.data) > self.size:
                self.data.popitem(last=False)
        return w

    def mirrored(self, path: str) -> LocalFeatures:
        w = self.get(path)
        if w.mirrored is None:
            grey = cv2.cvtColor(np.ascontiguousarray(w.rgb[:, ::-1]), cv2.COLOR_BGR2GRAY)
            w.mirrored = extract_local(grey, self.settings.n_features)
        return w.mirrored


def match_points(a: str, b: str, cache: _FeatureCache) -> tuple[np.ndarray, int, bool]:
    """Inlier point pairs ``(n, 4)`` as (xa, ya, xb, yb) in working pixels of
    each image, the ratio-test match count and whether b matched mirrored."""
    wa, wb = cache.get(a), cache.get(b)
    v = verify(wa.feats, wb.feats)
    pts, matches, mirrored = np.asarray(v.points, np.float32).reshape(-1, 4), v.matches, False
    if v.inliers < cache.settings.min_inliers:
        vm = verify(wa.feats, cache.mirrored(b))
        if vm.inliers > v.inliers:
            pts = np.asarray(vm.points, np.float32).reshape(-1, 4)
            pts[:, 2] = wb.rgb.shape[1] - 1 - pts[:, 2]  # back to b's own frame
            matches, mirrored = vm.matches, True
    return pts, matches, mirrored


def render(rgb_a: np.ndarray, rgb_b: np.ndarray, points: np.ndarray, *,
           height: int = 260, gap: int = 8, max_lines: int = MAX_LINES) -> np.ndarray:
    """Both images at one height, side by side, with lines between matched points.

    ``points`` are (xa, ya, xb, yb) in the pixels of ``rgb_a`` / ``rgb_b``.
    """
    sa = height / rgb_a.shape[0]
    sb = height / rgb_b.shape[0]
    wa = max(1, round(rgb_a.shape[1] * sa))
    wb = max(1, round(rgb_b.shape[1] * sb))
    canvas = np.full((height, wa + gap + wb, 3), 255, np.uint8)
    canvas[:, :wa] = cv2.resize(rgb_a, (wa, height), interpolation=cv2.INTER_AREA)
    canvas[:, wa + gap:] = cv2.resize(rgb_b, (wb, height), interpolation=cv2.INTER_AREA)
    if len(points) > max_lines:
        points = points[np.linspace(0, len(points) - 1, max_lines).round().astype(int)]
    for i, (xa, ya, xb, yb) in enumerate(points):
        hue = int(180 * i / max(1, len(points)))
        colour = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        pa = (int(round(xa * sa)), int(round(ya * sa)))
        pb = (int(round(xb * sb)) + wa + gap, int(round(yb * sb)))
        cv2.line(canvas, pa, pb, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, pa, 3, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, pb, 3, colour, 1, cv2.LINE_AA)
    return canvas


def draw_pair(a: str, b: str, folder: str | os.PathLike, *, settings: Settings = Settings(),
              cache: _FeatureCache | None = None, points: list | None = None,
              height: int = 260, quality: int = 80) -> PairPicture:
    """Draw the matched keypoints of ``a`` and ``b`` into ``folder``.

    ``points`` (optional) are known inliers (xa, ya, xb, yb) in working pixels;
    otherwise they are found again. Never raises for unreadable files.
    """
    cache = cache or _FeatureCache(settings)
    out = PairPicture(a, b)
    try:
        wa, wb = cache.get(a), cache.get(b)
        if points is not None:
            pts = np.asarray(points, np.float32).reshape(-1, 4)
            out.matches = len(pts)
        else:
            pts, out.matches, out.mirrored = match_points(a, b, cache)
    except ImageLoadError as e:
        out.error = e.reason
        return out
    out.inliers = len(pts)
    if not len(pts):
        out.error = "keypoints could not be matched again (the pair matched on stored features)"
    picture = render(wa.rgb, wb.rgb, pts, height=height)
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                              cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        out.error = "cannot encode picture"
        return out
    key = hashlib.blake2b(f"{a}\0{b}\0{height}".encode("utf-8", "surrogateescape"),
                          digest_size=12).hexdigest()
    name = f"pair-{key}.jpg"
    try:
        atomic_write_bytes(Path(folder) / name, data.tobytes(), durable=False)
    except OSError as e:
        out.error = f"cannot write picture: {e.strerror or e}"
        return out
    out.name = name
    return out


def draw_pairs(pairs: Iterable[tuple[str, str] | tuple[str, str, list | None]],
               folder: str | os.PathLike, *, settings: Settings = Settings(),
               limit: int | None = None, workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> dict[tuple[str, str], PairPicture]:
    """Draw many pairs (threads: OpenCV works without the GIL), at most ``limit``.

    Items are ``(a, b)`` or ``(a, b, points)``; pass them most-wanted first,
    since only the first ``limit`` are drawn. Returns ``{(a, b): PairPicture}``.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    items = [tuple(p) + (None,) * (3 - len(p)) for p in pairs]
    if limit is not None:
        items = items[:max(0, limit)]
    cache = _FeatureCache(settings)
    workers = workers or min(8, os.cpu_count() or 1)

    def one(item) -> PairPicture:
        a, b, pts = item
        try:
            return draw_pair(a, b, folder, settings=settings, cache=cache, points=pts)
        except Exception as e:  # a drawing bug must not end the report
            return PairPicture(a, b, error=f"cannot draw: {type(e).__name__}: {e}")

    out: dict[tuple[str, str], PairPicture] = {}
    if workers <= 1 or len(items) < 4:
        results: Iterable[PairPicture] = map(one, items)
        for r in results:
            out[(r.a, r.b)] = r
            if progress:
                progress(1)
        return out
    with ThreadPoolExecutor(workers) as pool:
        for r in pool.map(one, items, chunksize=1):
            out[(r.a, r.b)] = r
            if progress:
                progress(1)
    return out
