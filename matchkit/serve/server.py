"""Running the app under uvicorn, and stopping it without waiting for queued work.

uvicorn's graceful stop (SIGTERM, or Ctrl-C) waits for every open request,
and a request waits for its job: under load that meant finishing every read
queued behind the reader threads before exiting. Here the stop signal first
drains the server (``ServerState.drain``): queued reads and writes are
cancelled and their requests answered 503 at once, new ones are refused with
503, running dedupe jobs stop at their next checkpoint ("interrupted"), and
only the requests already running are waited for (``GRACE_SECONDS`` at most).
"""

from __future__ import annotations

import threading

from fastapi import FastAPI

#: Longest a stop waits for the requests still running.
GRACE_SECONDS = 30


def serve_app(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` (from ``create_app``) until SIGTERM or SIGINT."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            start_drain(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    Server(config).run()


def start_drain(app) -> threading.Thread:
    """Drain the server (``ServerState.drain``) on a thread of its own.

    Why not in the signal handler itself: Python runs a signal handler in
    the main thread between two of its bytecodes, and the main thread runs
    the event loop, which takes the same locks as ``drain`` (queuing a
    write takes its writer queue's lock). A SIGTERM arriving while the loop
    held one deadlocked the server: it never exited (seen once in CI, eight
    clients uploading)."""
    t = threading.Thread(target=app.state.matchkit.drain, name="matchkit-drain", daemon=True)
    t.start()
    return t
