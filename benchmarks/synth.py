"""Procedural photo-like pictures, one per (seed, index), for scale benchmarks.

Why: the scale targets (10k, 100k, 1M images) need collections of *distinct*
pictures far larger than any photo set on this machine, and pasting regions of
real photos would make two "different" pictures share regions (true matches
the ground truth does not know about). Every picture here is drawn from
nothing but its own random generator, so two indices share no region, yet has
what the pipeline feeds on: fractal-noise texture at several scales, layered
shapes with hard and soft edges, textured fills, strokes and text (ORB
corners), a lighting gradient, slight blur and sensor grain, typical camera
sizes, JPEG-encoded.

    from synth import render
    im = render(seed=0, index=123)          # PIL RGB image, same every time
"""

from __future__ import annotations

import colorsys
import math
import statistics

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

#: Typical sizes of photos in consumer libraries and web galleries (w, h);
#: portrait orientations are drawn too.
SIZES = ((640, 480), (800, 600), (1024, 768), (960, 640), (1024, 683), (720, 540), (900, 600))
#: The standard normal quantiles of the 256 byte values (for the grain).
_PROBIT = [statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)]
_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789&%#@"


def rng_for(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    """The generator of picture ``index``: independent of every other index, so
    any picture can be regenerated alone (collections are built in parts)."""
    return np.random.default_rng([int(seed), int(index), int(salt)])


def _palette(rng: np.random.Generator, n: int = 6) -> np.ndarray:
    """A harmonious random palette (uint8, n x 3): one or two base hues with
    varied lightness and saturation, like the dominant colours of a scene."""
    base = rng.random()
    hues = base + rng.choice([0.0, 0.08, 0.5, 0.33], size=n) + rng.normal(0, 0.04, n)
    sat = np.clip(rng.beta(2, 2, n) * rng.uniform(0.5, 1.2), 0, 1)
    val = np.clip(rng.beta(2.5, 2, n), 0.05, 1)
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h % 1, s, v)]
                     for h, s, v in zip(hues, sat, val)], dtype=np.uint8)


def _noise(rng: np.random.Generator, w: int, h: int, octaves: int = 6,
           persistence: float = 0.55, base: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1] (h x w float32): random grids from coarse
    to fine, bicubically upsampled and summed with decaying weights."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gw, gh = max(2, base * 2 ** o * w // max(w, h)), max(2, base * 2 ** o * h // max(w, h))
        if o and gw > w // 2:
            break
        grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
        out += amp * np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float32)
        total += amp * 255
        amp *= persistence
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo + 1e-6)


def _colourise(field: np.ndarray, pal: np.ndarray) -> Image.Image:
    """Map a [0, 1] field through a palette ramp (a 256-entry LUT, applied by
    Pillow in C: an RGB image)."""
    xs = np.linspace(0, 1, len(pal))
    lut = np.stack([np.interp(np.linspace(0, 1, 256), xs, pal[:, c]) for c in range(3)], -1)
    grey = Image.fromarray((field * 255).astype(np.uint8), "L")
    return Image.merge("RGB", [grey.point(lut[:, c].astype(np.uint8).tolist()) for c in range(3)])


def _texture(rng: np.random.Generator, w: int, h: int, pal: np.ndarray) -> Image.Image:
    """A texture of w x h: fractal noise, optionally banded or striped (wood,
    fabric, foliage-like) through part of the palette. Large ones are drawn
    at half size and upsampled (finer detail comes from strokes and grain)."""
    if w * h > 200_000:
        return _texture(rng, w // 2, h // 2, pal).resize((w, h), Image.Resampling.BILINEAR)
    f = _noise(rng, w, h, octaves=int(rng.integers(4, 8)), persistence=rng.uniform(0.4, 0.7),
               base=int(rng.integers(3, 12)))
    kind = rng.integers(3)
    if kind == 1:  # bands: contour-like rings
        f = (f * rng.uniform(3, 9)) % 1.0
    elif kind == 2:  # stripes warped by the noise
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(8, 60)
        f = 0.5 + 0.5 * np.sin((xx * math.cos(ang) + yy * math.sin(ang)) / period * 2 * math.pi
                               + f * rng.uniform(4, 14))
    sub = pal[rng.permutation(len(pal))[: int(rng.integers(2, len(pal) + 1))]]
    return _colourise(f, sub)


def _rand_colour(rng: np.random.Generator, pal: np.ndarray) -> tuple[int, int, int]:
    c = pal[rng.integers(len(pal))].astype(int) + rng.integers(-30, 31, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _shape_mask(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, tuple[int, int]]:
    """One random shape as an L mask the size of its bounding box (clipped to
    the frame), and where the box goes: ellipse, polygon, rotated box or blob."""
    cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
    r = rng.uniform(0.03, 0.3) * max(w, h)
    pad = 8
    x0, y0 = int(max(0, cx - 1.6 * r - pad)), int(max(0, cy - 1.6 * r - pad))
    x1, y1 = int(min(w, cx + 1.6 * r + pad)), int(min(h, cy + 1.6 * r + pad))
    if x1 - x0 < 4 or y1 - y0 < 4:
        x0, y0, x1, y1 = 0, 0, 4, 4
    cx, cy = cx - x0, cy - y0
    m = Image.new("L", (x1 - x0, y1 - y0), 0)
    d = ImageDraw.Draw(m)
    kind = rng.integers(4)
    if kind == 0:
        d.ellipse([cx - r, cy - r * rng.uniform(0.3, 1.0), cx + r, cy + r * rng.uniform(0.3, 1.0)],
                  fill=255)
    elif kind == 1:
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = r * rng.uniform(0.4, 1.0, k)
        d.polygon([(cx + a * math.cos(t), cy + a * math.sin(t)) for t, a in zip(ang, rad)], fill=255)
    elif kind == 2:
        t, bw, bh = rng.uniform(0, math.pi), r, r * rng.uniform(0.2, 1.0)
        pts = [(-bw, -bh), (bw, -bh), (bw, bh), (-bw, bh)]
        d.polygon([(cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t))
                   for x, y in pts], fill=255)
    else:  # blob: union of a few discs
        for _ in range(int(rng.integers(3, 8))):
            rr = r * rng.uniform(0.2, 0.6)
            x, y = cx + rng.normal(0, r / 3), cy + rng.normal(0, r / 3)
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    if rng.random() < 0.4:
        m = m.filter(ImageFilter.BoxBlur(rng.uniform(1, 4)))
    return m, (x0, y0)


def render(seed: int, index: int) -> Image.Image:
    """Picture ``index`` of collection ``seed`` (an RGB PIL image)."""
    rng = rng_for(seed, index)
    w, h = SIZES[rng.integers(len(SIZES))]
    if rng.random() < 0.25:
        w, h = h, w
    pal = _palette(rng, int(rng.integers(4, 8)))
    img = _texture(rng, w, h, pal)
    # Horizon-like split: a second texture over the lower or upper part.
    if rng.random() < 0.6:
        m = Image.new("L", (w, h), 0)
        y0 = rng.uniform(0.3, 0.75) * h
        tilt = rng.normal(0, 0.15) * h
        ImageDraw.Draw(m).polygon([(0, y0), (w, y0 + tilt), (w, h), (0, h)], fill=255)
        img = Image.composite(_texture(rng, w, h, _palette(rng)), img,
                              m.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 3))))
    # Objects: textured or flat shapes, near ones larger.
    for _ in range(int(rng.integers(6, 16))):
        mask, at = _shape_mask(rng, w, h)
        if rng.random() < 0.35:
            fill = _texture(rng, *mask.size, pal if rng.random() < 0.5 else _palette(rng))
        else:
            fill = _rand_colour(rng, pal)
        img.paste(fill, (*at, at[0] + mask.size[0], at[1] + mask.size[1]), mask)
    d = ImageDraw.Draw(img)
    # Strokes: branches, wires, outlines.
    for _ in range(int(rng.integers(5, 30))):
        pts = [(rng.uniform(0, w), rng.uniform(0, h))]
        for _ in range(int(rng.integers(1, 6))):
            x, y = pts[-1]
            pts.append((x + rng.normal(0, w / 8), y + rng.normal(0, h / 8)))
        d.line(pts, fill=_rand_colour(rng, pal), width=int(rng.integers(1, 7)))
    # Text: signs and labels (dense corners, as in real street scenes).
    for _ in range(int(rng.integers(0, 5))):
        size = int(rng.uniform(0.03, 0.12) * h)
        text = "".join(_GLYPHS[i] for i in rng.integers(len(_GLYPHS), size=int(rng.integers(3, 12))))
        d.text((rng.uniform(-0.1, 0.9) * w, rng.uniform(0, 0.95) * h), text,
               fill=_rand_colour(rng, pal), font=ImageFont.load_default(size=max(8, size)))
    # Lighting: a smooth gradient of brightness across the frame.
    # Optics: slight blur.
    if rng.random() < 0.7:
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 0.9)))
    # Lighting: a smooth fall-off of brightness across the frame (computed on a
    # small grid, upsampled; Pillow does the per-pixel work in C).
    gx, gy = rng.normal(0, 1, 2)
    yy, xx = np.mgrid[0:24, 0:32].astype(np.float32)
    light = (xx / 31 - 0.5) * gx + (yy / 23 - 0.5) * gy
    light = 255 * (1 - rng.uniform(0.1, 0.45) * (light - light.min()) / (np.ptp(light) + 1e-6))
    light = Image.fromarray(light.astype(np.uint8), "L").resize((w, h), Image.Resampling.BILINEAR)
    img = ImageChops.multiply(img, Image.merge("RGB", [light] * 3))
    # Sensor grain (luminance noise).
    # Uniform bytes mapped to a Gaussian of the drawn sigma by a lookup table
    # (Pillow's effect_noise is several times slower).
    sigma = float(rng.uniform(2, 6))
    lut = [int(np.clip(round(128 + sigma * _PROBIT[i]), 0, 255)) for i in range(256)]
    grain = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").point(lut)
    grain = grain.convert("RGB")
    return ImageChops.add(img, grain, scale=1.0, offset=-128)


def jpeg_quality(seed: int, index: int) -> int:
    """The JPEG quality picture ``index`` is saved at (camera- and web-like)."""
    return int(rng_for(seed, index, salt=1).integers(80, 96))
