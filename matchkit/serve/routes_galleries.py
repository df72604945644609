"""Galleries: which ones this key may use, and what each holds."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from matchkit.jobs.labels import class_counts
from matchkit.serve.auth import Caller, access, caller
from matchkit.serve.state import state
from matchkit.serve.workers import run

router = APIRouter(tags=["galleries"])


def _stats(name: str, g) -> dict:
    return {"name": name, "images": len(g), "labelled": len(g.labelled()),
            "classes": class_counts(g), "models": g.models(), "generation": g.generation,
            "unreadable": len(g.failures())}


@router.get("/galleries", summary="Galleries this key may use, with its scope on each")
async def list_galleries(request: Request, who: Caller = Depends(caller)) -> list[dict]:
    st = state(request)
    out = []
    for name in st.galleries:
        scope = who.scope(name)
        if scope is None:
            continue
        images = await run(st.pools.read(name, lambda e: len(e.gallery)), st.settings.timeout)
        out.append({"name": name, "scope": scope, "images": images})
    return out


@router.get("/galleries/{gallery}", summary="A gallery's statistics")
async def gallery_stats(request: Request, gallery: str,
                        who: Caller = Depends(access("read"))) -> dict:
    st = state(request)
    return await run(st.pools.read(gallery, lambda e: _stats(gallery, e.gallery)),
                     st.settings.timeout)
