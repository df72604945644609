"""The FastAPI application: galleries, images, search, check and label over HTTP.

``create_app`` wires the pieces: JSON errors (``errors``), keys and scopes
(``auth``), body, pixel and rate limits (``limits``), content-addressed
uploads (``uploads``), one writer and many readers per gallery
(``workers``) and the routes (``routes_*``), which call the same Python API
as the CLI and answer with the same JSON.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from matchkit.util.version import __version__
from matchkit.config import Settings
from matchkit.store.gallery import DB_NAME, GalleryError
from matchkit.serve import errors, routes_dedupe, routes_galleries, routes_images, routes_query
from matchkit.serve.jobs import Jobs
from matchkit.serve.keys import KeyStore
from matchkit.serve.limits import BodyLimit, RateLimiter
from matchkit.serve.state import ServeSettings, ServerState
from matchkit.serve.workers import Pools

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def gallery_names(galleries) -> dict[str, Path]:
    """Names for the served galleries: a dict as given, else each folder's
    name (made unique with -2, -3...). Every folder must hold a gallery."""
    if isinstance(galleries, dict):
        named = {str(k): Path(v) for k, v in galleries.items()}
    else:
        named = {}
        for path in galleries:
            base = Path(path).resolve().name or "gallery"
            name, n = base, 1
            while name in named:
                n += 1
                name = f"{base}-{n}"
            named[name] = Path(path)
    for name, path in named.items():
        if not (path / DB_NAME).is_file():
            raise GalleryError(f"no gallery at {path} (missing {DB_NAME}); make one with "
                               "`matchkit index DIR --gallery PATH`")
        if not name or "/" in name:
            raise GalleryError(f"unusable gallery name {name!r}")
    return {name: path.resolve() for name, path in named.items()}


def create_app(galleries, settings: ServeSettings = ServeSettings(), *,
               gallery_settings: Settings | None = None, host: str | None = None) -> FastAPI:
    """A FastAPI app serving ``galleries`` (paths, or a dict name -> path).

    ``host`` is where it will listen: ``settings.no_auth`` is refused unless
    it is a loopback address (``None``: in-process use, e.g. tests).
    """
    if settings.no_auth and host is not None and host not in LOOPBACK:
        raise ValueError(f"--no-auth is only allowed on a loopback host, not {host}")
    named = gallery_names(galleries)
    gs = gallery_settings or Settings()
    pools = Pools(named, gs, settings.readers, settings.writer_idle_seconds)
    st = ServerState(settings=settings, galleries=named,
                     keys={name: KeyStore(path) for name, path in named.items()},
                     jobs={name: Jobs(path) for name, path in named.items()},
                     pools=pools, limiter=RateLimiter(settings.rate, settings.burst),
                     gallery_settings=gs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pools.warm()  # every reader opens every gallery now, not under load
        yield
        pools.close()

    app = FastAPI(title="matchkit", version=__version__, lifespan=lifespan,
                  description="Near-duplicate search, copy checks and labels over image "
                              "galleries. Every error is JSON: "
                              '{"error": {"status": N, "message": "..."}}.',
                  openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
                  responses={code: {"description": why, "content": {
                      "application/json": {"schema": errors.ERROR_SCHEMA}}}
                      for code, why in ((400, "Malformed request body"),
                                        (401, "No or unknown API key"),
                                        (403, "Key not valid for this gallery or scope"),
                                        (404, "No such gallery or image"),
                                        (409, "The gallery cannot answer this (e.g. no "
                                              "embeddings for a search)"),
                                        (413, "Upload too large"),
                                        (422, "Invalid request"),
                                        (429, "Rate limit exceeded"),
                                        (503, "The server is shutting down"),
                                        (504, "Timed out"))})
    app.state.matchkit = st
    errors.install(app)

    @app.get("/api/health", tags=["server"], summary="Liveness (no key needed)")
    async def health() -> dict:
        return {"ok": True, "version": __version__}

    for module in (routes_galleries, routes_images, routes_query, routes_dedupe):
        app.include_router(module.router, prefix="/api")
    _web_app(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 64 * 1024)
    app.openapi = lambda: _openapi(app, list(named))
    return app


#: Form fields sent as JSON (an object or a list) in a multipart upload.
_JSON_FIELDS = {"meta": {"type": "object", "additionalProperties": True},
                "labels": {"type": "array", "items": {"type": "string", "minLength": 1}}}


def _multipart_fields(schema: dict) -> None:
    """Describe multipart bodies as clients send them: an optional field is
    left out, never "null" (no anyOf with null), and ``meta``/``labels`` are
    JSON parts (OpenAPI ``encoding``), which is how the server parses them."""
    bodies = schema.get("components", {}).get("schemas", {})
    for ops in schema["paths"].values():
        for op in ops.values():
            content = op.get("requestBody", {}).get("content", {})
            form = content.get("multipart/form-data")
            if not form:
                continue
            ref = form["schema"].get("$ref", "").rsplit("/", 1)[-1]
            props = bodies.get(ref, {}).get("properties", {})
            for name, prop in props.items():
                options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
                if len(options) == 1:
                    prop.pop("anyOf")
                    prop.update(options[0])
                if name in _JSON_FIELDS:
                    for key in ("type", "format", "contentMediaType"):
                        prop.pop(key, None)
                    prop.update(_JSON_FIELDS[name])
                    form.setdefault("encoding", {})[name] = {"contentType": "application/json"}


STATIC = Path(__file__).with_name("static")
#: Where the vendored swagger-ui-dist files (``static/swagger-ui``) are served.
SWAGGER_UI = "/app/swagger-ui"


def _web_app(app: FastAPI) -> None:
    """The web app: static files (no CDN), talking to the API with the user's key."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/app", StaticFiles(directory=STATIC), name="app")

    @app.get("/api/docs", include_in_schema=False)
    async def docs():
        """Swagger UI from the package (``make swagger-ui``), not a CDN: works offline."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API",
            swagger_js_url=SWAGGER_UI + "/swagger-ui-bundle.js",
            swagger_css_url=SWAGGER_UI + "/swagger-ui.css",
            swagger_favicon_url=SWAGGER_UI + "/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})  # no badge from swagger.io

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                       "style-src 'self'; script-src 'self'"})


#: OpenAPI links: (operation that makes something, its responses, the value's
#: place in the body, the path parameter it fills, operations that take it).
_G = "/api/galleries/{gallery}"
_LINKS = [
    ((_G + "/images", "post"), ("200", "201"), "/image/id", "image_id",
     [(_G + "/images/{image_id}", m) for m in ("get", "patch", "delete")]
     + [(_G + "/images/{image_id}/thumbnail", "get")]),
    ((_G + "/dedupe", "post"), ("202",), "/id", "job_id",
     [(_G + "/dedupe/{job_id}", m) for m in ("get", "delete")]
     + [(_G + "/dedupe/{job_id}/" + what, m) for what, m in
        (("result", "get"), ("review", "put"), ("apply", "post"), ("undo", "post"))]),
]


def _openapi(app: FastAPI, names: list[str]) -> dict:
    """The generated schema, plus what a client (or a fuzzer) needs to reach real
    data: the served gallery names as an enum, and links from what a POST made."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    for ops in schema["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] == "gallery" and param["in"] == "path":
                    param["schema"] = {"type": "string", "enum": names, "title": "Gallery"}
    _multipart_fields(schema)
    for (path, method), codes, pointer, param, targets in _LINKS:
        links = {}
        for target, target_method in targets:
            op_id = schema["paths"][target][target_method]["operationId"]
            links[op_id] = {"operationId": op_id, "parameters": {
                "gallery": "$request.path.gallery", param: f"$response.body#{pointer}"}}
        responses = schema["paths"][path][method]["responses"]
        for code in codes:
            responses.setdefault(code, {"description": "Created"})["links"] = links
    app.openapi_schema = schema
    return schema
