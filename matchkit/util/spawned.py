"""Refusing to run inside a worker process that is still importing the
caller's script.

Why: matchkit's worker processes start from a forkserver (or by spawn), and
each imports the script that started them. A script that calls matchkit at
its top level, without ``if __name__ == "__main__":``, so runs matchkit again
inside every worker as it starts: with a gallery the worker then waits for
the gallery's writer lock, which its own parent holds, and the run hangs;
without one every worker dies and each file was reported as a decoder
crash. Refusing at once turns both into one clear error.
"""

from __future__ import annotations

import multiprocessing

#: What to do about it (the worker's error, and the parent's when its
#: workers die before they are ready).
GUARD_ADVICE = ("a script that calls matchkit must do so under "
                "`if __name__ == \"__main__\":` (worker processes import the script "
                "again as they start; see Python's multiprocessing docs)")


class WorkerStartError(RuntimeError):
    """Worker processes could not start (see :data:`GUARD_ADVICE`)."""


def refuse_while_starting() -> None:
    """Raise :class:`WorkerStartError` when called while this process is a
    worker still importing its parent's script (multiprocessing's own test
    for it: ``_inheriting``); do nothing otherwise, also in a worker that
    has started and calls matchkit on purpose."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise WorkerStartError(f"matchkit was called while a worker process started: "
                               f"{GUARD_ADVICE}")
