"""Progress bars on stderr, the same everywhere in the CLI.

A bar is only drawn when asked for and stderr is a terminal (logs and pipes
stay clean); callers get ``None`` otherwise and skip their updates.
"""

from __future__ import annotations

import sys
from typing import Callable


def progress_bar(total: int, enabled: bool, what: str | None = None):
    """A tqdm bar on stderr (``what`` as its label), or None when not wanted,
    empty, or stderr is not a terminal."""
    if not enabled or not total or not sys.stderr.isatty():
        return None
    import tqdm
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: worker processes can fork safely
    return tqdm.tqdm(total=total, unit="img", desc=what, file=sys.stderr, leave=False,
                     dynamic_ncols=True)


class StageBars:
    """A ``progress(stage, done, total)`` callback drawn as one bar per stage.

    ``say`` (a line on stderr) is told each stage as it starts, so a run
    without a terminal still shows what it is doing; with a terminal the
    stage's bar follows the line.
    """

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.stage: str | None = None
        self.bar = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            self.say(f"{stage} ({total})")
            self.bar = progress_bar(total, True, stage)
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
