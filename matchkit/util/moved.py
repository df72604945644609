"""Old import paths of modules that moved into subpackages, kept for one release.

``import matchkit.gallery`` (say) still works: a finder at the end of
``sys.meta_path`` answers the old name with a module that forwards every
attribute to the new one (``matchkit.store.gallery``) and warns once with a
``DeprecationWarning``. Old names that are now packages (``matchkit.io``,
``matchkit.index``, ``matchkit.match``, ``matchkit.report``,
``matchkit.distributed``, ``matchkit.cli``) forward their old attributes
from the package itself (:func:`forward`).

Nothing inside matchkit imports an old path (``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module -> new module.
MOVED: dict[str, str] = {
    "matchkit._arrays": "matchkit.util.arrays",
    "matchkit._cvthreads": "matchkit.util.cvthreads",
    "matchkit._fs": "matchkit.util.fs",
    "matchkit._gc": "matchkit.util.gc",
    "matchkit._json": "matchkit.util.jsonfmt",
    "matchkit._lock": "matchkit.util.lock",
    "matchkit._memory": "matchkit.util.memory",
    "matchkit.burst": "matchkit.match.burst",
    "matchkit.calibrate": "matchkit.match.calibrate",
    "matchkit.candidates": "matchkit.match.candidates",
    "matchkit.check": "matchkit.jobs.check",
    "matchkit.checkpoint": "matchkit.util.checkpoint",
    "matchkit.classify": "matchkit.jobs.classify",
    "matchkit.cluster": "matchkit.match.cluster",
    "matchkit.colour": "matchkit.signals.colour",
    "matchkit.dedupe": "matchkit.jobs.dedupe",
    "matchkit.edits": "matchkit.match.edits",
    "matchkit.evidence_draw": "matchkit.report.evidence",
    "matchkit.filters": "matchkit.jobs.filters",
    "matchkit.framed": "matchkit.match.framed",
    "matchkit.fspath": "matchkit.util.fspath",
    "matchkit.gallery": "matchkit.store.gallery",
    "matchkit.hashing": "matchkit.signals.hashing",
    "matchkit.html_report": "matchkit.report.html",
    "matchkit.incremental": "matchkit.match.incremental",
    "matchkit.index_cache": "matchkit.index.cache",
    "matchkit.ivf": "matchkit.index.ivf",
    "matchkit.jpeg_quality": "matchkit.io.jpeg_quality",
    "matchkit.keeper": "matchkit.match.keeper",
    "matchkit.labels": "matchkit.jobs.labels",
    "matchkit.linequeue": "matchkit.util.linequeue",
    "matchkit.local": "matchkit.signals.local",
    "matchkit.metadata": "matchkit.jobs.metadata",
    "matchkit.moves": "matchkit.io.moves",
    "matchkit.pairfeatures": "matchkit.match.pairfeatures",
    "matchkit.pairsets": "matchkit.match.pairsets",
    "matchkit.picture": "matchkit.match.picture",
    "matchkit.picture_index": "matchkit.index.pictures",
    "matchkit.profiles": "matchkit.match.profiles",
    "matchkit.progress": "matchkit.util.progress",
    "matchkit.query": "matchkit.match.query",
    "matchkit.result_pages": "matchkit.report.pages",
    "matchkit.review": "matchkit.report.review",
    "matchkit.search": "matchkit.jobs.search",
    "matchkit.shards": "matchkit.store.shards",
    "matchkit.stored": "matchkit.store.stored",
    "matchkit.stored_text": "matchkit.store.stored_text",
    "matchkit.template": "matchkit.match.template",
    "matchkit.thumbcheck": "matchkit.signals.thumbcheck",
    "matchkit.thumbmatch": "matchkit.signals.thumbmatch",
    "matchkit.thumbs": "matchkit.report.thumbs",
    "matchkit.vectors": "matchkit.index.vectors",
}


class _Forward(types.ModuleType):
    """An old module name: every attribute read is the new module's."""

    def __init__(self, name: str, target: str):
        super().__init__(name, f"Moved to {target}.")
        self.__dict__["_target"] = target

    def _module(self) -> types.ModuleType:
        return importlib.import_module(self.__dict__["_target"])

    def __getattr__(self, attr: str):
        return getattr(self._module(), attr)

    def __dir__(self):
        return dir(self._module())

    def __call__(self, *args, **kwargs):
        """``matchkit.dedupe(...)`` after ``import matchkit.dedupe``: the import
        sets the package's attribute to this module, over the function of the
        same name the package exports; calling it calls that function."""
        leaf = self.__name__.rsplit(".", 1)[1]
        return getattr(self._module(), leaf)(*args, **kwargs)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        target = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {target}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=_caller_level())
        importlib.import_module(target)
        return _Forward(spec.name, target)

    def exec_module(self, module):
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def _caller_level() -> int:
    """The ``stacklevel`` that names the file importing the old path.

    ``warnings.warn`` already skips the import machinery's frames
    (``importlib._bootstrap``), so only this module's frames are counted."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back
            continue
        if name != __file__:
            return level
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Answer the old module names (once per process)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())


def forward(package: str, target: str):
    """A module ``__getattr__`` for a package that took an old module's name:
    old attributes come from ``target``, with a ``DeprecationWarning``."""

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        module = importlib.import_module(target)
        try:
            value = getattr(module, attr)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}") from None
        warnings.warn(f"{package}.{attr} moved to {target}.{attr}; the old path goes "
                      "in the next release", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
