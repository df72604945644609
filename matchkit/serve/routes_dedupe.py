"""Dedupe jobs over HTTP: start, follow, cancel, review, apply, undo (see ``jobs``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from matchkit.relation import LEVELS
from matchkit.serve.auth import Caller, access
from matchkit.serve.errors import ApiError
from matchkit.serve.jobs import Review
from matchkit.serve.state import state

router = APIRouter(tags=["dedupe"])
_JOBS = "/galleries/{gallery}/dedupe"
_JOB = _JOBS + "/{job_id}"
_READ, _WRITE, _ADMIN = (Depends(access(s)) for s in ("read", "write", "admin"))


class DedupeParams(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    level: str | None = Field(None, description="copies, variants or similar",
                              json_schema_extra={"enum": list(LEVELS)})
    prefer: list[str] = Field([], description="Keeper rules: oldest, newest, largest, "
                                              "smallest, format:FMT, path:GLOB")


class ReviewBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    keepers: dict[str, str] = Field({}, description="Cluster index -> the member to keep")
    excluded: list[str] = Field([], description="Members that stay where they are")


class ApplyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    dry_run: bool = False


def _summary(job: dict) -> dict:
    """A job without its (possibly large) report."""
    out = {k: v for k, v in job.items() if k != "report"}
    if job.get("report"):
        out["stats"] = job["report"].get("stats")
    return out


def _jobs(request: Request, gallery: str):
    return state(request).jobs[gallery]


@router.post(_JOBS, status_code=202,
             summary="Start a dedupe job over every image of the gallery")
async def start(request: Request, gallery: str, body: DedupeParams | None = None,
                who: Caller = _WRITE) -> dict:
    params = body or DedupeParams()
    if params.level is not None and params.level not in LEVELS:
        raise ApiError(422, f"level must be one of {', '.join(LEVELS)}")
    from matchkit.match.keeper import parse_preference
    for rule in params.prefer:
        try:
            parse_preference(rule)
        except ValueError as e:
            raise ApiError(422, str(e)) from None
    st = state(request)
    job = _jobs(request, gallery).start(params.model_dump(),
                                        lambda fn: st.pools.write(gallery, fn))
    return _summary(job)


@router.get(_JOBS, summary="Dedupe jobs, newest first")
async def list_jobs(request: Request, gallery: str, who: Caller = _READ) -> list[dict]:
    return [_summary(j) for j in await asyncio.to_thread(_jobs(request, gallery).all)]


@router.get(_JOB, summary="A job's state and review")
async def get_job(request: Request, gallery: str, job_id: str, who: Caller = _READ) -> dict:
    return _summary(_jobs(request, gallery).load(job_id))


@router.get(_JOB + "/result",
            summary="A finished job's report (the JSON of matchkit dedupe), as reviewed")
async def result(request: Request, gallery: str, job_id: str, reviewed: bool = False,
                 who: Caller = _READ) -> dict:
    from matchkit.serve.jobs import reviewed_report
    jobs = _jobs(request, gallery)
    job = jobs.done(job_id)
    return reviewed_report(job["report"], jobs.review_of(job)) if reviewed else job["report"]


@router.delete(_JOB, summary="Cancel a job")
async def cancel(request: Request, gallery: str, job_id: str, who: Caller = _WRITE) -> dict:
    return _summary(_jobs(request, gallery).cancel(job_id))


@router.put(_JOB + "/review",
            summary="Store review decisions: other keepers, excluded members")
async def review(request: Request, gallery: str, job_id: str, body: ReviewBody,
                 who: Caller = _WRITE) -> dict:
    try:
        keepers = {int(k): v for k, v in body.keepers.items()}
    except ValueError:
        raise ApiError(422, "keepers are keyed by cluster index (0, 1, ...)") from None
    job = _jobs(request, gallery).set_review(job_id, Review(keepers, body.excluded))
    return _summary(job)


@router.post(_JOB + "/apply",
             summary="Move the reviewed non-keepers aside (with a manifest for undo)")
async def apply(request: Request, gallery: str, job_id: str, body: ApplyBody | None = None,
                who: Caller = _ADMIN) -> dict:
    dry = bool(body and body.dry_run)
    return await asyncio.to_thread(_jobs(request, gallery).apply, job_id, dry)


@router.post(_JOB + "/undo",
             summary="Put the files an apply moved back")
async def undo(request: Request, gallery: str, job_id: str, who: Caller = _ADMIN) -> dict:
    return await asyncio.to_thread(_jobs(request, gallery).undo, job_id)
