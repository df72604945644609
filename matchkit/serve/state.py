"""What the running server knows: its settings, galleries, keys and pools."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from matchkit.config import Settings
from matchkit.serve.jobs import Jobs
from matchkit.serve.keys import KeyStore
from matchkit.serve.limits import RateLimiter
from matchkit.serve.workers import Pools


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of one server (``matchkit serve`` options)."""

    #: Allow requests without a key (only honoured on a loopback host).
    no_auth: bool = False
    #: Largest request body, and so largest upload (bytes).
    max_upload_bytes: int = 25 * 2**20
    #: Largest image accepted (width x height), checked before decoding pixels.
    max_pixels: int = 50_000_000
    #: Requests per second per key on average, and the burst allowed.
    rate: float = 50.0
    burst: int = 100
    #: Seconds a request waits for its work before answering 504.
    timeout: float = 60.0
    #: Seconds for label requests (the first one on a gallery may calibrate).
    label_timeout: float = 300.0
    #: Reader threads (each keeps its own open galleries and indexes).
    readers: int = 4
    #: Origins allowed by CORS (none: CORS stays off).
    cors_origins: tuple[str, ...] = ()
    #: Seconds a writer waits idle before saving indexes and releasing the gallery.
    writer_idle_seconds: float = 1.0


@dataclass
class ServerState:
    settings: ServeSettings
    galleries: dict[str, Path]
    keys: dict[str, KeyStore]
    jobs: dict[str, Jobs]
    pools: Pools
    limiter: RateLimiter
    gallery_settings: Settings = field(default_factory=Settings)
    _embedders: dict = field(default_factory=dict)
    _embed_lock: threading.Lock = field(default_factory=threading.Lock)

    def drain(self) -> None:
        """The server is stopping: queued requests get 503, running dedupe jobs stop."""
        self.pools.drain()
        for jobs in self.jobs.values():
            jobs.interrupt()

    def embedder(self, name: str):
        """A model loaded once per process (its forward passes are thread-safe)."""
        with self._embed_lock:
            if name not in self._embedders:
                from matchkit.embed import load_embedder
                self._embedders[name] = load_embedder(name)
            return self._embedders[name]


def state(request: Request) -> ServerState:
    return request.app.state.matchkit
