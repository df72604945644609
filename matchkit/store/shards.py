"""Sharded galleries: one manifest naming N ordinary gallery folders.

A collection too big for one gallery is split into shards, each a complete
gallery folder (usable alone with every command). An image lives in the shard
chosen by rendezvous (highest random weight) hashing of its content digest:
every shard name scores the digest, the highest score wins. The choice needs
no table, is the same on every machine, and adding a shard moves only the
images the new name now wins, about 1/(N+1) of them; none move between the
old shards. (A file that cannot be read has no digest; its failure is kept in
the shard its path hashes to.)

Image ids stay unique across the shards and in path order, as in a single
gallery: a new image gets the next id above the largest one in any shard,
given in path order. So ids mean the same as on one machine (they break ties
and orient pairs), and matching a sharded gallery gives the same result.

A plain :class:`~matchkit.store.gallery.Gallery` is the one-shard case: its ``add``
is :func:`add_files` with itself as the only shard. :class:`ShardedGallery`
offers the reading side of a gallery (what matching, dedupe and check use)
over all its shards; its indexes are merged per query (:class:`MergedIndex`),
so a shard's index may also live in another process (``distributed/ray_jobs.py``).
The merged indexes are in :mod:`.merged`, importable from here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from matchkit.util.fs import atomic_write
from matchkit.config import Settings
from matchkit.store.adding import (BATCH, AddReport, Skipped, _key, add_files,  # noqa: F401  (re-exported)
                                   merge_report, place, plan_files, route, shard_names, shard_of,
                                   stat_files)
from matchkit.store.gallery import DB_NAME, Gallery, GalleryError, StoredImage
from matchkit.store.merged import MergedIndex, MergedVectorIndex, _result  # noqa: F401  (re-exported)

#: The manifest file of a sharded gallery (a folder holding it and its shards).
MANIFEST_NAME = "shards.json"
MANIFEST_FORMAT = "matchkit-shards"
def is_sharded(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(path: str | os.PathLike) -> list[str]:
    """Shard folder names listed by the manifest in folder ``path``."""
    file = Path(path) / MANIFEST_NAME
    try:
        data = json.loads(file.read_text())
        names = data["shards"]
        if data.get("format") != MANIFEST_FORMAT or not names or not all(
                isinstance(n, str) and n and "/" not in n and n not in (".", "..") for n in names):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise GalleryError(f"{file} is not a matchkit shard manifest") from None
    return list(names)


def write_manifest(path: str | os.PathLike, names: Sequence[str]) -> None:
    text = json.dumps({"format": MANIFEST_FORMAT, "version": 1, "shards": list(names)}, indent=2)
    Path(path).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path) / MANIFEST_NAME, lambda tmp: tmp.write_text(text + "\n"))


def create_sharded(path: str | os.PathLike, shards: int) -> list[str]:
    """Make folder ``path`` a sharded gallery of ``shards`` shards (new, or
    already one with that many); returns the shard names."""
    if shards < 1:
        raise ValueError("a sharded gallery needs at least one shard")
    path = Path(path)
    if is_sharded(path):
        names = read_manifest(path)
        if len(names) != shards:
            raise GalleryError(f"{path} already has {len(names)} shards, not {shards}")
        return names
    if path.exists() and any(path.iterdir()):
        raise GalleryError(f"{path} is not empty: a sharded gallery needs a new folder")
    names = shard_names(shards)
    write_manifest(path, names)
    return names


def saved_index_settings(path: str | os.PathLike) -> dict:
    """The descriptor-index settings (``Settings.vote_index`` and, for an IVF
    index, its vocabulary, probes and nodes) the gallery in folder ``path``
    was last written with; for a sharded gallery, its first shard's. Empty
    when there is no gallery there or it saved no descriptor index yet.

    Why: a command not told ``--vote-index`` should go on with the index a
    gallery already has. Without this, a gallery written before IVF became
    the default would have its index rebuilt and every stored match decision
    made again, on its first run after an upgrade."""
    path = Path(path)
    try:
        folder = path / read_manifest(path)[0] if is_sharded(path) else path
    except GalleryError:
        return {}
    if not (folder / DB_NAME).is_file():
        return {}
    with Gallery(folder, create=False) as g:
        return g.saved_index_settings()


def open_gallery(path: str | os.PathLike, settings: Settings | None = None, *,
                 create: bool = True, shards: int | None = None,
                 lock_timeout: float | None = None) -> "Gallery | ShardedGallery":
    """The gallery in folder ``path``: sharded if it holds a manifest (or
    ``shards`` asks for a new sharded one), else a plain gallery (without
    ``settings``, one searched with the descriptor index it was written with)."""
    if shards is not None and shards > 1 or is_sharded(path):
        if settings is None:
            settings = Settings().with_(**saved_index_settings(path))
        return ShardedGallery(path, settings, create=create, shards=shards,
                              lock_timeout=lock_timeout)
    return Gallery(path, settings, create=create, lock_timeout=lock_timeout)


class ShardedGallery:
    """Several gallery folders read as one gallery (see module docstring).

    Adding, reading rows and features, searching the pHash and ORB indexes,
    keeping incremental matching state, metadata filters and embeddings
    (each shard embeds its images; vector searches are merged,
    :class:`MergedVectorIndex`) work as on a :class:`Gallery`; labels stay
    per shard (not yet across them).
    ``indexes(name)`` may give the index parts instead of the shards'
    own (``distributed/ray_jobs.py``: indexes held by shard actors)."""

    def __init__(self, path: str | os.PathLike, settings: Settings = Settings(), *,
                 create: bool = True, shards: int | None = None,
                 lock_timeout: float | None = None, indexes=None):
        self.path = Path(path)
        self.settings = settings
        if not is_sharded(self.path):
            if not create or shards is None:
                raise GalleryError(f"no sharded gallery at {self.path} (missing {MANIFEST_NAME})")
            create_sharded(self.path, shards)
        self.names = read_manifest(self.path)
        if shards is not None and shards != len(self.names):
            raise GalleryError(f"{self.path} has {len(self.names)} shards, not {shards}")
        self.parts: list[Gallery] = []
        try:
            for name in self.names:
                self.parts.append(Gallery(self.path / name, settings, create=create,
                                          lock_timeout=lock_timeout))
        except BaseException:
            self.close()
            raise
        self._index_parts = indexes
        self._merged: dict[str, MergedIndex] = {}
        self._owner: dict[int, int] | None = None

    # lifecycle
    def close(self, save: bool = True) -> None:
        """Close every shard (``Gallery.close``: a writer saves its changed indexes)."""
        for g in self.parts:
            g.close(save)

    def __enter__(self) -> "ShardedGallery":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(save=exc_type is None)

    def save(self) -> None:
        for g in self.parts:
            g.save()

    # writing
    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None) -> AddReport:
        """As ``Gallery.add``; each image goes to the shard its digest hashes to."""
        try:
            report = add_files(self.parts, paths, self.settings, progress, self.names)
        finally:
            self.changed()
        self.forget_matches(report.changed)
        return report

    def remove(self, paths_or_ids: Iterable[str | int | os.PathLike]) -> int:
        items = list(paths_or_ids)
        ids = []
        for item in items:
            if isinstance(item, (int, np.integer)):
                ids.append(int(item))
            elif (rec := self.find(item)) is not None:
                ids.append(rec.id)
        try:
            return sum(g.remove(items) for g in self.parts)
        finally:
            self.changed()
            self.forget_matches(ids)

    def forget_matches(self, ids: Sequence[int]) -> None:
        """Changed or removed images lose their stored matching state in every
        shard: a pair is stored in the shard of its first image, so it may
        name an image of another shard (its own shard forgets it as on one
        machine)."""
        for g in self.parts:
            g.forget_matches(ids)

    def changed(self) -> None:
        """Forget what was cached about the shards' contents."""
        self._owner = None
        self._merged.clear()

    # reading
    def owner(self, image_id: int) -> int:
        """Index of the shard holding image ``image_id`` (KeyError if none)."""
        if self._owner is None:
            self._owner = {i: s for s, g in enumerate(self.parts) for i in g.ids()}
        return self._owner[image_id]

    def _by_shard(self, ids: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in ids:
            try:
                out.setdefault(self.owner(i), []).append(i)
            except KeyError:
                continue
        return out

    def __len__(self) -> int:
        return sum(len(g) for g in self.parts)

    def ids(self) -> list[int]:
        return sorted(i for g in self.parts for i in g.ids())

    def last_id(self) -> int:
        return max(g.last_id() for g in self.parts)

    def get(self, image_id: int) -> StoredImage:
        return self.parts[self.owner(image_id)].get(image_id)

    def find(self, path: str | os.PathLike) -> StoredImage | None:
        return next((r for r in (g.find(path) for g in self.parts) if r is not None), None)

    def images(self, ids: Iterable[int] | None = None) -> dict[int, StoredImage]:
        if ids is None:
            found = {k: v for g in self.parts for k, v in g.images().items()}
        else:
            found = {k: v for s, part in self._by_shard(ids).items()
                     for k, v in self.parts[s].images(part).items()}
        return dict(sorted(found.items()))

    def paths(self) -> dict[int, str]:
        return dict(sorted((k, v) for g in self.parts for k, v in g.paths().items()))

    def failures(self) -> list[Skipped]:
        return [f for g in self.parts for f in g.failures()]

    def phash_variants(self, ids: Sequence[int]) -> np.ndarray:
        ids = list(ids)
        out = None
        for s, part in self._by_shard(ids).items():
            got = self.parts[s].phash_variants(part)
            if out is None:
                out = np.zeros((len(ids), *got.shape[1:]), got.dtype)
            row = {i: n for n, i in enumerate(part)}
            for n, i in enumerate(ids):
                if i in row:
                    out[n] = got[row[i]]
        return out if out is not None else self.parts[0].phash_variants([])

    def colours(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        found = {k: v for s, part in self._by_shard(ids).items()
                 for k, v in self.parts[s].colours(part).items()}
        return dict(sorted(found.items()))

    def icons(self, ids: Sequence[int]) -> dict[int, bytes]:
        return {k: v for s, part in self._by_shard(ids).items()
                for k, v in self.parts[s].icons(part).items()}

    def thumb_shapes(self, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        return {k: v for s, part in self._by_shard(ids).items()
                for k, v in self.parts[s].thumb_shapes(part).items()}

    def local_features(self, image_id: int):
        try:
            return self.parts[self.owner(image_id)].local_features(image_id)
        except KeyError:
            return None

    def thumbnail(self, image_id: int):
        try:
            return self.parts[self.owner(image_id)].thumbnail(image_id)
        except KeyError:
            return None

    def signal_payloads(self, signal: str, ids: Sequence[int] | None = None
                        ) -> dict[int, bytes | None]:
        out: dict[int, bytes | None] = {}
        if ids is None:
            for g in self.parts:
                out.update(g.signal_payloads(signal))
            return out
        for shard, part in self._by_shard(ids).items():
            out.update(self.parts[shard].signal_payloads(signal, part))
        return out

    def pixel_digest(self, image_id: int) -> str | None:
        return self.parts[self.owner(image_id)].pixel_digest(image_id)

    @property
    def phash_index(self) -> MergedIndex:
        return self._index("phash")

    @property
    def orb_index(self) -> MergedIndex:
        return self._index("orb")

    def orb_index_ready(self) -> Callable[[], MergedIndex]:
        """``Gallery.orb_index_ready``: shards index as they add (their
        ``index_in_background`` stays off), so the index is ready now."""
        idx = self.orb_index
        return lambda: idx

    def _index(self, name: str) -> MergedIndex:
        if name not in self._merged:
            parts = (self._index_parts(name) if self._index_parts is not None
                     else [getattr(g, f"{name}_index") for g in self.parts])
            self._merged[name] = MergedIndex(parts)
        return self._merged[name]

    def update_meta(self, updates: dict[int, dict], *, replace: bool = False) -> int:
        return sum(self.parts[s].update_meta({i: updates[i] for i in part}, replace=replace)
                   for s, part in self._by_shard(updates).items())

    # incremental matching state (``match/incremental.py``): each image's record
    # in its shard, each pair in the shard of its first image
    def image_digests(self) -> dict[int, tuple[str, bool]]:
        return dict(sorted((k, v) for g in self.parts for k, v in g.image_digests().items()))

    def match_records(self, key: str) -> dict[int, tuple[str, str, bytes | None]]:
        return {k: v for g in self.parts for k, v in g.match_records(key).items()}

    def iter_match_records(self, key: str):
        for g in self.parts:
            yield from g.iter_match_records(key)

    def match_record_digests(self, key: str) -> dict[int, str]:
        return {k: v for g in self.parts for k, v in g.match_record_digests(key).items()}

    def match_pairs(self, key: str) -> dict[tuple[int, int, int], tuple]:
        return {k: v for g in self.parts for k, v in g.match_pairs(key).items()}

    def iter_match_pairs(self, key: str):
        for g in self.parts:
            yield from g.iter_match_pairs(key)

    def match_keys(self) -> list[str]:
        """As ``Gallery.match_keys``: every shard's, once each (the shards
        save their states together, so they keep the same keys)."""
        return list(dict.fromkeys(k for g in self.parts for k in g.match_keys()))

    def save_match_state(self, key: str, records: Mapping[int, tuple[str, str, bytes | None]],
                         pairs: dict[tuple[int, int, int], tuple],
                         *, replace: bool = False) -> None:
        """As ``Gallery.save_match_state``, one transaction per shard (a run
        killed between two shards leaves each shard's state valid on its own:
        records are checked against the images' digests when read)."""
        mine = {i: s for s, g in enumerate(self.parts) for i in g.ids()}
        for s, g in enumerate(self.parts):
            g.save_match_state(
                key, {i: records[i] for i in records if mine.get(i) == s},
                {k: r for k, r in pairs.items() if mine.get(k[0]) == s},
                replace=replace, elsewhere={i for i, t in mine.items() if t != s})

    def ids_where(self, sql: str, params: Sequence = ()) -> np.ndarray:
        """As ``Gallery.ids_where`` (metadata filters), over every shard."""
        return np.sort(np.concatenate([g.ids_where(sql, params) for g in self.parts]))

    # embeddings: each image's vector in its shard, searches merged
    def models(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for g in self.parts:
            found.update(g.models())
        return dict(sorted(found.items()))

    def embedded_ids(self, model_name: str) -> np.ndarray:
        return np.sort(np.concatenate([g.embedded_ids(model_name) for g in self.parts]))

    def vectors(self, model_name: str, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:  # (the usual error when no shard has the model)
            return next((g for g in self.parts if model_name in g.models()),
                        self.parts[0]).vectors(model_name, [])
        found: dict[int, np.ndarray] = {}
        for s, part in self._by_shard(ids).items():
            found.update(zip(part, self.parts[s].vectors(model_name, part)))
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return np.stack([found[i] for i in ids]).astype(np.float32)

    def vector_index(self, model_name: str) -> "MergedVectorIndex":
        """The shards' vector indexes of one model, searched as one (GalleryError
        when no shard has embeddings of ``model_name``)."""
        parts = [g.vector_index(model_name) for g in self.parts if model_name in g.models()]
        if not parts:
            return self.parts[0].vector_index(model_name)  # (raises the usual error)
        return MergedVectorIndex(parts)

    def embed(self, embedder, ids: Iterable[int] | None = None, *, progress: bool = False,
              workers: int | None = None, save: bool = True):
        """As ``Gallery.embed``: each shard embeds its own images."""
        by_shard = (None if ids is None else self._by_shard(ids))
        report = None
        for s, g in enumerate(self.parts):
            part = g.embed(embedder, None if by_shard is None else by_shard.get(s, []),
                           progress=progress, workers=workers, save=save)
            if report is None:
                report = part
            else:
                report.embedded += part.embedded
                report.unchanged += part.unchanged
                report.skipped += part.skipped
        return report
