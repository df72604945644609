"""Images of a gallery: add by upload, list, get, change, remove, thumbnail.

An upload is decoded and checked before it is queued, stored under its
content hash, added by the gallery's single writer, given its metadata and
labels, and embedded with the gallery's models; only then is it answered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from matchkit.util.fspath import display
from matchkit.store.gallery import Gallery
from matchkit.serve.auth import Caller, access
from matchkit.serve.errors import ApiError
from matchkit.serve.keys import SERVE_DIR
from matchkit.serve.state import ServerState, state
from matchkit.serve.uploads import discard, is_upload, read_upload, stage, store
from matchkit.serve.workers import run

router = APIRouter(tags=["images"])
#: Image ids are SQLite row ids: positive 64-bit integers.
ImageId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="The image's id")]
THUMBS_DIR = "thumbs"


def image_dict(gallery: str, rec) -> dict:
    """A stored image as JSON, with the URL of its thumbnail."""
    out = asdict(rec)
    out["path"] = display(rec.path)
    out["thumbnail"] = f"/api/galleries/{gallery}/images/{rec.id}/thumbnail"
    return out


def json_field(text: str | None, kind: type, what: str) -> Any:
    """A JSON object or list sent as a form field (None when absent)."""
    if text is None or text == "" or text == "null":
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ApiError(422, f"{what} must be JSON: {e}") from None
    if kind is list and isinstance(value, str):
        value = [value]
    if not isinstance(value, kind):
        raise ApiError(422, f"{what} must be a JSON {'object' if kind is dict else 'list'}")
    if kind is list and not all(isinstance(v, str) and v for v in value):
        raise ApiError(422, f"{what} must be a list of non-empty strings")
    return value


def _get(g: Gallery, image_id: int):
    try:
        return g.get(image_id)
    except KeyError:
        raise ApiError(404, f"no image {image_id} in this gallery") from None


def _add(st: ServerState, name: str, g: Gallery, staged: Path, sha: str,
         meta: dict | None, labels: list | None) -> dict:
    from matchkit.jobs.metadata import add_exif_dates

    embedders = [st.embedder(model) for model in g.models()]  # a missing one fails first
    target = store(g.path, staged, sha)
    report = g.add([target])
    if report.skipped:
        raise ApiError(422, f"not added: {report.skipped[0].reason}")
    image_id = report.ids[0]
    if report.changed:
        add_exif_dates(g, report.changed)
    if meta is not None or labels is not None:
        g.update(image_id, meta=meta, labels=labels)
    # (the writer saves the index files: once for many adds under load)
    embeddings = [g.embed(emb, [image_id], save=False).to_dict() for emb in embedders]
    return {"gallery": name, "added": report.added, "updated": report.updated,
            "unchanged": report.unchanged, "sha256": sha, "embeddings": embeddings,
            "image": image_dict(name, g.get(image_id))}


@router.post("/galleries/{gallery}/images", status_code=201,
             summary="Add an image (multipart upload) with optional metadata and labels")
async def add_image(request: Request, response: Response, gallery: str,
                    file: UploadFile = File(..., description="The image."),
                    meta: str | None = Form(None, description='JSON object, e.g. {"year": 2024}'),
                    labels: str | None = Form(None, description='JSON list, e.g. ["cat"]'),
                    who: Caller = Depends(access("write"))) -> dict:
    st = state(request)
    meta_d = json_field(meta, dict, "meta")
    labels_l = json_field(labels, list, "labels")
    data = await read_upload(file, st.settings.max_upload_bytes)
    staged, sha = await asyncio.to_thread(stage, data, st.settings.max_pixels)
    try:
        out = await run(st.pools.write(
            gallery, lambda g: _add(st, gallery, g, staged, sha, meta_d, labels_l)),
            st.settings.timeout)
    finally:
        discard(staged)
    if not out["added"]:
        response.status_code = 200
    return out


@router.get("/galleries/{gallery}/images", summary="List images (optionally filtered)")
async def list_images(request: Request, gallery: str,
                      where: list[str] = Query([], description="Filters such as year>=2020"),
                      offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                      who: Caller = Depends(access("read"))) -> dict:
    st = state(request)

    def read(entry) -> dict:
        from matchkit.jobs.filters import allowed_ids
        g = entry.gallery
        allowed = allowed_ids(g, [w for w in where if w.strip()])
        ids = g.ids() if allowed is None else [int(i) for i in allowed]
        page = ids[offset:offset + limit]
        rows = g.images(page)
        return {"total": len(ids), "offset": offset,
                "images": [image_dict(gallery, rows[i]) for i in page if i in rows]}

    return await run(st.pools.read(gallery, read), st.settings.timeout)


@router.get("/galleries/{gallery}/images/{image_id}", summary="One image's record")
async def get_image(request: Request, gallery: str, image_id: ImageId,
                    who: Caller = Depends(access("read"))) -> dict:
    st = state(request)
    return await run(st.pools.read(gallery, lambda e: image_dict(gallery, _get(e.gallery, image_id))),
                     st.settings.timeout)


class ImageUpdate(BaseModel):
    """New metadata (merged into the old unless ``replace``) and/or labels."""

    model_config = ConfigDict(strict=True, extra="forbid")

    meta: dict[str, Any] | None = None
    labels: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="Replaces the image's labels.")
    replace: bool = Field(False, description="Replace the metadata instead of merging.")


@router.patch("/galleries/{gallery}/images/{image_id}", summary="Change metadata or labels")
async def update_image(request: Request, gallery: str, image_id: ImageId, body: ImageUpdate,
                       who: Caller = Depends(access("write"))) -> dict:
    st = state(request)

    def write(g: Gallery) -> dict:
        _get(g, image_id)
        rec = g.update(image_id, meta=body.meta, labels=body.labels, replace=body.replace)
        return image_dict(gallery, rec)

    return await run(st.pools.write(gallery, write), st.settings.timeout)


@router.delete("/galleries/{gallery}/images/{image_id}", summary="Remove an image")
async def remove_image(request: Request, gallery: str, image_id: ImageId,
                       who: Caller = Depends(access("write"))) -> dict:
    st = state(request)

    def write(g: Gallery) -> dict:
        rec = _get(g, image_id)
        removed = g.remove([image_id])
        if removed and is_upload(g.path, rec.path):
            Path(rec.path).unlink(missing_ok=True)  # a stored upload, no longer used
        return {"gallery": gallery, "removed": removed, "id": image_id}

    return await run(st.pools.write(gallery, write), st.settings.timeout)


@router.get("/galleries/{gallery}/images/{image_id}/thumbnail",
            summary="A JPEG thumbnail", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}},
                       410: {"description": "The image file can no longer be read"}})
async def thumbnail(request: Request, gallery: str, image_id: ImageId,
                    side: int = Query(200, ge=16, le=1024),
                    who: Caller = Depends(access("read"))):
    from matchkit.report.thumbs import make_thumb
    st = state(request)

    def read(entry) -> Path:
        rec = _get(entry.gallery, image_id)
        folder = entry.gallery.path / SERVE_DIR / THUMBS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        thumb = make_thumb(rec.path, folder, side=side, max_pixels=st.settings.max_pixels)
        if thumb.error:
            raise ApiError(410, f"image {image_id} cannot be shown: {thumb.error}")
        return folder / thumb.name

    path = await run(st.pools.read(gallery, read), st.settings.timeout)
    return FileResponse(path, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})
