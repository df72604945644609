"""The gallery's index files: the pHash index and the ORB descriptor index
(an IVF index by default, or with ``Settings.vote_index = "hnsw"`` an HNSW
graph), each a cache derived from SQLite.

Each file is written atomically (``save``) and stamped in the ``meta``
table with the data generation it really holds, its size, SHA-256 and key
count. It is loaded only if the stamp names the database's generation and
its bytes hash to the recorded digest; anything else is rebuilt from SQLite
(``_load_or_rebuild``). Each in-memory index remembers the generation it
reflects and moves on after a commit only if it was current before it
(``_changed``), so a stamp never claims changes an index lacks. A model's
vector file (:mod:`.gallery_vectors`) is stamped, loaded and checked by the
same code, under the name ``_MODEL_KEY + model``; :mod:`.gallery_verify`
checks every file against the database.

:class:`_IndexesMixin` is part of :class:`~matchkit.store.gallery.Gallery`,
which holds the connection, the settings and the in-memory indexes
(``_indexes``, ``_vectors``, ``_have``, ``_dirty``; see ``Gallery.__init__``).
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from matchkit.index.hamming import HammingIndex
from matchkit.index.ivf import IVFIndex, ivf_index, load_ivf_index
from matchkit.signals.hashing import PHASH_BITS
from matchkit.store.index_files import WrittenAhead, file_loader, write_ahead

PHASH_INDEX_NAME = "phash.usearch"
ORB_INDEX_NAME = "orb.usearch"
#: The ORB index file with ``Settings.vote_index = "ivf"`` (its own stamp, too).
ORB_IVF_INDEX_NAME = "orb.ivf"
#: The settings an IVF file is searched with, recorded with its stamp.
_IVF_SETTINGS = ("ivf_vocabulary", "ivf_probes", "ivf_nodes")
#: Descriptor keys in the ORB index are image_id * ORB_KEY_STRIDE + rank.
ORB_KEY_STRIDE = 1024
#: Prefix of a model's record in the ``meta`` table (value: JSON).
_MODEL_KEY = "model:"
#: Prefix of an index file's record in the ``meta`` table (value: JSON with
#: generation, size, sha256 and keys of the file last saved).
_FILE_KEY = "index:"


class _StaleIndexFile(Exception):
    """An index file that would have to be rebuilt (``load_indexes(only_current=True)``)."""


class _IndexesMixin:
    """The index files of a :class:`~matchkit.store.gallery.Gallery`: stamps,
    loading, rebuilding, keeping in step with commits and saving."""

    def index_files_current(self) -> bool:
        """Whether every index file's stamp names the database's current state,
        so opening the gallery now loads them instead of rebuilding (a long-lived
        reader can keep its older snapshot until a writer has saved)."""
        with self._snapshot():
            generation = self.generation
            if any((self._file_record(n) or {}).get("generation") != generation
                   for n in ("phash", "orb")):
                return False
            for name in self.models():
                info = self._model_info(name) or {}
                if info.get("index_generation") != info.get("generation"):
                    return False
        return True

    def load_indexes(self, *, only_current: bool = False, as_saved: bool = False) -> bool:
        """Load every index (pHash, ORB, each model's vectors) in one read
        snapshot, so all reflect the same committed state. With
        ``only_current``, rebuild nothing: if any file is not the current
        one (stale stamp, or replaced by a writer meanwhile), drop what was
        loaded and return False (a reader that would rather wait than rebuild).
        With ``as_saved`` (and ``only_current``), take each file as its writer
        last saved it, even when the database has moved on since: a reader
        then answers from the indexes of a committed state a little older
        than the rows (new images are found once the writer saves again;
        removed ones are dropped by the row lookup) instead of rebuilding."""
        self._load_only = only_current
        self._as_saved = as_saved
        try:
            with self._snapshot():
                if only_current and not as_saved and not self.index_files_current():
                    return False
                self.phash_index, self.orb_index
                for model in self.models():
                    self.vector_index(model)
        except _StaleIndexFile:
            for name in ("phash", "orb", *(_MODEL_KEY + m for m in self.models())):
                self._drop_cached(name)
            return False
        finally:
            self._load_only = self._as_saved = False
        return True

    def saved_index_stamps(self) -> tuple:
        """The checksums and generations the index files were last saved with:
        changes when a writer saves new files (a reader's cue to reload)."""
        with self._snapshot():
            stamps = [(n, (self._file_record(n) or {}).get("sha256"),
                       (self._file_record(n) or {}).get("generation"))
                      for n in ("phash", "orb", *(_MODEL_KEY + m for m in self.models()))]
        return tuple(stamps)

    # -- index -------------------------------------------------------------
    @property
    def phash_index(self) -> HammingIndex:
        """pHash index (one code per image, key = image id)."""
        return self._index("phash")

    @property
    def orb_index(self) -> HammingIndex | IVFIndex:
        """ORB descriptor index (the strongest ``index_features`` per image)."""
        return self._index("orb")

    def orb_index_ready(self) -> Callable[[], HammingIndex | IVFIndex]:
        """The ORB index as a function that another thread may call: it waits
        for an add still being indexed in the background
        (``index_in_background``) and gives the index; this thread does not
        wait. (An index not loaded yet is loaded here: only this thread
        reads the database.)"""
        pending, idx = self._indexing, self._indexes.get("orb")
        if pending is None or idx is None:
            idx = self.orb_index
            return lambda: idx

        def ready() -> HammingIndex | IVFIndex:
            pending.result()  # (an error is raised here, and again by ``_settle``)
            return idx
        return ready

    def _settle(self) -> None:
        """Wait for the ORB index add running in the background, if any, and
        for its file being written (``save_ahead``: no change while it is
        read). If the add failed, the index is dropped (it is rebuilt from
        the database when next used; its file keeps the last saved state)
        and the error raised."""
        if self._saving is not None:
            concurrent.futures.wait([self._saving])
        pending, self._indexing = self._indexing, None
        if pending is None:
            return
        try:
            pending.result()
        except BaseException:
            self._drop_cached("orb")
            raise

    def _index(self, name: str) -> HammingIndex:
        """An index loaded from disk, or rebuilt from SQLite if its file is stale."""
        if name == "orb":
            self._settle()
        if name not in self._indexes:
            self._indexes[name] = self._load_or_rebuild(name)
        return self._indexes[name]

    def _index_file(self, name: str) -> Path:
        if name == "orb" and self._ivf():
            return self.path / ORB_IVF_INDEX_NAME
        return self.path / {"phash": PHASH_INDEX_NAME, "orb": ORB_INDEX_NAME}[name]

    def saved_vote_index(self) -> str | None:
        """The descriptor index kind ("hnsw" or "ivf") whose file was saved
        last, i.e. what the gallery was last written with (None: no file).

        Why: the kind is a setting of each run, and a reader that is not told
        should search what the writer built; otherwise ``check`` on a gallery
        made with ``--vote-index ivf`` rebuilt an HNSW graph from SQLite on
        every run (minutes for 10,000 images) and searched another index."""
        best = None
        for kind, name in (("hnsw", "orb"), ("ivf", "orb-ivf")):
            record = self._saved_stamp(name)
            if record is not None and isinstance(record.get("generation"), int):
                when = (record["generation"], record.get("saved_at", 0))
                if best is None or when > best[0]:
                    best = (when, kind)
        return None if best is None else best[1]

    def saved_index_settings(self) -> dict:
        """The settings a reader that is not told should search with: the
        index kind of ``saved_vote_index`` and, for an IVF file, the
        vocabulary, probes and nodes it was written with (empty: no file)."""
        kind = self.saved_vote_index()
        if kind is None:
            return {}
        out = {"vote_index": kind}
        if kind == "ivf":
            ivf = (self._saved_stamp("orb-ivf") or {}).get("ivf")
            if isinstance(ivf, dict):
                out.update({k: ivf[k] for k in _IVF_SETTINGS if k in ivf})
        return out

    def _ivf(self) -> bool:
        return self.settings.vote_index == "ivf"

    def _record_name(self, name: str) -> str:
        """The meta key suffix of an index file's stamp: the IVF file has its
        own, so galleries opened with either kind never trust the other's."""
        return "orb-ivf" if name == "orb" and self._ivf() else name

    def _new_index(self, name: str):
        """An empty index of the kind the settings ask for."""
        if name == "orb" and self._ivf():
            return ivf_index(self.settings)
        nbits, params = self._index_params(name)
        return HammingIndex(nbits, **params)

    def _index_loader(self, name: str):
        """A function from a saved file's bytes to its index (raises if foreign)."""
        if name == "orb" and self._ivf():
            return lambda data, s=self.settings: load_ivf_index(data, s)
        nbits, params = self._index_params(name)
        return lambda data: HammingIndex.load(data, nbits, **params)

    @staticmethod
    def _index_params(name: str) -> tuple[int, dict]:
        # Local descriptors are many and only vote: a sparser, faster graph is
        # enough, searched shallowly (half the search cost of depth 32, the
        # same recall of copies on the calib halves of the benchmark sets).
        params = {} if name == "phash" else {"connectivity": 8, "expansion_add": 32,
                                             "expansion_search": 16}
        return (PHASH_BITS if name == "phash" else 256), params

    def _file_record(self, key: str) -> dict | None:
        """The stamp recorded when an index file was last saved (None: none usable)."""
        if key.startswith(_MODEL_KEY):
            info = self._model_info(key[len(_MODEL_KEY):]) or {}
            record = info.get("index_file")
            if isinstance(record, dict) and info.get("index_generation") is not None:
                return {**record, "generation": info["index_generation"]}
            return None
        return self._saved_stamp(self._record_name(key))

    def _saved_stamp(self, name: str) -> dict | None:
        """The stamp stored under meta key ``_FILE_KEY + name`` (None: none, or unreadable)."""
        try:
            record = json.loads(self._meta(_FILE_KEY + name) or "null")
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def prefetch_indexes(self) -> None:
        """Start loading the saved descriptor index file (read, checksum,
        load) on the index worker while this thread goes on; the first use
        of ``orb_index`` takes it if its stamp still holds (``_load_file``).
        Only with ``index_in_background`` (a ``dedupe --gallery`` run),
        called when an add has files to decode. Why: loading the 118 MB graph
        of 10,000 images took 0.3 s of a 1% add, on this thread, right after
        the 100 new files were decoded."""
        if (not self.index_in_background or "orb" in self._indexes or self._prefetched
                or self.shared_indexes is not None or self._ivf()):
            return
        record = self._file_record("orb")
        with self._snapshot():
            generation = self.generation
        if record is None or record.get("generation") != generation:
            return
        load = file_loader(self._index_file("orb"), record, self._index_loader("orb"), [""])
        self._prefetched = (record, self._worker().submit(load))

    def _take_prefetched(self, key: str, record: dict):
        """The index ``prefetch_indexes`` loaded for ``key``, if it was loaded
        against this very ``record`` (else None: loaded here as usual)."""
        if key != "orb" or self._prefetched is None:
            return None
        (seen, future), self._prefetched = self._prefetched, None
        try:
            idx = future.result()
        except Exception:  # (loaded again here, which says why)
            return None
        return idx if seen == record else None

    def _load_file(self, key: str, file: Path, generation: int, loader):
        """The cache file's index if its stamp names ``generation`` and its bytes
        match the recorded size, digest and key count; else (None, why)."""
        record = self._file_record(key)
        if record is None:
            return None, "no checksum recorded"
        if record.get("generation") != generation and not self._as_saved:
            return None, f"holds generation {record.get('generation')}, database is at {generation}"
        ready = self._take_prefetched(key, record)
        if ready is not None:
            self._have[key] = record.get("generation")
            return ready, ""
        why = [""]
        load = file_loader(file, record, loader, why)
        shared = self.shared_indexes
        # (an IVF index's vocabulary, probes and nodes are held by the object: part of the key)
        ivf = (tuple(getattr(self.settings, k) for k in _IVF_SETTINGS)
               if key == "orb" and self._ivf() else None)
        idx = (load() if shared is None else shared.get_or_load(
            (str(file), key, record.get("sha256"), record.get("generation"), ivf), load))
        if idx is None:
            return None, why[0]
        self._have[key] = record.get("generation")
        return idx, ""

    def _load_or_rebuild(self, name: str) -> HammingIndex | IVFIndex:
        with self._snapshot():
            generation = self.generation
        idx, _ = self._load_file(name, self._index_file(name), generation,
                                 self._index_loader(name))
        if idx is not None:  # (_load_file noted the generation it reflects)
            return idx
        if self._load_only:
            raise _StaleIndexFile(name)
        idx = self._new_index(name)
        with self._snapshot():  # the rows and the generation they make, together
            generation = self.generation
            if name == "phash":
                rows = self._db.execute("SELECT id, phash FROM images").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT image_id, descriptors FROM local_features").fetchall()
        if name == "phash":
            pairs = [(i, np.frombuffer(b, np.uint8)[: PHASH_BITS // 8]) for i, b in rows]
            if pairs:
                idx.add(np.array([k for k, _ in pairs]), np.stack([c for _, c in pairs]))
        else:
            self._add_orb(idx, [(i, np.frombuffer(d, np.uint8).reshape(-1, 32)) for i, d in rows])
        self._have[name] = generation
        self._dirty.add(name)
        return idx

    def _changed(self, name: str, bump: tuple[int, int] | None = None) -> None:
        """After a commit moved ``name``'s generation from old to new and its
        in-memory index got the same changes: it now reflects new, if it
        reflected old before. Otherwise (another writer committed in between,
        which the lock prevents) it is dropped and rebuilt on next use, so a
        stamp never claims changes an index lacks."""
        old, new = bump or self._last_bump
        have = self._have.get(name)
        if have == old:
            self._have[name] = new
            self._dirty.add(name)
        elif have != new:  # (== new: loaded after the commit, already current)
            self._drop_cached(name)

    def _drop_cached(self, name: str) -> None:
        if name == "orb" and self._indexing is not None:  # (not dropped while in use)
            pending, self._indexing = self._indexing, None
            concurrent.futures.wait([pending])
        if name.startswith(_MODEL_KEY):
            self._vectors.pop(name[len(_MODEL_KEY):], None)
        else:
            self._indexes.pop(name, None)
        self._have.pop(name, None)
        self._dirty.discard(name)

    def _add_orb(self, idx: HammingIndex, items: list[tuple[int, np.ndarray]]) -> None:
        """Index the strongest descriptors of each (image_id, descriptors); the
        caller has removed any earlier ones for these ids."""
        tops = [(i, d[: self.settings.index_features]) for i, d in items]
        tops = [(i, d) for i, d in tops if len(d)]
        if not tops:
            return
        keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in tops])
        codes = np.concatenate([d for _, d in tops])
        if not self.index_in_background:
            idx.add(keys, codes, replace=False)
            return
        self._settle()  # (one at a time: ``_write_batch`` has waited for it already)
        self._indexing = self._worker().submit(idx.add, keys, codes, replace=False)

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        """The index worker (one thread: the ORB index's adds and file writes
        run on it in order), made on first use."""
        if self._index_worker is None:
            self._index_worker = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="matchkit-index")
        return self._index_worker

    def _remove_orb(self, idx: HammingIndex, ids: Iterable[int]) -> None:
        idx.remove([i * ORB_KEY_STRIDE + j for i in ids for j in range(self.settings.index_features)])

    def save_ahead(self) -> None:
        """Start writing the descriptor index file now, if it changed, on the
        index worker after the add it is indexing (``index_in_background``),
        while this thread goes on; ``save`` then records its stamp, or writes
        it again if the index changed since. Why: writing the 118 MB descriptor
        graph of 10,000 images, with its checksum and fsync, took 0.6 s at
        the end of a 1% add (11.3 s), with one core idle. (The descriptor
        index alone: every change to it goes through this worker or waits for
        it, ``_settle``; the small pHash index is written by ``save``.)"""
        if not (self.index_in_background and "orb" in self._dirty
                and "orb" in self._indexes and "orb" in self._have):
            return
        self._lock_for_writing()
        self._saving = self._worker().submit(
            write_ahead, self._indexes["orb"], self._have["orb"], self._index_file("orb"),
            self._indexing)

    def _saved_ahead(self) -> WrittenAhead | None:
        """What ``save_ahead`` wrote (None if nothing, or if writing failed:
        ``save`` writes again)."""
        pending, self._saving = self._saving, None
        if pending is None:
            return None
        try:
            return pending.result()
        except Exception:
            return None

    def save(self) -> None:
        """Persist the index files so the next open need not rebuild them.

        The database itself is always saved (every change is a committed
        transaction); this only writes the derived indexes, atomically, each
        stamped with the generation it really reflects, its size, checksum
        and key count (so it is verified before the next load).
        """
        self._settle()
        ahead = self._saved_ahead()
        if not self._dirty:
            return
        self._lock_for_writing()
        for name in sorted(self._dirty):
            if name.startswith(_MODEL_KEY):
                self._save_vectors(name[len(_MODEL_KEY):])
                continue
            if name not in self._indexes or name not in self._have:
                continue
            idx = self._indexes[name]
            # (written ahead from this very index at this generation, with the
            # keys it has now: its file is current; else it is written now)
            if name == "orb" and ahead is not None and ahead.index is idx \
                    and ahead.generation == self._have[name] and ahead.keys == len(idx):
                stamp = ahead.stamp
            else:
                stamp = idx.save(self._index_file(name))
            record = {**stamp, "keys": len(idx), "generation": self._have[name],
                      "saved_at": round(time.time(), 3)}
            if name == "orb" and self._ivf():  # (how a reader that is not told searches it)
                record["ivf"] = {k: getattr(self.settings, k) for k in _IVF_SETTINGS}
            # One statement: the generation stamp and the checksum change together.
            self._set_meta(_FILE_KEY + self._record_name(name),
                           json.dumps(record, sort_keys=True))
        self._dirty.clear()
