"""The shard actors of a Ray run, and the driver's view of them:
:class:`ShardServer` (one shard of a gallery held in a Ray actor: writes its
records, answers index searches), the compact form its answers travel in,
:class:`RemoteIndex` (a shard's index searched through its actor, a part of
``merged.MergedIndex``), and the count of work and bytes per node
(:class:`Work`).

Separate from the driver (``ray_jobs.py``), which starts the actors: a Ray
worker imports this module by its path to run one, and nothing here needs
the driver.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from matchkit.config import Settings
from matchkit.store.gallery import AddReport, Gallery
from matchkit.util.memory import release_memory
from matchkit.distributed.connect import _node, _ray, peak_rss_kib


class ShardServer:
    """One shard of a gallery, held in a Ray actor: writes its records,
    answers index searches. Opening the shard is all its state, so a
    restarted actor is the same shard again."""

    def __init__(self, path: str, settings: Settings):
        self.gallery = Gallery(path, settings)

    def node(self) -> str:
        return _node()

    def pid(self) -> int:
        return os.getpid()

    def process(self) -> tuple[int, int]:
        """(pid, peak RSS in KiB) of the actor's process: what ``RayRun.stats``
        asks once per actor (the pid tells a restarted actor)."""
        return os.getpid(), peak_rss_kib()

    def plan_add(self, files):
        return self.gallery.plan_add(files)

    def last_id(self) -> int:
        return self.gallery.last_id()

    def write_records(self, batch, ids) -> AddReport:
        # The earlier batches' features are free by now (Ray holds a call's
        # arguments until it returns): hand the holes back (``_memory``).
        release_memory()
        return self.gallery.write_records(batch, ids)

    def remove(self, ids) -> int:
        return self.gallery.remove(ids)

    def save(self) -> None:
        self.gallery.save()

    def index_info(self, name: str) -> tuple[int, int, bool, tuple | None]:
        """The index's bits, size, tie order, and how it takes queries
        encoded (``IVFIndex.encoding``; None: only as codes)."""
        index = getattr(self.gallery, f"{name}_index")
        return index.nbits, len(index), index.ranks_ties_by_key, getattr(index, "encoding", None)

    def search(self, name: str, codes, k: int, max_distance: int | None = None):
        """k nearest of each code, compactly: keys as int32 when they fit,
        distances as uint8 when they fit (0 where no neighbour: the caller
        knows ``nbits + 1`` from the key -1); the same values otherwise.
        With ``max_distance``, only the neighbours within it, ragged
        (``_compact_within``): the callers that ask for it count no others."""
        index = getattr(self.gallery, f"{name}_index")
        if max_distance is None:
            return _compact(*index.search(codes, k))
        return _compact_within(*index.search(codes, k, max_distance=max_distance))


def _narrow(keys: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys as int32 and distances as uint8 where every value fits (else
    int64 keys, uint16 distances): what a shard's answer is sent as."""
    if not keys.size or keys.max() < 2 ** 31:
        keys = keys.astype(np.int32)
    return keys, dists.astype(np.uint8 if not dists.size or dists.max() < 256 else np.uint16)


def _compact(keys: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _narrow(keys, np.where(keys >= 0, dists, 0))


def _expand(keys: np.ndarray, dists: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """``HammingIndex.search``'s arrays again from ``_compact``'s."""
    keys = keys.astype(np.int64)
    return keys, np.where(keys >= 0, dists.astype(np.int64), nbits + 1)


def _compact_within(keys: np.ndarray, dists: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A search's rows cut at a distance (``hamming.within``: the neighbours
    found come first in each row) as ragged arrays: how many each row has
    (the smallest unsigned type that holds k), then their keys and distances
    in row order, narrowed as ``_compact`` narrows them. The burstiness
    check asks 64 neighbours of each inlier and counts those within the vote
    distance, mostly none or a few: the rest never leave the shard."""
    found = keys >= 0
    counts = found.sum(1).astype(np.min_scalar_type(keys.shape[1]))
    return (counts, *_narrow(keys[found], dists[found]))


def _expand_within(counts: np.ndarray, keys: np.ndarray, dists: np.ndarray, k: int,
                   nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """``hamming.within``'s (n, k) arrays again from ``_compact_within``'s."""
    found = np.arange(k)[None, :] < counts.astype(np.int64)[:, None]
    out_keys = np.full((len(counts), k), -1, np.int64)
    out_dists = np.full((len(counts), k), nbits + 1, np.int64)
    out_keys[found], out_dists[found] = keys, dists
    return out_keys, out_dists


class RemoteIndex:
    """A shard's index held by its actor (a part of ``merged.MergedIndex``).
    The parts of one merged index share ``sent``: the codes of a search are
    put in the object store once, and reach each node once, however many
    shards it holds."""

    def __init__(self, actor, name: str, nbits: int, size: int, stats: "Work", node: str,
                 driver_node: str, sent: dict, ranks_ties_by_key: bool = False,
                 encoder=None):
        self.actor, self.name, self.nbits, self.size, self.stats = actor, name, nbits, size, stats
        #: The actor's index's ``ranks_ties_by_key`` when this view was made.
        self.ranks_ties_by_key = ranks_ties_by_key
        self.node, self.driver_node, self.sent = node, driver_node, sent
        #: An index on the driver whose ``encode`` gives queries the actor's
        #: index searches as it would the codes (``ivf.EncodedQueries``), or
        #: None: the codes are sent.
        self.encoder = encoder

    def __len__(self) -> int:
        return self.size

    def search_async(self, codes, k: int, max_distance: int | None = None):
        ray = _ray()
        if self.sent.get("codes") is not codes:
            query = codes if self.encoder is None else self.encoder.encode(codes)
            self.sent.update(codes=codes, ref=ray.put(query), nodes=set(), size=query.nbytes)
            self.stats.add("driver", "query_bytes", query.nbytes)
        if self.node != self.driver_node and self.node not in self.sent["nodes"]:
            self.sent["nodes"].add(self.node)
            self.stats.add("driver", "query_bytes_across_nodes", self.sent["size"])
        ref = self.actor.search.remote(self.name, self.sent["ref"], k, max_distance)
        self.stats.add("driver", "queries", len(codes))

        def result():
            arrays = ray.get(ref)
            # Every part was asked before any answer is read (``MergedIndex``),
            # so the query is let go here: kept until the next search, the
            # last one pinned its codes' whole base array (a slice of every
            # image's picture hashes: about 330 bytes an image on the driver)
            # and its copy in the object store.
            if self.sent.get("codes") is codes:
                self.sent.clear()
            answer = sum(a.nbytes for a in arrays)
            self.stats.add("driver", "answer_bytes", answer)
            if self.node != self.driver_node:
                self.stats.add("driver", "answer_bytes_across_nodes", answer)
            if max_distance is None:
                return _expand(*arrays, self.nbits)
            return _expand_within(*arrays, k, self.nbits)
        return result


def _encoder(encodings: set, settings: Settings):
    """An index on the driver that encodes queries as every shard's index
    takes them (``ivf.IVFIndex.encode``): an IVF index of the shipped
    vocabulary, probes and nodes the settings name, when all shards' indexes have its
    encoding and it is smaller than the 32-byte code; else None (HNSW indexes,
    a vocabulary this driver lacks, or an encoding as large as the code, such
    as 16 probes with whole descriptors as signatures, 64 bytes: the codes
    themselves are sent, and each shard encodes them)."""
    if len(encodings) != 1 or None in encodings:
        return None
    from matchkit.index.ivf import ivf_index

    # (not warmed: the compiled searches, Numba's 120 MiB, load only if it encodes)
    mine = ivf_index(settings, warm=False)
    return mine if mine.encoding in encodings and mine.encoded_bytes < 32 else None


class Work:
    """Per-node counts of the work done (images extracted and the task time
    it took, pairs verified) and of the bytes handed to Ray, for
    ``report.stats["ray"]``: ``<what>_bytes`` serialised and
    ``<what>_bytes_across_nodes`` of those that left their node, for the
    records, the listing (plans and owning shards), the queries and answers,
    and the verification chunks (``features_read_bytes``: stored features
    the verification tasks read from the shards' files); and the peak RSS
    of the node's largest task worker and of its shard actor
    (``task_peak_rss_kib``, ``actor_peak_rss_kib``)."""

    def __init__(self):
        self.by_node: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, node: str, what: str, n: int) -> None:
        self.by_node[node][what] += int(n)

    def peak(self, node: str, what: str, n: int) -> None:
        """Keep the largest ``n`` seen (peak memory of a node's processes)."""
        self.by_node[node][what] = max(self.by_node[node][what], int(n))

    def to_dict(self) -> dict:
        return {node: dict(sorted(v.items())) for node, v in sorted(self.by_node.items())}
