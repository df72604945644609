"""Questions about a gallery, asked with an uploaded image: search, check, label.

Each answer has the JSON shape of the CLI command of the same name; the
query's ``path`` is the uploaded file's name as the client sent it (text,
never used on disk), and ``gallery`` is the gallery's name on this server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from matchkit.relation import LEVELS
from matchkit.serve.auth import Caller, access
from matchkit.serve.errors import ApiError
from matchkit.serve.state import state
from matchkit.serve.uploads import discard, read_upload, stage
from matchkit.serve.workers import LABELER_CACHE_IMAGES, run

router = APIRouter(tags=["queries"])

Level = Enum("Level", {name: name for name in LEVELS}, type=str)


class Calibration(str, Enum):
    auto = "auto"
    stored = "stored"
    none = "none"


#: Parameters shared by check and label.
_QUERY = File(..., description="Query image.")
_K = Form(5, ge=1, le=100, description="Most gallery matches (check) or voters (label)")
_LEVEL = Form(None, description="Which relations count: " + ", ".join(LEVELS))
_READ = Depends(access("read"))


def _crop(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None or not text.strip():
        return None
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ApiError(422, f"crop takes four whole numbers x,y,w,h (pixels), not {text!r}")
    return values  # type: ignore[return-value]


def _client_name(file: UploadFile | None) -> str:
    return (file.filename if file is not None and file.filename else "upload")[:255]


async def _ask(request: Request, gallery: str, file: UploadFile | None,
               question: Callable[[Any, Path | None], Any], timeout: float | None = None):
    """Stage the uploaded query (if any), answer ``question(reader_entry,
    staged_path)`` on a reader thread, and delete the staged copy."""
    st = state(request)
    staged = None
    if file is not None:
        data = await read_upload(file, st.settings.max_upload_bytes)
        staged, _ = await asyncio.to_thread(stage, data, st.settings.max_pixels)
    try:
        return await run(st.pools.read(gallery, lambda entry: question(entry, staged)),
                         timeout or st.settings.timeout)
    finally:
        if staged is not None:
            discard(staged)


@router.post("/galleries/{gallery}/search",
             summary="Most similar images to an uploaded image, a crop of it, or a text")
async def search(request: Request, gallery: str,
                 file: UploadFile | None = File(None, description="Query image."),
                 crop: str | None = Form(None, description="x,y,w,h of the image to query by"),
                 text: str | None = Form(None, description="Text query (CLIP-style models)"),
                 where: list[str] = Form([], description="Metadata filters, e.g. year>=2020"),
                 k: int = Form(10, ge=1, le=1000),
                 who: Caller = Depends(access("read"))) -> list[dict]:
    from matchkit.jobs.search import search as run_search

    st = state(request)
    box = _crop(crop)
    if (file is None) == (text is None or not text.strip()):
        raise ApiError(422, "give exactly one query: an image file or a text")
    if box is not None and file is None:
        raise ApiError(422, "a crop needs an image file")

    def read(entry, staged) -> list[dict]:
        g = entry.gallery
        models = list(g.models())
        model = st.embedder(models[0]) if len(models) == 1 else None
        hits = run_search(g, image=staged, crop=box, text=None if file else text,
                          where=[w for w in where if w.strip()], k=k, model=model)
        return [h.to_dict() for h in hits]

    return await _ask(request, gallery, file, read)


@router.post("/galleries/{gallery}/check",
             summary="Is the uploaded image a copy of gallery images? (evidence, relation)")
async def check(request: Request, gallery: str, file: UploadFile = _QUERY, k: int = _K,
                include_all: bool = Form(False, description="Also list near misses"),
                level: Level | None = _LEVEL, who: Caller = _READ) -> dict:
    from matchkit.jobs.check import check as run_check

    name = _client_name(file)

    def read(entry, staged) -> dict:
        report = run_check(entry.gallery, [staged], k=k, include_all=include_all,
                           level=level.value if level else None)
        data = report.to_dict()
        data["gallery"] = gallery
        for item in data["results"] + data["skipped"]:
            item["path"] = name
        return data

    return await _ask(request, gallery, file, read)


@router.post("/galleries/{gallery}/label",
             summary="Label the uploaded image by its nearest labelled examples")
async def label(request: Request, gallery: str, file: UploadFile = _QUERY, k: int = _K,
                target: float = Form(0.99, gt=0.5, lt=1.0),
                calibration: Calibration = Form(Calibration.auto),
                level: Level | None = _LEVEL, who: Caller = _READ) -> dict:
    from matchkit.jobs.classify import Labeler

    st = state(request)
    name = _client_name(file)
    lvl = level.value if level else None

    def read(entry, staged) -> dict:
        start = time.perf_counter()
        g = entry.gallery
        models = list(g.models())
        def fit(g) -> Labeler:
            embedder = st.embedder(models[0]) if len(models) == 1 else None
            return Labeler(k=k, target_accuracy=target, calibration=calibration.value,
                           embedder=embedder, level=lvl,
                           cache_size=LABELER_CACHE_IMAGES).fit(g)

        lab = entry.labeler((k, target, calibration.value, lvl, tuple(models)), fit)
        answers = lab.answers([staged])
        for a in answers:
            a.path = name
        return lab.report(answers, seconds=time.perf_counter() - start)

    return await _ask(request, gallery, file, read, st.settings.label_timeout)
