"""Edit suites as data: how positives are synthesised for calibration.

A suite (``configs/edits/NAME.toml``) lists named edits; each edit is a list
of operations applied in order. A parameter given as ``[lo, hi]`` is drawn
uniformly per photo from a generator seeded by the photo's name and the
edit's name, so a calibration run is reproducible. Only Pillow and numpy are
used (AugLy, which built the benchmark sets, is not a dependency).

    name = "exact-ish"
    [[edit]]
    name = "half"
    ops = [{op = "resize", scale = 0.5}, {op = "jpeg", quality = 80}]
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from matchkit.relation import KINDS, in_level

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EDITS_DIR = "edits"


class EditError(ValueError):
    """A suite that cannot be read or names an unknown operation."""


@dataclass(frozen=True)
class Edit:
    name: str
    ops: tuple[dict, ...]
    #: What the edited image is to its photo, as a ``relation.KINDS`` entry.
    #: Empty: a copy (positive at every level). ``variant`` (a recolour, the
    #: dark version) is a positive only from ``--level variants`` on, so a
    #: profile calibrated for copies learns to reject it.
    relation: str = ""


@dataclass(frozen=True)
class EditSuite:
    name: str
    edits: tuple[Edit, ...]
    description: str = ""
    #: Edits made per photo, drawn from ``edits`` (0: all of them); keeps
    #: calibration time bounded for large suites.
    per_photo: int = 0
    path: str = ""

    def choose(self, photo: str) -> list[Edit]:
        if not self.per_photo or self.per_photo >= len(self.edits):
            return list(self.edits)
        return _rng(photo, self.name).sample(list(self.edits), self.per_photo)


@dataclass
class _State:
    image: Image.Image
    save: dict = field(default_factory=lambda: {"format": "JPEG", "quality": 90})


def configs_dirs() -> list[Path]:
    """Where profiles and suites are looked up: ``$MATCHKIT_CONFIGS`` (os.pathsep
    separated), then the ``configs/`` folder beside the package (a source
    checkout or an editable install)."""
    out = [Path(p) for p in os.environ.get("MATCHKIT_CONFIGS", "").split(os.pathsep) if p]
    out.append(Path(__file__).resolve().parents[2] / "configs")
    return out


def available_suites() -> list[str]:
    return sorted({p.stem for d in configs_dirs() for p in (d / EDITS_DIR).glob("*.toml")})


def load_suite(name_or_path: str | os.PathLike) -> EditSuite:
    """A suite by name (``configs/edits/NAME.toml``) or by path to a .toml file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        found = [d / EDITS_DIR / f"{name_or_path}.toml" for d in configs_dirs()]
        path = next((p for p in found if p.exists()), None)
        if path is None:
            raise EditError(f"unknown edit suite {str(name_or_path)!r} "
                            f"(available: {', '.join(available_suites()) or 'none'})")
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EditError(f"cannot read edit suite {path}: {e}") from None
    edits = []
    for e in data.get("edit", []):
        if not isinstance(e, dict) or "name" not in e or not isinstance(e.get("ops"), list):
            raise EditError(f"{path}: every [[edit]] needs a name and a list of ops")
        for op in e["ops"]:
            if not isinstance(op, dict) or op.get("op") not in OPS:
                raise EditError(f"{path}: edit {e['name']!r}: unknown op {op!r} "
                                f"(known: {', '.join(sorted(OPS))})")
        relation = str(e.get("relation", ""))
        if relation and relation not in KINDS:
            raise EditError(f"{path}: edit {e['name']!r}: unknown relation {relation!r} "
                            f"(known: {', '.join(KINDS)})")
        edits.append(Edit(str(e["name"]), tuple(dict(o) for o in e["ops"]), relation))
    if not edits:
        raise EditError(f"{path}: no edits")
    return EditSuite(str(data.get("name", Path(path).stem)), tuple(edits),
                     str(data.get("description", "")), int(data.get("per_photo", 0)), str(path))


def same_picture_at(a: str, b: str, level: str) -> bool:
    """Whether two edits of one photo, with edit relations ``a`` and ``b``
    (``Edit.relation``; empty for a copy, or the original), count as one
    picture at ``level``: the looser of the two relations must be in it (a
    recolour and a crop of one photo are variants of each other)."""
    loosest = max((r for r in (a, b) if r), key=KINDS.index, default="")
    return not loosest or in_level(loosest, level)


def apply_edit(image: Image.Image, edit: Edit, photo: str) -> tuple[Image.Image, dict]:
    """The edited image and the Pillow ``save`` arguments its last encode needs."""
    rng = _rng(photo, edit.name)
    st = _State(image.convert("RGB"))
    for op in edit.ops:
        params = {k: _draw(v, rng) for k, v in op.items() if k != "op"}
        try:
            OPS[op["op"]](st, rng, **params)
        except TypeError as e:
            raise EditError(f"edit {edit.name!r}, op {op['op']!r}: {e}") from None
    return st.image, st.save


def write_edit(src: Path, edit: Edit, out_dir: Path, stem: str) -> Path:
    """Apply ``edit`` to the photo at ``src``; write ``out_dir/<stem>__<edit>.<ext>``."""
    with Image.open(src) as im:
        im.load()
        edited, save = apply_edit(im, edit, src.name)
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[save["format"]]
    out = out_dir / f"{stem}__{edit.name}{ext}"
    edited.save(out, **save)
    return out


def _rng(photo: str, salt: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{salt}/{photo}".encode()).hexdigest()[:16], 16))


def _draw(value, rng: random.Random):
    if isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        lo, hi = value
        if isinstance(lo, int) and isinstance(hi, int):
            return rng.randint(lo, hi)
        return rng.uniform(lo, hi)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return rng.choice(value)
    return value


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


# -- operations ------------------------------------------------------------------

def _resize(st, rng, scale: float = 0.5, side: int | None = None):
    w, h = st.image.size
    if side:
        scale = side / max(w, h)
    st.image = st.image.resize((max(8, round(w * scale)), max(8, round(h * scale))),
                               Image.Resampling.LANCZOS)


def _square(st, rng):
    side = min(st.image.size)
    st.image = st.image.resize((side, side), Image.Resampling.LANCZOS)


def _jpeg(st, rng, quality: int = 75):
    st.save = {"format": "JPEG", "quality": int(quality)}


def _png(st, rng):
    st.save = {"format": "PNG"}


def _crop(st, rng, frac: float = 0.875, center: bool = False):
    """Keep ``frac`` of each side (random position unless ``center``)."""
    w, h = st.image.size
    cw, ch = max(8, round(w * frac)), max(8, round(h * frac))
    x, y = ((w - cw) // 2, (h - ch) // 2) if center else (rng.randint(0, w - cw),
                                                          rng.randint(0, h - ch))
    st.image = st.image.crop((x, y, x + cw, y + ch))


def _rotate(st, rng, degrees: float = 10.0, fill: str = "black", signed: bool = False):
    if signed:
        degrees *= rng.choice([-1, 1])
    colour = _colour(rng) if fill == "random" else (0, 0, 0)
    st.image = st.image.rotate(degrees, expand=True, resample=Image.Resampling.BILINEAR,
                               fillcolor=colour)


def _flip(st, rng, axis: str = "horizontal"):
    st.image = (ImageOps.mirror if axis == "horizontal" else ImageOps.flip)(st.image)


def _blur(st, rng, radius: float = 2.0):
    st.image = st.image.filter(ImageFilter.GaussianBlur(radius))


def _pad(st, rng, frac: float = 0.2):
    w, h = st.image.size
    st.image = ImageOps.expand(st.image, (round(w * frac), round(h * frac)), fill=_colour(rng))


def _grey(st, rng):
    st.image = ImageOps.grayscale(st.image).convert("RGB")


def _jitter(st, rng, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0):
    im = ImageEnhance.Brightness(st.image).enhance(brightness)
    im = ImageEnhance.Contrast(im).enhance(contrast)
    st.image = ImageEnhance.Color(im).enhance(saturation)


def _recolour(st, rng, degrees: float = 120.0, saturation: float = 1.0):
    """The same artwork in other colours: every hue turned by ``degrees``
    (a colour variant of a wallpaper or an icon), lightness kept. A
    ``saturation`` above 1 makes the new colours vivid, so that a pale photo
    is visibly recoloured too (turning hues a photo hardly has changes
    nothing a viewer sees, and would teach calibration that a copy is not one)."""
    hsv = np.asarray(st.image.convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    st.image = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def _lightdark(st, rng):
    """The dark version of a light artwork (or the reverse): luma inverted,
    chroma kept (YCbCr), so the hues stay where they were."""
    ycc = np.asarray(st.image.convert("YCbCr")).copy()
    ycc[..., 0] = 255 - ycc[..., 0]
    st.image = Image.fromarray(ycc, "YCbCr").convert("RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text(st, rng, size: float = 0.12, length: int = 10):
    """Random capitals and digits in a random colour, PIL's default font."""
    im = st.image.copy()
    w, h = im.size
    text = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789 ") for _ in range(int(length)))
    ImageDraw.Draw(im).text((int(w * rng.uniform(0, 0.4)), int(h * rng.uniform(0.1, 0.7))),
                            text, fill=_colour(rng), font=_font(max(10, int(h * size))))
    st.image = im


def _sticker(st, rng, size: float = 0.3):
    """An emoji-like face: a filled disc with eyes and a smile, PIL shapes only."""
    im = st.image.copy()
    w, h = im.size
    d = max(8, int(min(w, h) * size))
    x, y = rng.randint(0, max(0, w - d)), rng.randint(0, max(0, h - d))
    draw = ImageDraw.Draw(im)
    draw.ellipse((x, y, x + d, y + d), fill=_colour(rng), outline=(0, 0, 0), width=max(1, d // 30))
    e = max(2, d // 8)
    for ex in (x + d * 0.3, x + d * 0.7):
        draw.ellipse((ex - e / 2, y + d * 0.35 - e / 2, ex + e / 2, y + d * 0.35 + e / 2),
                     fill=(0, 0, 0))
    draw.arc((x + d * 0.25, y + d * 0.4, x + d * 0.75, y + d * 0.8), 20, 160, fill=(0, 0, 0),
             width=max(1, d // 15))
    st.image = im


def _screenshot(st, rng, layout: str = "web", scale: float = 0.6):
    """The picture pasted, smaller, into a synthetic app frame: title bar,
    toolbar, side panel and lines of text around it."""
    pic = st.image
    if layout == "mobile":
        W, H = 540, 1100
    else:
        W, H = 1280, 800
    frame = Image.new("RGB", (W, H), (245, 245, 247))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, W, 60), fill=(40, 44, 52))
    draw.rectangle((0, 60, W, 100), fill=(225, 228, 232))
    for i in range(3):
        draw.ellipse((16 + 24 * i, 22, 32 + 24 * i, 38), fill=[(237, 106, 94), (245, 191, 79),
                                                             (98, 197, 84)][i])
    left = 0 if layout == "mobile" else 240
    if left:
        draw.rectangle((0, 100, left, H), fill=(232, 234, 237))
    font = _font(14)
    for row in range(120, H - 20, 28):
        if left:
            draw.text((16, row), f"Item {row // 28}", fill=(80, 80, 80), font=font)
    area_w, area_h = W - left - 40, H - 100 - 160
    f = min(area_w / pic.width, area_h / pic.height) * scale
    pic = pic.resize((max(8, int(pic.width * f)), max(8, int(pic.height * f))),
                     Image.Resampling.LANCZOS)
    px, py = left + 20 + (area_w - pic.width) // 2, 120
    frame.paste(pic, (px, py))
    for row in range(py + pic.height + 20, H - 20, 24):
        draw.rectangle((left + 20, row, left + 20 + rng.randint(200, area_w), row + 10),
                       fill=(200, 200, 205))
    st.image = frame


def _homography(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients Pillow's PERSPECTIVE transform takes: they map output
    pixel ``dst`` back to input pixel ``src``."""

    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([u, v, 1, 0, 0, 0, -x * u, -x * v])
        a.append([0, 0, 0, u, v, 1, -y * u, -y * v])
        b += [x, y]
    return list(np.linalg.solve(np.asarray(a, float), np.asarray(b, float)))


def _tilted_quad(w: int, h: int, degrees: float, rng: random.Random) -> list[tuple[float, float]]:
    """Corners of a ``w`` x ``h`` rectangle seen by a pinhole camera turned by
    ``degrees`` (split between yaw and pitch, signs random) plus a small roll."""
    import math


    share = rng.uniform(0.0, 1.0)
    yaw = math.radians(degrees) * math.sqrt(share) * rng.choice([-1, 1])
    pitch = math.radians(degrees) * math.sqrt(1 - share) * rng.choice([-1, 1])
    roll = math.radians(rng.uniform(-4, 4))
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    rot = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
           @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]))
    f = 1.1 * max(w, h)
    pts = []
    for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        X = rot @ np.array([x, y, 0.0]) + np.array([0, 0, 1.6 * f])
        pts.append((f * X[0] / X[2], f * X[1] / X[2]))
    return pts


def _recapture(st, rng, kind: str = "monitor", degrees: float = 20.0, setup: int = -1,
               blur: float = 1.2, noise: float = 5.0, side: int = 1024):
    """The picture shown on a monitor (dark bezel, glare) or printed (white
    border), photographed at ``degrees`` off-axis on a new background with a
    lighting gradient, blur and sensor noise. With ``setup`` >= 0 the monitor,
    camera pose, background and light come from that setup alone, so different
    pictures shot on one setup share an identical frame (hard negatives)."""

    geo = random.Random(f"recapture-setup/{setup}") if setup >= 0 else rng
    pic = st.image.convert("RGB")
    scale = 0.62 * side / max(pic.size)
    pic = pic.resize((max(8, round(pic.width * scale)), max(8, round(pic.height * scale))),
                     Image.Resampling.LANCZOS)
    if kind == "monitor":
        # A fixed 16:10 panel: the picture is letterboxed on black like a viewer app.
        pw, ph = round(0.62 * side), round(0.62 * side * 10 / 16)
        f = min(pw / pic.width, ph / pic.height)
        pic = pic.resize((max(8, round(pic.width * f)), max(8, round(pic.height * f))),
                         Image.Resampling.LANCZOS)
        panel = Image.new("RGB", (pw, ph), (8, 8, 10))
        panel.paste(pic, ((pw - pic.width) // 2, (ph - pic.height) // 2))
        b = max(6, round(pw * geo.uniform(0.03, 0.06)))
        grey = geo.randint(15, 60)
        framed = ImageOps.expand(panel, (b, b, b, round(b * 1.8)), fill=(grey, grey, grey + 4))
        d = ImageDraw.Draw(framed)
        d.ellipse((framed.width - 3 * b, framed.height - b, framed.width - 3 * b + 6,
                   framed.height - b + 6), fill=(40, 200, 90))
        d.rectangle((framed.width // 2 - b, framed.height - b, framed.width // 2 + b,
                     framed.height - b // 2), fill=(grey + 30,) * 3)
    else:
        b = max(4, round(max(pic.size) * rng.uniform(0.03, 0.06)))
        framed = ImageOps.expand(pic, b, fill=(245, 243, 238))
    # Background: a two-colour gradient with soft blobs (a desk, a wall), drawn at
    # 1/8 scale and enlarged (the blur that softens it is then cheap).
    W, H = side, round(side * 0.75)
    w8, h8 = max(8, W // 8), max(6, H // 8)
    c1, c2 = _colour(geo), _colour(geo)
    t = np.linspace(0, 1, w8, dtype=np.float32)[None, :, None]
    bg = (np.array(c1)[None, None] * (1 - t) + np.array(c2)[None, None] * t) * np.ones((h8, 1, 1))
    back = Image.fromarray(bg.astype(np.uint8))
    bd = ImageDraw.Draw(back)
    for _ in range(6):
        x, y, r = geo.randrange(w8), geo.randrange(h8), geo.randint(w8 // 12 + 1, w8 // 4 + 1)
        bd.ellipse((x - r, y - r, x + r, y + r), fill=_colour(geo))
    back = back.filter(ImageFilter.GaussianBlur(w8 / 40)).resize((W, H), Image.Resampling.BILINEAR)
    # Perspective: the framed picture as a camera turned by `degrees` sees it.
    quad = _tilted_quad(framed.width, framed.height, degrees, geo)
    xs, ys = [q[0] for q in quad], [q[1] for q in quad]
    fit = 0.9 * min(W / (max(xs) - min(xs)), H / (max(ys) - min(ys)))
    ox = (W - fit * (max(xs) - min(xs))) / 2 - fit * min(xs) + geo.uniform(-0.03, 0.03) * W
    oy = (H - fit * (max(ys) - min(ys))) / 2 - fit * min(ys) + geo.uniform(-0.03, 0.03) * H
    dst = [(ox + fit * x, oy + fit * y) for x, y in quad]
    src = [(0, 0), (framed.width, 0), (framed.width, framed.height), (0, framed.height)]
    coeffs = _homography(src, dst)
    warped = framed.transform((W, H), Image.Transform.PERSPECTIVE, coeffs,
                              Image.Resampling.BICUBIC)
    mask = Image.new("L", framed.size, 255).transform((W, H), Image.Transform.PERSPECTIVE,
                                                        coeffs, Image.Resampling.BILINEAR)
    back.paste(warped, (0, 0), mask)
    # Light: a linear gradient in a random direction, a glare spot on screens.
    arr = np.asarray(back, dtype=np.float32)
    ang = geo.uniform(0, 2 * np.pi)
    yy, xx = np.ogrid[0:H, 0:W]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    ramp = (np.cos(ang) * xx / W + np.sin(ang) * yy / H)
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    lo, hi = geo.uniform(0.65, 0.85), geo.uniform(1.0, 1.15)
    arr *= (lo + (hi - lo) * ramp)[..., None]
    if kind == "monitor":
        gx, gy, gr = geo.uniform(0.2, 0.8) * W, geo.uniform(0.2, 0.8) * H, geo.uniform(0.1, 0.25) * W
        arr += (60 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * gr * gr)))[..., None]
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(max(0.0, float(blur))))
    noisy = np.asarray(out, dtype=np.float32) + np.random.default_rng(
        rng.randrange(2**32)).standard_normal((H, W, 3), dtype=np.float32) * float(noise)
    st.image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    st.save = {"format": "JPEG", "quality": 88}


OPS = {"recapture": _recapture, "resize": _resize, "square": _square, "jpeg": _jpeg, "png": _png, "crop": _crop,
       "rotate": _rotate, "flip": _flip, "blur": _blur, "pad": _pad, "grey": _grey,
       "jitter": _jitter, "recolour": _recolour, "lightdark": _lightdark, "text": _text, "sticker": _sticker, "screenshot": _screenshot}
