"""Calibration of the ``Labeler``: the open-set threshold and the cosine maps
fitted on known queries (the user's, or edits of gallery images made here),
and their storage with the gallery as plain JSON (``labeler.json``).

Split from ``jobs/classify.py``: ``LabelerCalibration`` is mixed into ``Labeler``
(its ``-- calibration --`` section); it asks the neighbour search
(``classify_neighbours``) for the queries' examples and fits with
``match.calibrate.fit_open_set``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from matchkit.util.fs import atomic_write_bytes
from matchkit.features import extract_many
from matchkit.io.load import ImageLoadError, load_image
from matchkit.jobs.labels import UNKNOWN
from matchkit.match.calibrate import fit_open_set
from matchkit.jobs.classify_answers import Support, _support_order, raw_confidence, vote

CALIBRATION_FILE = "labeler.json"


# -- synthetic calibration queries --------------------------------------------

def synthetic_edit(image, kind: str, rng: random.Random):
    """An edited copy of a PIL image, as people edit photos they pass on.

    Kinds: crop, rotate, scale, blur_jpeg (applied when saving), jitter,
    pad_grey, text, flip. Only Pillow is used, so calibration needs nothing
    beyond matchkit's own dependencies.
    """
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

    im = image.convert("RGB")
    w, h = im.size
    if kind == "crop":
        f = rng.uniform(0.6, 0.85)
        cw, ch = max(8, int(w * f)), max(8, int(h * f))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch))
    if kind == "rotate":
        fill = tuple(rng.randrange(256) for _ in range(3))
        return im.rotate(rng.choice([-1, 1]) * rng.uniform(5, 15), expand=True,
                         resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if kind == "scale":
        f = rng.uniform(0.25, 0.5)
        return im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)
    if kind == "blur_jpeg":
        return im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
    if kind == "jitter":
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(im).enhance(rng.uniform(0.5, 1.5))
    if kind == "pad_grey":
        px, py = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.1, 0.3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        return ImageOps.grayscale(ImageOps.expand(im, (px, py), fill=fill)).convert("RGB")
    if kind == "text":
        draw = ImageDraw.Draw(im)
        size = max(10, int(h * rng.uniform(0.08, 0.15)))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            font = ImageFont.load_default()
        text = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789 ") for _ in range(12))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.text((int(w * rng.uniform(0, 0.4)), int(h * rng.uniform(0.1, 0.7))), text,
                  fill=colour, font=font)
        return im
    if kind == "flip":
        return ImageOps.mirror(im)
    raise ValueError(f"unknown edit {kind!r}")


#: What a synthetic calibration reports to ``Labeler.progress``, in order.
CALIBRATION_STAGES = ("making calibration queries", "reading calibration queries",
                      "matching calibration queries")
#: Records matched per call during calibration (progress granularity only).
CALIBRATION_CHUNK = 25

EDITS = ("crop", "rotate", "scale", "blur_jpeg", "jitter", "pad_grey", "text", "flip")


class LabelerCalibration:
    """Calibration of a fitted ``classify.Labeler`` (mixed into it)."""

    # -- calibration -------------------------------------------------------
    def calibrate(self, X, y: Sequence[str]) -> "LabelerCalibration":
        """Fit the open-set calibration on queries whose answers are known.

        ``y[i]`` is query i's class, or ``"unknown"`` when the gallery has no
        example of it. The queries must not be the data you then report
        accuracy on.
        """
        self._check_fitted()
        if len(y) != (len(X) if not isinstance(X, (str, os.PathLike)) else 1):
            raise ValueError("y needs one answer per query")
        _, sups, errors = self._supports(X, self._wide_k())
        keep = [i for i, e in enumerate(errors) if e is None]
        truth = [set() if y[i] == UNKNOWN else {y[i]} for i in keep]
        self._fit_calibration([sups[i] for i in keep], truth, "queries")
        return self

    def calibrate_synthetic(self, samples: int | None = None) -> "LabelerCalibration":
        """Fit the calibration from edited copies of gallery images.

        For up to ``samples`` (default ``calibration_samples``) labelled
        images, ``edits_per_image`` edited copies (crop, rotation, scale,
        blur, colour, padding, text, mirror) are queried twice: with the
        gallery as it is (known: the answer should be the image's class) and
        with every example of that class left out (unknown: any accepted
        answer is wrong).
        """
        self._check_fitted()
        if self.gallery_ is None or not self.image_labels_:
            raise ValueError("synthetic calibration needs a gallery with labelled images")
        rng = random.Random(self.random_state)
        ids = sorted(self.image_labels_)
        ids = rng.sample(ids, min(len(ids), samples or self.calibration_samples))
        paths = {i: img.path for i, img in self.gallery_.images(ids).items()}
        tell = self.progress or (lambda stage, done, total: None)
        with tempfile.TemporaryDirectory(prefix="matchkit-calib-") as tmp:
            files, sources = [], []
            tell(CALIBRATION_STAGES[0], 0, len(ids))
            for n, i in enumerate(ids, 1):
                try:
                    image = load_image(paths[i], max_side=1024,
                                       max_pixels=self.settings_.max_pixels).image
                except ImageLoadError:
                    continue
                finally:
                    tell(CALIBRATION_STAGES[0], n, len(ids))
                for kind in rng.sample(EDITS, min(len(EDITS), self.edits_per_image)):
                    edited = synthetic_edit(image, kind, rng)
                    out = Path(tmp) / f"{i}-{kind}.jpg"
                    quality = rng.randint(20, 35) if kind == "blur_jpeg" else 90
                    edited.save(out, quality=quality)
                    files.append(out)
                    sources.append(i)
            read = [0]

            def one_read() -> None:
                read[0] += 1
                tell(CALIBRATION_STAGES[1], read[0], len(files))

            records, src = [], []
            tell(CALIBRATION_STAGES[1], 0, len(files))
            for (path, rec), i in zip(extract_many(files, self.settings_, on_done=one_read),
                                      sources):
                if not isinstance(rec, ImageLoadError):
                    records.append(rec)
                    src.append(i)
            if not records:
                raise ValueError("no calibration query could be made from the gallery")
            # Each query is asked twice: with the gallery as it is (known) and
            # with its class left out (unknown). Asked in chunks only to report
            # progress; a chunk keeps both askings of a record together.
            known, unknown = [], []
            tell(CALIBRATION_STAGES[2], 0, len(records))
            for start in range(0, len(records), CALIBRATION_CHUNK):
                chunk = records[start:start + CALIBRATION_CHUNK]
                excl = [set(self.image_labels_[i]) for i in src[start:start + CALIBRATION_CHUNK]]
                sups = self._record_supports(chunk + chunk, self._wide_k(),
                                             [set() for _ in chunk] + excl)
                known += sups[:len(chunk)]
                unknown += sups[len(chunk):]
                tell(CALIBRATION_STAGES[2], start + len(chunk), len(records))
            sups = known + unknown
        truth = [set(self.image_labels_[i]) for i in src] + [set() for _ in src]
        self._fit_calibration(sups, truth, "synthetic")
        return self

    def _wide_k(self) -> int:
        """Neighbours gathered for calibration queries: more than ``k``, so the
        cosine maps see negatives too and examples can be re-ranked."""
        return max(4 * self.k, self.k + 10)

    def _fit_calibration(self, supports: list[list[Support]], truth: list[set],
                         source: str) -> None:
        """Cosine maps from the known queries' neighbours, then the isotonic
        confidence and the threshold from every query's raw confidence."""
        maps = {}
        for kind in ("image", "text"):
            pairs = [(s.cosine, bool(t.intersection(s.labels)))
                     for sups, t in zip(supports, truth) if t
                     for s in sups if s.cosine is not None and (s.kind == "text") == (kind == "text")]
            same = sum(p for _, p in pairs)
            if same >= 2 and len(pairs) - same >= 2:
                from sklearn.isotonic import IsotonicRegression

                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                iso.fit([c for c, _ in pairs], [float(p) for _, p in pairs])
                maps[kind] = {"x": [float(v) for v in iso.X_thresholds_],
                              "y": [float(v) for v in iso.y_thresholds_]}
        self.calibration_ = {"cosine_maps": maps}  # so _score uses the new maps
        raw, correct = [], []
        for sups, t in zip(supports, truth):
            for s in sups:
                s.score = self._score(s)
            ranked = vote(sorted(sups, key=_support_order)[: self.k], self.sharpness)
            raw.append(raw_confidence(ranked))
            correct.append(bool(t) and bool(ranked) and ranked[0][0] in t)
        cal = fit_open_set(raw, correct, self.target_accuracy)
        cal["cosine_maps"] = maps
        self._set_calibration(cal, source, known=sum(bool(t) for t in truth),
                              unknown=sum(not t for t in truth))

    def _set_calibration(self, cal: dict, source: str, known: int, unknown: int) -> None:
        cal.update(source=source, known_queries=known, unknown_queries=unknown,
                   labelled_images=len(self.image_labels_), profile=self.profile_,
                   fitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.calibration_ = cal
        self.threshold_ = cal["threshold"]

    def save_calibration(self, path: str | os.PathLike | None = None) -> Path:
        """Write the calibration as JSON (atomically): to ``path``, or into the
        gallery folder next to the gallery's own files, keyed by parameters."""
        if self.calibration_ is None:
            raise ValueError("nothing to save: the labeler is not calibrated")
        if path is not None:
            atomic_write_bytes(path, json.dumps(self.calibration_, indent=1).encode())
            return Path(path)
        if self.gallery_ is None:
            raise ValueError("no gallery to store the calibration with; give a path")
        file = Path(self.gallery_.path) / CALIBRATION_FILE
        store = _read_store(file)
        store.setdefault("profiles", {})[_profile_key(self.profile_)] = self.calibration_
        atomic_write_bytes(file, json.dumps(store, indent=1).encode())
        return file

    def _profile(self) -> dict:
        """Everything that changes what raw confidences mean."""
        s = asdict(self.settings_)
        s.pop("workers", None)
        if not s.get("signals"):  # (the default, as before signals existed)
            s.pop("signals", None)
        emb = self.embedder_
        return {"k": self.k, "sharpness": self.sharpness, "zoom": self.zoom,
                "target_accuracy": self.target_accuracy,
                "embedder": getattr(emb, "name", None) if emb is not None else None,
                "texts": self.texts if isinstance(self.texts, str) else (
                    None if self.texts is None else "names"),
                "templates": (None if self.texts is None or self.templates is None
                              else list(self.templates)),
                "settings": s,
                "pair_profile": (None if self.profile is None
                                 else _profile_key(self.profile.payload()))}

    def _load_or_fit_calibration(self) -> None:
        mode = self.calibration
        self.threshold_ = None
        if isinstance(mode, dict):
            self._use(dict(mode))
            return
        if isinstance(mode, os.PathLike) or (isinstance(mode, str) and mode not in
                                              ("auto", "stored", "none")):
            try:
                self._use(json.loads(Path(mode).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read calibration {mode}: {e}") from None
            return
        if mode == "none":
            return
        if self.gallery_ is not None:
            stored = _read_store(Path(self.gallery_.path) / CALIBRATION_FILE)
            cal = stored.get("profiles", {}).get(_profile_key(self.profile_))
            stale = cal is not None and mode == "auto" and (
                cal.get("source") == "synthetic"
                and cal.get("labelled_images", 0) < self.calibration_samples
                and len(self.image_labels_) >= 2 * cal.get("labelled_images", 0))
            if cal is not None and not stale:
                self._use(cal)
                return
        if mode == "auto" and self.gallery_ is not None and self.image_labels_:
            self.calibrate_synthetic()
            self.calibrated_now_ = True
            try:
                self.save_calibration()
            except OSError as e:
                warnings.warn(f"could not store the calibration with the gallery: {e}")

    def _use(self, cal: dict) -> None:
        if not {"x", "y", "threshold"} <= set(cal):
            raise ValueError("calibration data needs 'x', 'y' and 'threshold'")
        self.calibration_ = cal
        self.threshold_ = cal["threshold"]


def _profile_key(profile: dict) -> str:
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:16]


def _read_store(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        warnings.warn(f"ignoring unreadable calibration file {file}: {e}")
        return {}
