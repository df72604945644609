"""Loading what verification compares: the stored local features, and for
images that sit in a template crowd, their content masks and content-only
features.

Split from ``pairs.py`` (which imports these names back): reading stored
features and finding templates is data preparation that ``PairMatcher``,
``IncrementalMatcher`` and ``QueryMatcher`` share; the decisions are elsewhere.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from matchkit.util.checkpoint import checkpoint
from matchkit.config import Settings
from matchkit.store.gallery import Gallery
from matchkit.io.load import ImageLoadError, load_image
from matchkit.signals.local import LocalFeatures, extract_local, working_grey
from matchkit.match.template import MIN_LOOKALIKES, content_mask, keypoints_in_mask, picture_mask


class _LocalCache:
    """Small LRU over the gallery's stored local features (and one over
    thumbnails read alone, ``thumb``)."""

    def __init__(self, gallery: Gallery, size: int = 4096):
        self.gallery, self.size, self.data = gallery, size, OrderedDict()
        self.thumbs: OrderedDict = OrderedDict()

    def thumb(self, image_id: int) -> np.ndarray | None:
        """An image's grey thumbnail: from its cached features, else read
        alone (template checks look at many look-alikes' thumbnails only)."""
        if image_id in self.data:
            value = self.data[image_id]
            return None if value is None else value[1]
        if image_id in self.thumbs:
            self.thumbs.move_to_end(image_id)
            return self.thumbs[image_id]
        thumb = self.thumbs[image_id] = self.gallery.thumbnail(image_id)
        if len(self.thumbs) > self.size:
            self.thumbs.popitem(last=False)
        return thumb

    def thumb_shapes(self, ids) -> dict[int, tuple[int, int]]:
        """(height, width) of the thumbnails of those of ``ids`` that have one
        (``Gallery.thumb_shapes``), from this cache where it holds them."""
        out, need = {}, []
        for i in ids:
            value = self.data[i][1] if self.data.get(i) is not None else self.thumbs.get(i)
            if value is not None:
                out[i] = value.shape[:2]
            elif i not in self.data and i not in self.thumbs:
                need.append(i)
        out.update(self.gallery.thumb_shapes(need))
        return out

    def get(self, image_id: int):
        if image_id in self.data:
            self.data.move_to_end(image_id)
            return self.data[image_id]
        value = self.gallery.local_features(image_id)
        self.data[image_id] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


def _content_features(ids, paths: dict[int, str], found, cache: _LocalCache, settings: Settings,
                      masks: MutableMapping[int, np.ndarray | None],
                      pool: ThreadPoolExecutor | None = None) -> dict[int, LocalFeatures]:
    """Content-only local features of images that sit in a template crowd
    (``_content_features_started``, waited for)."""
    return _content_features_started(ids, paths, found, cache, settings, masks, pool)()


def _content_features_started(ids, paths: dict[int, str], found, cache: _LocalCache,
                              settings: Settings, masks: MutableMapping[int, np.ndarray | None],
                              pool: ThreadPoolExecutor | None = None
                              ) -> Callable[[], dict[int, LocalFeatures]]:
    """Content-only local features of images that sit in a template crowd,
    started: the returned function gives them (waiting for the pool, if one
    was given, or computing them then); ``masks`` receives each such image's
    content mask (thumbnail pixels) at once.
    The closer look (a decode and ORB, both outside the GIL) runs on ``pool``.
    It is the one look of verification that still reads the image file: the
    stored keypoints alone, inside the mask, lost most screenshot pairs of the
    hard set (a frame takes most of an image's 500 keypoints; see RESULTS.md
    "Compact stored features")."""
    found_masks = content_masks(ids, found, cache, settings, pool)
    masks.update((i, mask) for i, mask, _ in found_masks)

    def content(item) -> LocalFeatures:
        i, mask, feats = item
        # The frame took most of the image's keypoints; look again, closely,
        # at the content region only (it is often small: a photo in a screenshot).
        closer = _features_in_region(paths[i], mask, feats, settings)
        if closer is not None:
            feats = closer
        return feats.subset(keypoints_in_mask(feats.xy, (feats.width, feats.height), mask))

    if pool is not None and len(found_masks) > 1:
        results = pool.map(content, found_masks)  # (submitted now, collected when asked)
    else:
        results = map(content, found_masks)
    return lambda: {i: feats for (i, _, _), feats in zip(found_masks, results)}


def content_masks(ids, found, cache: _LocalCache, settings: Settings,
                  pool: ThreadPoolExecutor | None = None
                  ) -> list[tuple[int, np.ndarray, LocalFeatures]]:
    """(image, content mask, stored features) of the images among ``ids``
    that sit in a template crowd: enough look-alikes among their ``found``
    hash neighbours that a shared frame shows (from stored thumbnails only).

    The thumbnails are read here (SQLite belongs to this thread), in parts of
    ``MASK_PART`` images; each part's masks are made on ``pool`` (OpenCV and
    NumPy's sorts run outside the GIL) while the next part is read. In a
    large collection of photos of one size every image has its eight
    look-alikes, so every image is checked: 1,855 checks of 2.3 ms in a 1%
    add to 50,500 scale-set images, all on this thread before."""
    crowds = {}
    for i in ids:
        close = [j for j, d in found.nearest.get(i, []) if d <= settings.template_crowd_distance]
        if len(close) >= MIN_LOOKALIKES:
            crowds[i] = close
    # Only look-alikes of the image's own thumbnail shape take part
    # (``content_mask``): the others are not decoded, and an image with too
    # few of them has no template (most photos: they differ in aspect).
    shapes = cache.thumb_shapes({j for i, close in crowds.items() for j in (i, *close)})
    out: list[tuple[int, np.ndarray, LocalFeatures]] = []
    part: list[tuple[int, np.ndarray, list[np.ndarray]]] = []
    running = None  # (a part, its masks being made)

    def collect(done) -> None:
        if done is not None:
            for (i, _, _), mask in zip(*done):
                if mask is not None:
                    out.append((i, mask, cache.get(i)[0]))

    def start(part):
        masks = (pool.map if pool is not None and len(part) > 1 else map)(
            lambda job: content_mask(job[1], job[2]), part)
        return part, masks

    for i, close in crowds.items():
        checkpoint()
        shape = shapes.get(i)
        if shape is None:
            continue
        close = [j for j in close if shapes.get(j) == shape]
        if len(close) < MIN_LOOKALIKES:
            continue
        thumb = cache.thumb(i)
        part.append((i, thumb, [t for t in (cache.thumb(j) for j in close) if t is not None]))
        if len(part) == MASK_PART:
            collect(running)
            running, part = start(part), []
    collect(running)
    if part:
        collect(start(part))
    return out


#: Images whose template checks are made at once (``content_masks``): their
#: thumbnails and their look-alikes' are held meanwhile, two parts at most.
MASK_PART = 64


def _features_in_region(path: str, mask: np.ndarray, feats: LocalFeatures,
                        settings: Settings) -> LocalFeatures | None:
    """ORB features of the mask's bounding box, at up to full resolution,
    in the coordinates of the image's working frame."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    try:
        img = load_image(path, max_pixels=settings.max_pixels).image
    except ImageLoadError:
        return None
    mh, mw = mask.shape
    sx, sy = img.width / mw, img.height / mh
    box = (int(cols.min() * sx), int(rows.min() * sy),
           int(np.ceil((cols.max() + 1) * sx)), int(np.ceil((rows.max() + 1) * sy)))
    crop = img.crop(box)
    grey = working_grey(crop, min(settings.work_side, max(crop.size)))
    local = extract_local(grey, settings.n_features)
    if not len(local):
        return None
    to_full = crop.width / grey.shape[1]
    to_work = feats.width / img.width
    xy = (local.xy * to_full + np.array(box[:2], np.float32)) * to_work
    return LocalFeatures(xy.astype(np.float32), local.desc, feats.width, feats.height)


def thumb_content_mask(thumb: np.ndarray | None) -> np.ndarray | None:
    """The area inside flat borders of a stored thumbnail (None: everywhere)."""
    mask = picture_mask(thumb) if thumb is not None else None
    return None if mask is None or mask.all() else mask
