"""The ``matchkit`` command: a thin layer over the jobs (:mod:`.commands`)."""

from matchkit.cli.commands import main
from matchkit.util.moved import forward as _forward

__all__ = ["main"]
__getattr__ = _forward("matchkit.cli", "matchkit.cli.commands")
