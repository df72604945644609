"""Signals: a small registry, configuration as data.

A *signal* reads something from each decoded image, keeps it in the
gallery, and has a say about pairs. Each one declares, in its own module,
what it extracts, where it is stored (``stores``), how it proposes
candidates (``candidates``), the named numbers it adds to a pair and what
it reports. Two kinds:

**Built-in signals** (:func:`register_builtin`, registered at the bottom of
this module: image size, exact digests, pHash, colour, local features,
embeddings, icons) take part in every run they are ``enabled`` for:

- extraction (``features.record._extract``): each fills its
  ``ImageRecord`` fields (``record_fields``) from the shared views of one
  decode (``Signal.extract_fields``);
- storage (``store.gallery_writing``): the gallery writes the ``images``
  columns each one encodes (``Signal.to_columns``) and the rows of its own
  tables (``Signal.to_rows``: the local features' ``local_features``); the
  signal's module also reads them back (``local_stored.stored_features``).
  The indexes over them (pHash, descriptors, vectors) are the gallery's
  (``stores`` names every place);
- the calibrated decision (``match.pairfeatures``): the feature vector is
  the union of their named ``features``, in registration order, each
  signal computing its own (``Signal.pair_features``, missing values
  explicit); profiles read their columns by name and refuse another set;
- candidates (``match.searches``): a run's candidate search is the search
  of each signal that proposes pairs (``Signal.candidates`` says how), in
  registration order; the incremental matcher and gallery queries run the
  searches they have through the same loop (``searches.signal_steps``, each
  matcher's ``SEARCHES`` naming its step per signal), keeping their results
  as state;
- reports (``match.evidence.PairEvidence.to_evidence``): each adds the
  JSON keys it measured (``Signal.evidence``).

**Extra signals** (:func:`register`; opt-in by name in ``Settings.signals``,
default none; text in images, ``ocr``) add to that without touching a
built-in one:

- extraction: ``Signal.extract(image, path)`` on the decoded image, stored
  by ``Gallery`` in its generic ``signal_data`` table in the same
  transaction as the image's record (``None``: nothing to say, stored as
  such so the image is not read again);
- pair decisions (``dedupe_clusters.find_clusters`` through :func:`vetoing`): a pair
  the other signals matched or would verify is refused when a configured
  signal vetoes it; its evidence goes into the pair's ``extra["signals"]``;
- report pages: ``Signal.describe(evidence)`` for each signal's evidence,
  and ``Signal.show(payload)`` under each image (:func:`shown`; the text an
  image holds, say), kept in the report's JSON as ``shown``.

They have a say by veto only, so a profile fitted without them still applies.

Signals register like timm/open_clip models, by name::

    from matchkit import signals
    signals.register("mysignal", "mypackage.module:MySignal")   # lazy: imported when used
    signals.available()          # ['mysignal', 'ocr']: the extra signals
    signals.builtin_names()      # ['image', 'exact', 'phash', ...]
    signals.get("ocr")           # the instance (one per process)

This module imports nothing heavy: a signal's own dependencies load only when
it is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


class UnknownSignal(ValueError):
    """A signal name the registry does not know (one line)."""


class SignalUnavailable(RuntimeError):
    """A registered signal that cannot run here (a missing program or package);
    the message says what to install (one line)."""


@dataclass(frozen=True)
class Signal:
    """Base of a pair signal. Subclasses set ``name`` and override what they do.

    Payloads are bytes (the signal chooses the encoding); evidence is a flat
    dict of named numbers, ``None`` where a value is missing."""

    #: Registry name (also the key in ``signal_data`` and in pair evidence).
    name: str = ""
    #: Named numbers this signal adds to a pair's feature vector, which the
    #: calibrated decision reads by name (``pairfeatures.FEATURES`` is the
    #: union over the built-in signals, in registration order).
    features: tuple[str, ...] = ()
    #: ``ImageRecord`` fields ``extract_fields`` fills.
    record_fields: tuple[str, ...] = ()
    #: Tables of its own, one row per image keyed by ``image_id`` (``to_rows``).
    tables: tuple[str, ...] = ()
    #: Where a gallery keeps it: "table.column" or an index file's name,
    #: as data (``tests/test_builtin_signals.py`` holds each to the gallery).
    stores: tuple[str, ...] = ()
    #: How it proposes candidate pairs, in words, naming the function that
    #: does (None: it only judges pairs other signals propose). The search
    #: runs in the match layer (``match.searches.CandidateSearches.SEARCHES``
    #: maps the signal's name to it), where the indexes and the run are.
    candidates: str | None = None
    #: Longest side of the decode the signal needs (None: the pipeline's
    #: working decode is enough). A larger one is decoded once for all
    #: configured signals that ask for it, only when they are configured.
    decode_side: int | None = None

    def check(self) -> None:
        """Raise :class:`SignalUnavailable` if the signal cannot run here."""

    def enabled(self, settings) -> bool:
        """Whether a built-in signal takes part in a run with ``settings``."""
        return True

    def extract_fields(self, views, settings) -> dict:
        """A built-in signal's ``ImageRecord`` fields of one decoded file.
        ``views`` (``features.record.Views``) holds the decode and the views
        cut from it once for all signals: ``loaded`` (``io.load.LoadedImage``),
        ``path``, ``image``, ``grey_work``, ``hash_thumb``, ``grey_thumb``."""
        return {}

    def to_rows(self, record) -> dict[str, dict]:
        """A built-in signal's rows of its own tables (``tables``: one row per
        image, keyed by ``image_id``): table -> {column: value}, ``image_id``
        left out; a table left out gets no row for the image."""
        return {}

    def to_columns(self, record) -> dict:
        """A built-in signal's values for its columns of the gallery's
        ``images`` table (those ``stores`` names ``images.<column>``), encoded
        from its ``ImageRecord`` fields: the gallery writes what the signals
        give it."""
        return {}

    def pair_features(self, pair, context: "PairContext") -> tuple[float, ...]:
        """One value per name in ``features`` for a pair (a
        ``match.evidence.PairEvidence``), every one defined: a missing signal
        is said by a feature of its own (``cosine_missing``), never by NaN."""
        return ()

    def evidence(self, pair) -> dict:
        """What a built-in signal says of a pair in reports (JSON keys, only
        those it measured), from the pair's ``PairEvidence``."""
        return {}

    def extract(self, image, path: str) -> bytes | None:
        """The payload of one decoded image (a PIL RGB image, ``path`` its
        file); None when there is nothing to say (no text, say)."""
        raise NotImplementedError

    def pair_evidence(self, pa: bytes | None, pb: bytes | None) -> dict[str, float | None]:
        """Named numbers about a pair from its two payloads (None: missing)."""
        return {}

    def veto(self, evidence: dict[str, float | None]) -> str | None:
        """A reason when ``evidence`` says the pair shows different pictures."""
        return None

    def describe(self, evidence: dict[str, float | None]) -> str:
        """One line for report pages."""
        return ", ".join(f"{k} {v}" for k, v in evidence.items() if v is not None)

    def show(self, payload: bytes | None) -> str | None:
        """What report pages show under an image of its payload (plain text,
        short), or None: nothing worth showing."""
        return None

    def search(self, gallery, query: str, ids: Sequence[int] | None = None,
               k: int = 10) -> list[tuple[int, float]]:
        """(image id, score) of the images that best answer ``query``, best first
        (among ``ids`` if given). Optional: not every signal can be searched."""
        raise NotImplementedError(f"signal {self.name!r} cannot be searched")


@dataclass(frozen=True)
class PairContext:
    """Per-image facts some pair features need besides the pair itself:
    ``crowd`` (image id -> pHash distance to its crowd), ``sizes`` (id ->
    (width, height)) and ``picture`` (id -> share of the image that is
    picture rather than flat fill or a template frame); unknown ids are
    neutral (see each signal)."""

    crowd: Mapping[int, int]
    sizes: Mapping[int, tuple[int, int]]
    picture: Mapping[int, float]


#: name -> Signal subclass, factory, or "module:attribute" text (imported on first use).
_REGISTRY: dict[str, Callable[[], Signal] | str] = {}
_INSTANCES: dict[str, Signal] = {}


#: Names registered by ``register_builtin``, in registration order.
_BUILTIN: list[str] = []
#: Their instances (``builtin``), made on first use.
_BUILTIN_SIGNALS: tuple[Signal, ...] | None = None


def register(name: str, factory: Callable[[], Signal] | str) -> None:
    """Make extra signal ``name`` available; ``factory`` builds it (a class, a
    callable, or ``"module:attribute"`` imported lazily). Registering a name
    again replaces it."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a signal name is letters, digits, '-' or '_', not {name!r}")
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in signal")
    _REGISTRY[name] = factory
    _INSTANCES.pop(name, None)


def register_builtin(name: str, factory: Callable[[], Signal] | str) -> None:
    """Register a built-in signal: part of every run it is ``enabled`` for,
    its payload in ``features.ImageRecord`` fields (``record_fields``), its
    numbers in the calibrated decision (``features``, read in registration
    order). Extra signals (:func:`register`) are opt-in by ``Settings.signals``,
    stored in ``signal_data`` and have a say by veto only, so a profile
    fitted without them still applies."""
    global _BUILTIN_SIGNALS
    register(name, factory)
    _BUILTIN.append(name)
    _BUILTIN_SIGNALS = None


def available() -> list[str]:
    """Names of the registered extra signals (those ``Settings.signals``
    takes), sorted."""
    return sorted(n for n in _REGISTRY if n not in _BUILTIN)


def builtin_names() -> list[str]:
    """Names of the built-in signals, in registration order."""
    return list(_BUILTIN)


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each once in the order given; UnknownSignal for a
    name the registry does not know."""
    out: list[str] = []
    for n in names:
        if isinstance(n, str) and n in _BUILTIN:
            raise UnknownSignal(f"signal {n!r} is built in and always on "
                                f"(extra signals: {', '.join(available())})")
        if not isinstance(n, str) or n not in _REGISTRY:
            raise UnknownSignal(f"unknown signal {n!r} (available: {', '.join(available())})")
        if n not in out:
            out.append(n)
    return tuple(out)


def get(name: str) -> Signal:
    """The signal registered as ``name`` (one instance per process)."""
    if name not in _REGISTRY:
        check_names([name])
    if name not in _INSTANCES:
        factory = _REGISTRY[name]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        sig = factory()
        if sig.name != name:
            raise ValueError(f"signal registered as {name!r} calls itself {sig.name!r}")
        _INSTANCES[name] = sig
    return _INSTANCES[name]


def builtin() -> tuple[Signal, ...]:
    """The built-in signals, in registration order (the order of their
    features in ``pairfeatures.FEATURES`` and of their keys in evidence);
    built once, as hot paths (each file, each pair) loop over them."""
    global _BUILTIN_SIGNALS
    if _BUILTIN_SIGNALS is None:
        _BUILTIN_SIGNALS = tuple(get(n) for n in _BUILTIN)
    return _BUILTIN_SIGNALS


def configured(settings) -> list[Signal]:
    """The signals ``settings.signals`` names, checked to run here
    (``SignalUnavailable`` otherwise, before any file is read)."""
    out = [get(n) for n in getattr(settings, "signals", ())]
    for sig in out:
        sig.check()
    return out


# -- the generic hooks -------------------------------------------------------

def extract_payloads(image, path: str, settings, load=None) -> dict[str, bytes | None] | None:
    """Each configured signal's payload of one image (None without signals).
    ``image`` is the pipeline's decode; signals wanting a larger one get a
    decode at the largest ``decode_side`` asked for (``load(path, side)``)."""
    sigs = [get(n) for n in settings.signals]
    if not sigs:
        return None
    big = max((s.decode_side or 0 for s in sigs), default=0)
    larger = None
    if big and load is not None and max(image.size) < big:
        try:
            larger = load(path, big)
        except Exception:  # (the pipeline's decode worked: signals make do with it)
            larger = None
    out = {}
    for s in sigs:
        use = larger if (s.decode_side and larger is not None) else image
        try:
            out[s.name] = s.extract(use, path)
        except Exception:  # one signal failing on one file must not lose the file
            out[s.name] = None
    return out


def pair_evidence(gallery, names: Sequence[str], pairs: Iterable[tuple[int, int]],
                  cache: dict | None = None) -> dict[tuple[int, int], dict]:
    """Evidence of each named signal for each pair: {(a, b): {signal: evidence}}."""
    pairs = list(pairs)
    cache = {} if cache is None else cache
    out: dict[tuple[int, int], dict] = {p: {} for p in pairs}
    for name in names:
        sig = get(name)
        need = sorted({i for p in pairs for i in p if (name, i) not in cache})
        if need:
            got = gallery.signal_payloads(name, need)
            for i in need:
                cache[(name, i)] = got.get(i)
        for a, b in pairs:
            out[(a, b)][name] = sig.pair_evidence(cache[(name, a)], cache[(name, b)])
    return out


def apply_vetoes(evidence: list, gallery, names: Sequence[str], cache: dict) -> None:
    """Refuse matched or pending pairs (``evidence.PairEvidence``) that a
    configured signal vetoes: ``rule`` cleared, ``pending`` off, the reason in
    ``extra["veto"]``; each signal's evidence in ``extra["signals"]``."""
    todo = [ev for ev in evidence if (ev.rule or ev.pending) and "signals" not in ev.extra]
    if not todo or not names:
        return
    found = pair_evidence(gallery, names, [(ev.a, ev.b) for ev in todo], cache)
    for ev in todo:
        ev.extra["signals"] = found[(ev.a, ev.b)]
        for name in names:
            reason = get(name).veto(ev.extra["signals"][name])
            if reason:
                ev.extra["veto"] = f"{name}: {reason}"
                ev.rule, ev.pending = "", False
                break


class VetoingMatcher:
    """A pair matcher (``pairs.PairMatcher`` or one with its interface) whose
    decisions pass the configured signals' vetoes: its initial evidence, every
    batch it verifies and every pair it is asked about afresh."""

    def __init__(self, matcher, gallery, names: Sequence[str]):
        self._m, self._gallery, self._names = matcher, gallery, tuple(names)
        self._cache: dict = {}
        apply_vetoes(matcher.evidence, gallery, self._names, self._cache)

    def __getattr__(self, attr):
        return getattr(self._m, attr)

    def verify(self, todo) -> None:
        # Vetoed before verifying (which they then skip): a veto reads only
        # the payloads, so verification could not change it.
        todo = list(todo)
        apply_vetoes(todo, self._gallery, self._names, self._cache)
        self._m.verify(todo)

    def evidence_between(self, a: int, b: int, reflect: bool):
        ev = self._m.evidence_between(a, b, reflect)
        apply_vetoes([ev], self._gallery, self._names, self._cache)
        return ev


def vetoing(matcher, gallery, settings):
    """``matcher`` wrapped in :class:`VetoingMatcher` when signals are configured."""
    names = tuple(getattr(settings, "signals", ()))
    return VetoingMatcher(matcher, gallery, names) if names else matcher


def describe(signal_evidence: dict | None) -> str:
    """One line from a pair's ``extra["signals"]`` / report ``signals`` entry."""
    parts = []
    for name, ev in (signal_evidence or {}).items():
        try:
            text = get(name).describe(ev)
        except (UnknownSignal, ImportError):
            text = ", ".join(f"{k} {v}" for k, v in ev.items())
        parts.append(f"{name}: {text}")
    return "; ".join(parts)


def shown(gallery, names: Sequence[str], ids: Sequence[int]) -> dict[int, dict[str, str]]:
    """image id -> {signal name: what ``Signal.show`` says of its payload}
    for the configured signals ``names``; images with nothing to show are left out."""
    out: dict[int, dict[str, str]] = {}
    for name in names:
        sig = get(name)
        for i, payload in gallery.signal_payloads(name, list(ids)).items():
            text = sig.show(payload)
            if text:
                out.setdefault(i, {})[name] = text
    return out


# -- built-in signals: one line each -----------------------------------------
# Always on (as ``enabled`` says), in the order their features are read:
register_builtin("image", "matchkit.signals.image:ImageSignal")
register_builtin("exact", "matchkit.signals.exact:ExactSignal")
register_builtin("phash", "matchkit.signals.hashing:PHashSignal")
register_builtin("colour", "matchkit.signals.colour:ColourSignal")
register_builtin("local", "matchkit.signals.local_signal:LocalSignal")
register_builtin("embedding", "matchkit.signals.embedding:EmbeddingSignal")
register_builtin("icon", "matchkit.signals.thumbmatch:IconSignal")
# Opt-in (``Settings.signals``):
register("ocr", "matchkit.signals.ocr:OCRSignal")
