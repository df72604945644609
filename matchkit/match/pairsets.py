"""Training pairs for calibration, synthesised from a user's own photos.

Photos are split in two halves by a stable hash of their file name (fit and
held-out). Each half becomes its own small collection: every photo plus the
edits an edit suite makes of it, added to a temporary gallery and run
through the real candidate search (``PairMatcher``). Candidate pairs made
from the same photo are positives; all others are negatives, and they are
the hard ones: the nearest non-duplicates the search itself proposes. Edits
that make a variant of the photo (``relation = "variant"`` in the suite: a
recolour, the dark version) are positives only at the levels that group
variants (``Settings.level``). Only pairs whose relation the level groups
are kept (``pairfeatures.level_allows``, the gate every calibrated decision
passes), so a recolour that the relation already calls a variant is not a
row at --level copies, and one that passes for a copy is a negative the
model must learn to reject. Every
pair contributes its global-only view if the matcher may decide it on
global signals (``pairfeatures.globally_decidable``) and, if it is one the
matcher would verify, its verified view too.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matchkit.config import Settings
from matchkit.match.edits import EditSuite, same_picture_at, write_edit
from matchkit.store.gallery import Gallery
from matchkit.match.pairs import PairMatcher
from matchkit.match.pairfeatures import FEATURES, feature_matrix, globally_decidable, level_allows


@dataclass
class PairSet:
    """Feature rows of synthesised pairs with labels, pair ids and split."""

    X: np.ndarray
    y: np.ndarray
    pairs: np.ndarray            # decision unit of each row ("half:a:b")
    held_out: np.ndarray         # row belongs to the held-out half
    photos: dict = field(default_factory=dict)   # half -> number of photos
    images: dict = field(default_factory=dict)   # half -> number of images
    seconds: dict = field(default_factory=dict)  # stage -> seconds


def split_half(path: str | Path) -> str:
    """"fit" or "held" for a photo, stable across runs (hash of its name)."""
    return "held" if hashlib.sha256(Path(path).name.encode()).digest()[0] & 1 else "fit"


def build_pairs(photos: list[Path], suite: EditSuite, settings: Settings = Settings(),
                workdir: str | Path | None = None, progress=None) -> PairSet:
    """Synthesise, match and label pairs for both halves of ``photos``.

    With two or more workers the halves run side by side in two processes
    (one core each): most of a half's time is single-threaded Python.
    """
    from matchkit.features import _pool_context

    halves: dict[str, list[Path]] = {"fit": [], "held": []}
    for p in photos:
        halves[split_half(p)].append(Path(p))
    jobs = [(half, members) for half, members in halves.items() if members]
    out = PairSet(np.zeros((0, len(FEATURES))), np.zeros(0, bool), np.zeros(0, object),
                  np.zeros(0, bool))
    rows, labels, ids, held = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="matchkit-calib-", dir=workdir) as tmp:
        if settings.n_workers() >= 2 and len(jobs) == 2:
            from concurrent.futures import ProcessPoolExecutor
            one = settings.with_(workers=1)
            with ProcessPoolExecutor(2, mp_context=_pool_context()) as pool:
                results = list(pool.map(_half_pairs, [h for h, _ in jobs], [m for _, m in jobs],
                                        [suite] * 2, [one] * 2, [tmp] * 2))
        else:
            results = [_half_pairs(h, m, suite, settings, tmp) for h, m in jobs]
        for (half, members), (X, y, keys, n_images, seconds) in zip(jobs, results):
            rows.append(X)
            labels.append(y)
            ids += [f"{half}:{k}" for k in keys]
            held += [half == "held"] * len(y)
            out.photos[half], out.images[half] = len(members), n_images
            out.seconds.update(seconds)
            if progress:
                progress(f"{half}: {len(members)} photos, {n_images} images, "
                         f"{len(set(keys))} candidate pairs")
    if rows:
        out.X, out.y = np.concatenate(rows), np.concatenate(labels)
    out.pairs = np.array(ids, dtype=object)
    out.held_out = np.array(held, bool)
    return out


def _half_pairs(half: str, members: list[Path], suite: EditSuite, settings: Settings,
                tmp: str) -> tuple[np.ndarray, np.ndarray, list[str], int, dict]:
    """One half's images, matched and labelled (runs in a worker process)."""
    seconds: dict = {}
    t = time.perf_counter()
    folder = Path(tmp) / half
    folder.mkdir()
    files = _make_edits(members, suite, folder, settings.n_workers())
    seconds[f"edits_{half}"] = time.perf_counter() - t
    X, y, keys = _pairs_of(files, settings, Path(tmp) / f"gallery-{half}", seconds, half)
    return X, y, keys, len(files), seconds


def _make_edits(photos: list[Path], suite: EditSuite, folder: Path, workers: int
                ) -> dict[Path, tuple[str, str]]:
    """Original (re-saved copy) and edits of every photo; file -> (source
    photo, the edit's relation to it: empty for the original and copies)."""
    def one(item):
        n, src = item
        stem = f"{n:05d}"
        made = {}
        target = folder / f"{stem}__orig{src.suffix.lower()}"
        target.write_bytes(src.read_bytes())
        made[target] = (str(src), "")
        for edit in suite.choose(src.name):
            try:
                made[write_edit(src, edit, folder, stem)] = (str(src), edit.relation)
            except OSError:
                pass  # an unreadable photo: its copy is skipped by the gallery as well
        return made

    out: dict[Path, tuple[str, str]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for made in pool.map(one, enumerate(photos)):
            out.update(made)
    return out


def _pairs_of(files: dict[Path, tuple[str, str]], settings: Settings, gallery_dir: Path, seconds: dict,
              half: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    t = time.perf_counter()
    with Gallery(gallery_dir, settings) as g:
        added = g.add(sorted(map(str, files)))
        seconds[f"add_{half}"] = time.perf_counter() - t
        t = time.perf_counter()
        source = {i: files[Path(img.path)] for i, img in g.images(added.ids).items()}
        matcher = PairMatcher(g, added.ids, settings)
        try:
            evidence = matcher.evidence
            # The global-only view of every candidate the global signals may
            # decide (as the matcher does), before anything is verified.
            unverified = [copy.copy(ev) for ev in evidence
                          if globally_decidable(ev, matcher.crowd)]
            todo = [ev for ev in evidence if ev.extra.get("verifiable")]
            for ev in todo:
                ev.pending = True
            matcher.verify(todo)
        finally:
            matcher.close()
        # A profile's decision is gated by the relation (pairfeatures.decide):
        # a recolour at --level copies, a shared sticker are refused whatever
        # the score, so the model is fitted on the pairs the gate lets through.
        views = [ev for ev in unverified + todo if level_allows(ev, settings.level)
                 and not _undecidable(ev, source)]
        X = feature_matrix(views, matcher.crowd, matcher.sizes,
                           matcher.picture_fractions(views))
        y = np.array([source[ev.a][0] == source[ev.b][0]
                      and same_picture_at(source[ev.a][1], source[ev.b][1], settings.level)
                      for ev in views], bool)
        keys = [f"{ev.a}:{ev.b}" for ev in views]
        seconds[f"match_{half}"] = time.perf_counter() - t
    return X, y, keys


def _undecidable(ev, source: dict) -> bool:
    """A grey copy against a recolour of its photo: the grey copy has no
    colours to tell the recolour from the original, so the pair is neither a
    duplicate nor a look-alike; it is left out of calibration."""
    (src_a, rel_a), (src_b, rel_b) = source[ev.a], source[ev.b]
    return (src_a == src_b and "variant" in (rel_a, rel_b)
            and any(ev.extra.get("grey", (False, False))))


def draw_pr_curve(precision: np.ndarray, recall: np.ndarray, path: str | Path, *,
                  chosen: tuple[float, float] | None = None, target: float | None = None,
                  title: str = "") -> None:
    """A precision-recall plot as PNG, drawn with Pillow (no matplotlib)."""
    from PIL import Image, ImageDraw

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    W, H, m = 640, 480, 60
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    # Precision below 0.9 is of no interest for a duplicate finder; zoom in.
    lo = 0.9

    def xy(r, p):
        return (m + r * (W - 2 * m), H - m - (p - lo) / (1 - lo) * (H - 2 * m))

    d.rectangle((m, m, W - m, H - m), outline="black")
    for k in range(11):
        r = k / 10
        x, _ = xy(r, lo)
        d.line((x, H - m, x, H - m + 5), fill="black")
        d.text((x - 8, H - m + 8), f"{r:.1f}", fill="black")
        p = lo + (1 - lo) * k / 10
        _, y = xy(0, p)
        d.line((m - 5, y, m, y), fill="black")
        d.text((5, y - 6), f"{p:.3f}", fill="black")
    d.text((W // 2 - 20, H - 25), "recall", fill="black")
    d.text((5, 20), "precision", fill="black")
    if title:
        d.text((m + 80, 20), title, fill="black")
    if target is not None and target >= lo:
        _, y = xy(0, target)
        d.line((m, y, W - m, y), fill=(200, 120, 0))
        d.text((W - m - 120, y - 14), f"target {target}", fill=(200, 120, 0))
    pts = [xy(float(r), float(p)) for r, p in zip(recall, precision) if p >= lo]
    if len(pts) > 1:
        d.line(pts, fill=(0, 70, 200), width=2)
    if chosen is not None:
        x, y = xy(*chosen)
        d.ellipse((x - 5, y - 5, x + 5, y + 5), outline=(200, 0, 0), width=2)
    im.save(path)


@dataclass
class CalibrationRun:
    """What ``calibrate_folder`` made: the profile and numbers for the summary."""

    profile: object  # profiles.Profile
    pairs: PairSet
    seconds: float


def calibrate_folder(paths: list[str | Path], suite: EditSuite, *, name: str,
                     target_precision: float = 0.99, model: str = "boosting",
                     settings: Settings = Settings(),
                     plot: str | Path | None = None, source: str = "",
                     progress=None) -> CalibrationRun:
    """Fit a profile on synthesised pairs of the photos under ``paths``.

    ``model`` is ``PairCalibrator``'s: "boosting" by default, since a linear
    model cannot separate a recolour (same shapes, other hues: a negative at
    --level copies) from a grey or colour-jittered copy (a positive) at high
    precision: on the calib half with the copy-detection suite, held-out
    recall at precision 0.99 was 0.61 (logistic) vs 0.97 (boosting)."""
    from matchkit.match.calibrate import PairCalibrator, precision_recall_curve
    from matchkit.io.load import iter_image_files
    from matchkit.match.profiles import Profile

    start = time.perf_counter()
    photos = sorted((Path(p) for p in iter_image_files(paths)), key=lambda p: str(p))
    if len(photos) < 4:
        raise ValueError(f"calibration needs at least 4 photos, found {len(photos)}")
    data = build_pairs(photos, suite, settings, progress=progress)
    t = time.perf_counter()
    cal = PairCalibrator(model=model, target_precision=target_precision)
    cal.fit(data.X, data.y, pairs=data.pairs, held_out=data.held_out)
    data.seconds["fit"] = time.perf_counter() - t
    if plot:
        s, y = cal.held_out_
        prec, rec, _ = precision_recall_curve(s, y)
        st = cal.stats_
        draw_pr_curve(prec, rec, plot, chosen=(st["recall"], st["precision"]),
                      target=target_precision,
                      title=f"{name}: held-out pairs, {suite.name} edits")
    seconds = time.perf_counter() - start
    profile = Profile(
        name=name, target_precision=target_precision, calibrator=cal,
        data={"source": source or ", ".join(map(str, paths)), "photos": len(photos),
              "fit_photos": data.photos.get("fit", 0),
              "held_out_photos": data.photos.get("held", 0),
              "images": sum(data.images.values()), "edits": suite.name,
              "edits_per_photo": suite.per_photo or len(suite.edits),
              "rows": int(len(data.y)), "seconds": round(seconds, 1),
              "level": settings.level})
    return CalibrationRun(profile, data, seconds)
