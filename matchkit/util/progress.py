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


#: How ``dedupe``'s phases (``dedupe(on_progress=)``) are named on the command
#: line, and what they count.
DEDUPE_PHASES = {
    "add": ("extraction", "files"),
    "embed": ("embeddings", "images"),
    "stored": ("stored matches", "steps"),
    "ahead": ("verification", "pairs"),
    "match": ("candidates", "images"),
    "cluster": ("clustering", "distinct images"),
    "keepers": ("keeper pass", "distinct images"),
    "report": ("report", "clusters"),
    "write": ("writing", "files"),
}


class PhaseProgress:
    """A ``progress(phase, done, total)`` callback for the command line: one
    bar per phase on a terminal, else a line ``matchkit: NAME done/total
    UNIT`` when a phase starts, at most every ``every`` seconds while it
    runs, and when it ends. Phase "verify" (pairs verified, told while
    clustering asks for them) is shown with the phase it happens in.
    ``names``: phase -> (name, unit); unknown phases show as they are."""

    def __init__(self, names: dict[str, tuple[str, str]] = DEDUPE_PHASES, *,
                 stream=None, every: float = 2.0, terminal: bool | None = None):
        self.names = names
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.phase: str | None = None
        self.done = self.total = 0
        self.verified: tuple[int, int] | None = None
        self.bar = None
        self.passes = 0
        self.shown: tuple | None = None
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        import time

        if phase == "verify":
            self.verified = (done, max(done, total))
        else:
            if phase != self.phase or (phase == "keepers" and done < self.done):
                self.close()
                self.phase, self.total = phase, total
                if phase == "keepers":
                    self.passes += 1
                self._open()
            self.done, self.total = done, max(total, done)
        if self.bar is not None:
            if self.bar.total != self.total:
                self.bar.total = self.total
            self.bar.n = self.done
            if self.verified:
                self.bar.set_postfix_str(self._verified(), refresh=False)
            self.bar.refresh()  # (tqdm limits its own redraws)
        elif self.phase is not None and time.monotonic() - self.last >= self.every:
            self._line()

    def _name(self) -> tuple[str, str]:
        name, unit = self.names.get(self.phase, (self.phase, ""))
        if self.phase == "keepers":
            name = f"{name} {self.passes + 1}"
        return name, unit

    def _verified(self) -> str:
        done, total = self.verified
        return f"{done}/{total} pairs verified"

    def _open(self) -> None:
        self.shown, self.last, self.verified = None, 0.0, None
        if self.terminal and self.total:
            import tqdm
            tqdm.tqdm.monitor_interval = 0  # no monitor thread: worker processes fork safely
            name, unit = self._name()
            self.bar = tqdm.tqdm(total=self.total, unit=f" {unit}" if unit else "it", desc=name,
                                 file=self.stream, leave=False, dynamic_ncols=True,
                                 mininterval=0.5)

    def _line(self) -> None:
        import time

        name, unit = self._name()
        state = (self.phase, self.done, self.total, self.verified)
        if state == self.shown:
            return
        text = f"matchkit: {name} {self.done}/{self.total}" + (f" {unit}" if unit else "")
        if self.verified:
            text += f", {self._verified()}"
        print(text, file=self.stream, flush=True)
        self.shown, self.last = state, time.monotonic()

    def close(self) -> None:
        """End the current phase (its last count shown)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            name, unit = self._name()
            text = f"matchkit: {name} {self.done}/{self.total}" + (f" {unit}" if unit else "")
            if self.verified:
                text += f", {self._verified()}"
            print(text, file=self.stream, flush=True)
        elif self.phase is not None:
            self._line()
        self.phase = None
