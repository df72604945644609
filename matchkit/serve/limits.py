"""Limits that keep one client from hurting the others or the machine.

* :class:`BodyLimit`: an ASGI middleware refusing request bodies over a byte
  limit with 413, from ``Content-Length`` or while a chunked body streams in
  (so a huge upload is never spooled to disk whole).
* :class:`RateLimiter`: a token bucket per API key (or client address).
* :func:`check_image`: an upload must decode, within a pixel limit, before
  any gallery sees it.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from starlette.exceptions import HTTPException

from matchkit.serve.errors import ApiError, error_response


class _TooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing passes
    it on and the JSON error handler answers 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is over the limit of {max_bytes} bytes",
                         {"Connection": "close"})


class BodyLimit:
    """Refuse bodies larger than ``max_bytes`` with a JSON 413."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                return await self._refuse(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"request body is over the limit of {self.max_bytes} "
                                       "bytes", {"Connection": "close"})
        await response(scope, receive, send)


class RateLimiter:
    """Token buckets: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        """Spend one token of ``who``, or raise a 429 ApiError with Retry-After."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise ApiError(429, f"rate limit of {self.rate:g} requests/s exceeded; "
                                    f"retry in {wait} s", {"Retry-After": str(wait)})
            self._buckets[who] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:  # forget idle clients
                cutoff = now - self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > cutoff}


def check_image(path: str | Path, max_pixels: int) -> tuple[int, int, str]:
    """(width, height, format) of an uploaded file, or an ApiError: 413 over
    the pixel limit, 422 for anything that is not a readable image."""
    from matchkit.io.load import ImageLoadError, load_image

    try:
        loaded = load_image(path, max_side=64, max_pixels=max_pixels)
    except ImageLoadError as e:
        if "decompression bomb" in e.reason:
            raise ApiError(413, f"image is over the limit of {max_pixels} pixels") from None
        raise ApiError(422, f"not a usable image: {e.reason}") from None
    return loaded.width, loaded.height, loaded.format or ""
