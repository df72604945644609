"""Who is asking, and may they: API keys per gallery, scopes, rate limits.

A request names its key as ``Authorization: Bearer <token>`` or
``X-API-Key: <token>``. No key: 401. A key this server does not know: 401.
A key of another gallery, or whose scope is too small: 403. With
``--no-auth`` (loopback hosts only) every caller is an admin, limited by
its address.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from matchkit.serve.errors import ApiError
from matchkit.serve.keys import ApiKey, scope_allows
from matchkit.serve.state import state

_bearer = HTTPBearer(auto_error=False, description="An API key from `matchkit serve keys add`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="The same key, in a header of its own.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass
class Caller:
    """An authenticated request: its key (None without auth) and scope per gallery."""

    key_id: str | None
    scopes: dict[str, str]

    def scope(self, gallery: str) -> str | None:
        return self.scopes.get(gallery)


async def caller(request: Request,
                 bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
                 header: str | None = Depends(_header)) -> Caller:
    """The caller behind a request, after its rate limit (401 without a known key)."""
    st = state(request)
    if st.settings.no_auth:
        st.limiter.take("addr:" + (request.client.host if request.client else "?"))
        return Caller(None, {name: "admin" for name in st.galleries})
    token = bearer.credentials if bearer is not None else header
    if not token:
        raise ApiError(401, "an API key is required (Authorization: Bearer KEY)", _CHALLENGE)
    found: dict[str, ApiKey] = {}
    for name, store in st.keys.items():
        key = store.lookup(token)
        if key is not None:
            found[name] = key
    if not found:
        st.limiter.take("addr:" + (request.client.host if request.client else "?"))
        raise ApiError(401, "unknown API key", _CHALLENGE)
    key_id = next(iter(found.values())).id
    st.limiter.take("key:" + key_id)
    return Caller(key_id, {name: key.scope for name, key in found.items()})


def access(need: str):
    """A dependency: the caller may do ``need`` (read, write, admin) on the
    path's ``gallery`` (404 for a gallery this server does not serve)."""

    async def check(request: Request, gallery: str, who: Caller = Depends(caller)) -> Caller:
        if gallery not in state(request).galleries:
            raise ApiError(404, f"no gallery named {gallery!r} here")
        have = who.scope(gallery)
        if have is None:
            raise ApiError(403, f"this key is not valid for gallery {gallery!r}")
        if not scope_allows(have, need):
            raise ApiError(403, f"this key may {have} gallery {gallery!r}, not {need}")
        return who

    return check
