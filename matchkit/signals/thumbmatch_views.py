"""Icon views: what ``thumbmatch`` compares of an icon-like image.

An icon-like image (``icon_like``: at most ``ICON_SIDE`` px, drawn on
transparency) is read once, from its file or the PNG a gallery stores of it
(``icon_blob``), into an ``IconView``: composited over the viewer's
mid-grey, cropped to its opaque part, with its alpha and a unit candidate
vector (``_code``). Making views is extraction, done once per image
(``icon_views``, on the caller's pool); comparing and deciding pairs of them
is ``thumbmatch``'s, which imports every name here back.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from matchkit.io.load import TRANSPARENT_BACKGROUND

#: Side of the luminance layout used for the correlation and for candidates:
#: coarse enough that hinting (sharper edges, one-pixel shifts, dropped
#: fine detail) does not change it.
COARSE = 16
#: Alpha above this counts as part of the icon (bounding box, icon area).
OPAQUE = 0.05

#: Colour part of the candidate vector: CODE_CELLS x CODE_CELLS cells of
#: Lab (a, b), each unit worth this much against the unit luminance layout:
#: a ribbon recoloured from blue to red (about 80 units over two cells)
#: moves the vector as much as another glyph does; a redraw's slight colour
#: shifts move it little.
CODE_CELLS = 8
CODE_COLOUR = 1.0 / 200.0

#: Icon-sized pictures: both sides at most this many pixels.
ICON_SIDE = 256


#: Icons smaller than this (longer side) are not compared here: the one-pixel
#: tolerance would be over 5% of the icon and a badge or glyph only a handful
#: of pixels, so a 16 px folder passes for any other 16 px folder (on 16 px
#: renderings made from the dev set's icons, 13 look-alikes passed where none
#: did at 24 or 32 px). Themes draw those sizes as separate, simplified
#: pictures anyway; such pairs stay with the other rules.
MIN_SIDE = 20


@dataclass
class IconView:
    """One icon as compared here: cropped to its opaque part."""

    #: RGB composite over mid-grey (float32 0-1, H x W x 3) and alpha (H x W, 0-1).
    rgb: np.ndarray
    alpha: np.ndarray
    #: Unit candidate vector (``_code``) for the candidate index.
    code: np.ndarray
    #: Pixel size of the file.
    size: tuple[int, int]


def icon_like(size: tuple[int, int]) -> bool:
    """Whether an image of this pixel size may be an icon compared here
    (``MIN_SIDE`` to ``ICON_SIDE``)."""
    return MIN_SIDE <= max(size) <= ICON_SIDE


def _icon_rgba(source: str | bytes, max_side: int = ICON_SIDE) -> np.ndarray | None:
    """RGBA pixels (uint8) of an icon-like file or stored blob, else None:
    larger than ``max_side``, unreadable, or without transparent pixels."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if not icon_like(img.size) or max(img.size) > max_side:
                return None
            if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
                return None
            img.seek(0)
            rgba = np.asarray(img.convert("RGBA"))
    except Exception:  # any bad file: not compared here, never a crash
        return None
    return rgba if rgba[..., 3].min() < 255 else None


#: The first bytes of every PNG file.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def icon_blob(path: str | os.PathLike) -> bytes | None:
    """What a gallery stores of an icon-like file so that ``icon_view`` needs
    no file later: a PNG of its RGBA pixels (lossless: the same view), or
    None for anything ``icon_view`` would not view. A PNG file is kept as it
    is unless it is bigger than its raw pixels: encoding again cost 2.7 ms
    per icon of the real dev set, and its 517 icon files are 5% smaller than
    what Pillow made of them."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    rgba = _icon_rgba(data)
    if rgba is None:
        return None
    if data[:8] == _PNG_SIGNATURE and len(data) <= rgba.nbytes:
        return data
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(out, "PNG", compress_level=6)
    return out.getvalue()


def icon_view(source: str | bytes, max_side: int = ICON_SIDE) -> IconView | None:
    """The view of an icon (a file's path, or its stored ``icon_blob``), or
    None when it is not icon-like: larger than ``max_side``, unreadable, or
    without transparent pixels (a photo thumbnail has keypoints and a pHash
    that work; only drawings on transparency are left to this module)."""
    rgba = _icon_rgba(source, max_side)
    if rgba is None:
        return None
    rgba = rgba.astype(np.float32) / 255.0
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > OPAQUE)
    if not len(ys):
        return None  # all transparent: nothing to see
    box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    grey = np.array(TRANSPARENT_BACKGROUND, np.float32) / 255.0
    a = alpha[box][..., None]
    comp = np.ascontiguousarray(rgba[box][..., :3] * a + grey * (1.0 - a))
    return IconView(comp, np.ascontiguousarray(alpha[box]), _code(comp),
                    (rgba.shape[1], rgba.shape[0]))


def _code(comp: np.ndarray) -> np.ndarray:
    """Unit candidate vector of a view: its coarse luminance layout (mean
    removed, unit length) and, weighted by ``CODE_COLOUR``, its coarse colour
    (Lab a, b), so that a theme's colour variants of one drawing, which share
    the layout, do not crowd the drawing's own renderings out of the
    neighbour list. Zero for a flat icon."""
    lab = cv2.cvtColor(comp, cv2.COLOR_RGB2Lab)
    lum = _resample(lab[..., 0], COARSE, COARSE).ravel()
    lum = lum - lum.mean()
    norm = float(np.linalg.norm(lum))
    if norm <= 1e-6:
        return np.zeros(COARSE * COARSE + 2 * CODE_CELLS ** 2, np.float32)
    ab = _resample(np.ascontiguousarray(lab[..., 1:]), CODE_CELLS, CODE_CELLS).ravel()
    code = np.concatenate([lum / norm, ab * CODE_COLOUR])
    return (code / np.linalg.norm(code)).astype(np.float32)


def _resample(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area-average down, bilinear up (a crop smaller than the grid)."""
    shrink = x.shape[0] >= h and x.shape[1] >= w
    return cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def icon_views(sources: dict[int, str | bytes], sizes: dict[int, tuple[int, int]],
               pool: Executor | None = None) -> dict[int, IconView]:
    """Views of the icon-like images among ``sources`` (paths, or the stored
    ``icon_blob`` a gallery keeps; ``sizes`` from the gallery: larger images
    are not even opened), decoded on ``pool`` if given."""
    todo = [i for i in sources if icon_like(sizes.get(i, (0, 0)))]
    views = (pool.map if pool is not None and len(todo) > 1 else map)(
        icon_view, [sources[i] for i in todo])
    return {i: v for i, v in zip(todo, views) if v is not None}
