"""Every error the API returns is JSON with its status code, never a traceback.

``{"error": {"status": 404, "message": "..."}}``: handlers turn our own
:class:`ApiError`, FastAPI's validation errors, Starlette's HTTP errors and
the library's one-line errors (bad filters, crops, galleries) into that
shape; anything unexpected becomes a 500 whose body says only that, while the
traceback goes to the server's log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("matchkit.serve")


class ApiError(Exception):
    """An answer other than success: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.headers = headers


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}},
                        status_code=status, headers=headers)


#: Error models for the OpenAPI schema (every route can answer these).
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "status": {"type": "integer"}, "message": {"type": "string"}},
        "required": ["status", "message"]}},
    "required": ["error"],
}


def library_error(e: BaseException) -> ApiError | None:
    """The library's one-line errors about a request as an ApiError (None: not one)."""
    from matchkit.jobs.check import CheckError
    from matchkit.embed import EmbedderError
    from matchkit.jobs.filters import FilterError
    from matchkit.store.gallery import GalleryError
    from matchkit.jobs.labels import LabelError
    from matchkit.jobs.search import SearchError
    from matchkit.index.vectors import VectorIndexError

    if isinstance(e, (SearchError, FilterError, CheckError, LabelError)):
        return ApiError(422, str(e))
    if isinstance(e, (GalleryError, EmbedderError, VectorIndexError)):
        return ApiError(409, str(e))  # the gallery cannot answer (no embeddings, wrong model)
    return None


def _allowed(request: Request) -> list[str]:
    """Methods of all routes whose path matches the request (for ``Allow``)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # every method of the path, not the first route's
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        return error_response(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception):
        known = library_error(exc)
        if known is not None:
            return error_response(known.status, known.message)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error (see the server log)")
