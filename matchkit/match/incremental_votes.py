"""Stored descriptor votes kept current: new descriptors merged into stored lists.

An image's record keeps each query descriptor's neighbour list (image ids and
distances) and the votes counted from them (``_vote_fields``). An add asks
which stored descriptors each new one comes near (``_within``), merges those
into the lists as the index's own search would rank them (``_merge_rows``,
``_merge_all``) and counts the votes again (``StoredVotes._patch_votes``).
Separate from ``match/incremental.py``: the descriptor side of an update, apart
from the hash searches (``incremental_hash.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from matchkit.util.arrays import unique
from matchkit.match.candidates import VoteDetail, search_in_chunks, tally_votes
from matchkit.store.gallery import ORB_KEY_STRIDE
from matchkit.index.hamming import HammingIndex, transient_index
from matchkit.index.ivf import IVFIndex, ivf_index
from matchkit.index import compiled
from matchkit.index.ivf_probed import FiledEntries, reached
from matchkit.match.incremental_state import _lists, _pack_ids, _pack_lists, _probes, _unb64

#: In an approximate (HNSW) descriptor index, a new descriptor is merged into
#: the neighbour lists of at most this many of its nearest stored descriptors
#: (``_within``), not of every one within the vote distance: its search from
#: the new side is no more exact than theirs, and the few descriptors that
#: lie near thousands of others (flat, generic patches) cost most of an add.
#: Measured on 1% added to the scale set's galleries (RESULTS "incremental
#: add: the reverse search's cap"): at 10,100 images the report of a run from
#: scratch down to a cap of 64; at 50,500 + 500, 256 against 1,024: the same
#: clusters, keepers, relations and pairs (the vote counts shown differ in 25
#: of 2,446 clusters), 35-60 s less CPU; 64 changed 4 clusters.
WITHIN_MAX_NEIGHBOURS = 256


def _vote_fields(detail: VoteDetail, i: int) -> dict:
    """What an image's record keeps of its descriptor votes."""
    return {"vo": sorted([j, v] for j, v in detail.by_owner.get(i, {}).items()),
            "hits": _pack_ids(detail.hits.get(i, []))}


def _last_distances(rec: dict, rows: int) -> np.ndarray:
    """The distance of the last neighbour in each of a record's ``rows``
    neighbour lists: a new neighbour farther than it cannot enter the list
    (``_merge_all``). 255 (none) where the lists do not have those rows."""
    dists = _lists(rec)[1]
    return dists[:, -1] if len(dists) == rows else np.full(rows, 255, np.uint8)


def _merge_rows(ids: np.ndarray, dists: np.ndarray, found: np.ndarray, *,
                by_key: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists (ids, dists: rows x k) with new neighbours merged in:
    ``found`` rows are (row, distance, descriptor key). Nearest first; at
    equal distance the descriptor indexed last ranks first, as an approximate
    HNSW search ranks them (new ones were indexed after every stored one);
    ``by_key``: the smaller key first, as exact and IVF searches rank them."""
    k = ids.shape[1]
    found = found[np.lexsort((found[:, 2] if by_key else -found[:, 2], found[:, 1],
                              found[:, 0]))]
    rows, start = np.unique(found[:, 0], return_index=True)
    pos = np.arange(len(found)) - np.repeat(start, np.diff(np.append(start, len(found))))
    width = int(pos.max()) + 1
    slot = np.searchsorted(rows, found[:, 0])
    new_ids = np.full((len(rows), width), -1, np.int64)
    new_d = np.full((len(rows), width), 1 << 20, np.int64)  # (padding: after every stored entry)
    new_ids[slot, pos] = found[:, 2] // ORB_KEY_STRIDE
    new_d[slot, pos] = found[:, 1]
    all_ids = np.concatenate([new_ids, ids[rows].astype(np.int64)], 1)
    all_d = np.concatenate([new_d, dists[rows].astype(np.int64)], 1)
    if by_key:  # (equal distance: smaller image id, i.e. smaller key, first; none last)
        order = np.lexsort((np.where(all_ids < 0, np.iinfo(np.int64).max, all_ids), all_d),
                           axis=1)[:, :k]
    else:
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    ids, dists = ids.copy(), dists.copy()
    ids[rows] = np.take_along_axis(all_ids, order, 1)
    dists[rows] = np.take_along_axis(all_d, order, 1)
    return ids, dists


def _merge_all(lists: dict[int, tuple[np.ndarray, np.ndarray]], hits: np.ndarray, *,
               by_key: bool = False) -> list[int]:
    """Merge new neighbours into the lists of every image at once (as
    ``_merge_rows`` of each image's lists would): ``hits`` rows are (image,
    its descriptor row, distance, new descriptor key); rows an image does not
    have are ignored. Replaces the lists that changed in ``lists`` and
    returns those images, ascending (else every new descriptor was farther
    than its lists). ``by_key``: ties ordered as ``_merge_rows`` says."""
    images = unique(hits[:, 0]).tolist()
    if not images:
        return []
    touched: list[int] = []
    by_width: dict[int, list[int]] = {}
    for j in images:
        by_width.setdefault(lists[j][0].shape[1], []).append(j)
    for group in by_width.values():  # (one group: every list has vote_neighbours columns)
        counts = np.array([len(lists[j][0]) for j in group], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        at = np.searchsorted(group, hits[:, 0])
        mine = (at < len(group)) & (np.asarray(group, np.int64)[np.minimum(at, len(group) - 1)]
                                    == hits[:, 0])
        part, at = hits[mine], at[mine]
        part = part[part[:, 1] < counts[at]]
        if not len(part):
            continue
        ids = np.concatenate([lists[j][0] for j in group])
        dists = np.concatenate([lists[j][1] for j in group])
        found = np.stack([starts[np.searchsorted(group, part[:, 0])] + part[:, 1],
                          part[:, 2], part[:, 3]], 1)
        # A neighbour farther than a list's last (of its k, all stored before
        # it) never enters it: most of a crowded descriptor's many neighbours.
        found = found[found[:, 1] <= dists[found[:, 0], -1]]
        if not len(found):
            continue
        new_ids, new_d = _merge_rows(ids, dists, found, by_key=by_key)
        moved = np.nonzero((new_ids != ids).any(1) | (new_d != dists).any(1))[0]
        for n in unique(np.searchsorted(starts, moved, "right") - 1).tolist():
            j, a = group[n], int(starts[n])
            lists[j] = (new_ids[a:a + counts[n]], new_d[a:a + counts[n]])
            touched.append(j)
    return sorted(touched)


def _within(index: HammingIndex, queries: np.ndarray, limit: int, max_k: int | None = None):
    """(query row, key, distance) rows (int64, n x 3) of every indexed code
    within ``limit`` of each query (the neighbour count grows while the
    farthest is still within; up to ``max_k`` neighbours when given)."""
    rows, k = np.arange(len(queries)), 16
    found = []
    while len(rows) and len(index):
        asked = min(k, len(index))
        keys, dists = search_in_chunks(index, queries[rows], asked,
                                       rows=WITHIN_SEARCH_SLOTS // asked)
        ok = (keys >= 0) & (dists <= limit)
        more = ok[:, -1]
        last = not more.any() or k >= len(index) or (max_k is not None and k >= max_k)
        done = ok & ~more[:, None] if not last else ok  # (rows searched again: later)
        r, c = np.nonzero(done)
        found.append(np.stack([rows[r], keys[r, c], dists[r, c]], 1))
        if last:
            break
        rows, k = rows[more], k * 4
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


#: Neighbour slots (query rows x k) asked of the index in one search: its
#: result arrays and their copies cost about 60 bytes a slot, and an add asks
#: each new descriptor for up to ``WITHIN_MAX_NEIGHBOURS`` (a 1% add to
#: 10,000 images: 10,000 descriptors; unchunked, that step peaked 76 MB higher).
WITHIN_SEARCH_SLOTS = 1 << 20


#: Stored images whose neighbour lists an add merges and counts at once
#: (``IncrementalMatcher._patch_votes``). All at once, the merge and count of
#: a 1% add to 10,000 images peaked at 1,080 MB; in parts, 833 MB.
PATCH_IMAGES = 4096


def _within_ready(ready: Callable[[], HammingIndex], queries: np.ndarray, limit: int):
    """``_within`` over the index ``ready()`` gives, up to
    ``WITHIN_MAX_NEIGHBOURS`` each from an approximate one."""
    index = ready()
    return _within(index, queries, limit,
                   None if index.ranks_ties_by_key else WITHIN_MAX_NEIGHBOURS)


def _queries_indexed(settings) -> bool:
    """Whether every stored image's query descriptors are also its entries
    in the descriptor index (its first ``query_features`` of the
    ``index_features`` indexed), so an add can find them there."""
    return settings.query_features <= settings.index_features


class StoredVotes:
    """``IncrementalMatcher``'s vote patching (a mixin: it reads the
    attributes ``IncrementalMatcher.__init__`` sets, such as ``records`` and
    ``old_votes``, and changes records through ``_update``,
    ``incremental_records.py``)."""

    def _new_descriptors(self, fresh: list[int]):
        """The index descriptors of the images new to the index (keys and
        codes), and the search that finds every indexed descriptor each comes
        near (``_within``), started on a worker thread (a function giving
        its result); None without any descriptor.
        (Asked from the new side only where stored images' query descriptors
        are in the index, see ``_patch_votes``.)"""
        s = self.settings
        # (Through the cache: the new images' own search reads them next.)
        new = [(i, lf[0].desc[: s.index_features]) for i, lf in
               ((i, self.cache.get(i)) for i in fresh) if lf is not None]
        new = [(i, d) for i, d in new if len(d)]
        if not new:
            return None
        keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in new])
        descs = np.concatenate([d for _, d in new])
        near = None
        if _queries_indexed(s) and s.vote_index != "ivf":
            # (the index as soon as the add has put the new descriptors in:
            # ``Gallery.index_in_background``; meanwhile this thread goes on)
            search = functools.partial(_within_ready, self.gallery.orb_index_ready(), descs,
                                       s.vote_max_distance)
            near = self._pool.submit(search).result if self._pool is not None else search
        return keys, descs, near

    def _patch_votes(self, todo: list[int], new, allowed: set[int], retally: bool) -> None:
        """Votes of ``todo`` as a search now would give them: each stored
        neighbour list merged with the descriptors of the images new to the
        index (``new``: ``_new_descriptors``) that come near enough to count
        (within the vote distance), then counted again over the current run
        (all of ``todo`` if ``retally``: images joined the run; else only
        those whose lists changed)."""
        s = self.settings
        todo = sorted(i for i in todo if "nb" in self.records[i])
        if not todo:
            return
        hits = []  # (stored image, its descriptor row, distance, new descriptor key)
        if new is not None:
            keys, descs, near = new
            # (IVF: a query looks in several words, an entry sits in one, so
            # "near" is not symmetric: every stored image asks the new ones,
            # from the words its queries probed where its record keeps them.)
            ivf = s.vote_index == "ivf"
            plain = np.array(sorted(i for i in todo if near is not None
                                    and not self.records[i].get("tdesc")), np.int64)
            # Stored images' query descriptors are in the index: ask from the
            # new side which of them a new descriptor comes near.
            near = near() if near is not None else np.zeros((0, 3), np.int64)
            j = near[:, 1] // ORB_KEY_STRIDE
            mine = np.isin(j, plain)
            near, j = near[mine], j[mine]
            hits.append(np.stack([j, near[:, 1] % ORB_KEY_STRIDE, near[:, 2],
                                  keys[near[:, 0]]], 1))
            del near, j, mine
            # The rest (content-only features of templated images) ask the new ones.
            in_plain = set(plain.tolist())
            others = [i for i in todo if i not in in_plain]
            if others and ivf:
                found, others = self._probed_hits(others, keys, descs)
                hits.append(found)
            if others:
                if ivf:
                    small = ivf_index(s)  # (the gallery's may be shards' merged)
                    small.add(keys, descs, replace=False)
                else:
                    small = transient_index(keys, descs, 256)
                queries = self._query_descriptors(others)
                owners = np.concatenate([np.full(len(queries[i]), i) for i in others])
                ranks = np.concatenate([np.arange(len(queries[i])) for i in others])
                near = _within(small, np.concatenate([queries[i] for i in others]),
                               s.vote_max_distance)
                hits.append(np.stack([owners[near[:, 0]], ranks[near[:, 0]], near[:, 2],
                                      near[:, 1]], 1))
        hits = np.concatenate(hits) if hits else np.zeros((0, 4), np.int64)
        if len(self.rows_searched):  # (searched again: they hold the new ones, ``_repair_votes``)
            hits = hits[~np.isin(hits[:, 0] * ORB_KEY_STRIDE + hits[:, 1], self.rows_searched)]
        hits = hits[np.argsort(hits[:, 0], kind="stable")]
        # In parts of the stored images (an image's lists and votes depend on
        # its own hits alone): the merge and the count hold a few arrays the
        # size of the lists and hits they are given.
        ends = np.searchsorted(hits[:, 0], todo, "right")
        for start in range(0, len(todo), PATCH_IMAGES):
            part = todo[start:start + PATCH_IMAGES]
            first = int(ends[start - 1]) if start else 0
            self._patch_part(part, hits[first:int(ends[start + len(part) - 1])],
                             allowed, retally)

    def _probed_hits(self, ids: list[int], keys: np.ndarray, descs: np.ndarray
                     ) -> tuple[np.ndarray, list[int]]:
        """IVF: ``_patch_votes``'s hits of the stored images ``ids`` whose
        records keep the words their queries probed ("pw"), found from those
        words (``ivf_probed.reached``) instead of assigning the queries to
        words again; returns (those hits, the images left to ask the new
        descriptors themselves)."""
        s, index = self.settings, self.gallery.orb_index
        none = np.zeros((0, 4), np.int64)
        probed = [i for i in ids if "pw" in self.records[i] and not self.records[i].get("tdesc")]
        if not probed or not isinstance(index, IVFIndex) or not _queries_indexed(s):
            return none, ids
        filed = FiledEntries.of(index, keys, descs)
        found = []
        # (compiled, the comparisons hold no temporaries: all images at once,
        # so the stored queries' signatures are looked up once)
        step = len(probed) if compiled.AVAILABLE else PATCH_IMAGES
        for start in range(0, len(probed), step):
            part = probed[start:start + step]
            words = {i: _probes(self.records[i]) for i in part}
            rows = reached(index, words, filed, s.vote_max_distance, ORB_KEY_STRIDE,
                           {i: _last_distances(self.records[i], len(words[i])) for i in part})
            if rows is None:  # (a query's entry is not indexed: ask them all as before)
                return none, ids
            found.append(rows)
        done = set(probed)
        return np.concatenate(found), [i for i in ids if i not in done]

    def _patch_part(self, part: list[int], hits: np.ndarray, allowed: set[int],
                    retally: bool) -> None:
        """``_patch_votes`` of the images ``part`` (ascending) and their ``hits``."""
        lists = {i: _lists(self.records[i]) for i in part}
        touched = _merge_all(lists, hits, by_key=self.gallery.orb_index.ranks_ties_by_key)
        self._count_again(part if retally else touched, lists, allowed)

    def _count_again(self, ids: list[int], lists: dict[int, tuple[np.ndarray, np.ndarray]],
                     allowed: set[int]) -> None:
        """Votes of ``ids`` counted from their neighbour ``lists`` over the
        images ``allowed``, set in their records with the lists; the stored
        votes of those whose votes changed are kept (``old_votes``: the
        first ones this run changed, which their stored pairs were made with)."""
        if not ids:
            return
        owners = np.concatenate([np.full(len(lists[i][0]), i, np.int64) for i in ids])
        detail = VoteDetail()
        tally_votes(owners, np.concatenate([lists[i][0] for i in ids]).astype(np.int64),
                    np.concatenate([lists[i][1] for i in ids]).astype(np.int64),
                    allowed=allowed, detail=detail, **{k: v for k, v in self._vote_limits().items()
                                                       if k != "neighbours"})
        for i in ids:
            old = self.records[i].get("vo")
            self._update(i, {**_vote_fields(detail, i), "nb": _pack_lists(*lists[i])})
            if self.records[i]["vo"] != old and i not in self.old_votes:
                self.old_votes[i] = dict(map(tuple, old or []))

    def _repair_votes(self, todo: list[int], allowed: set[int]) -> set[int]:
        """Votes of the stored images ``todo`` (``Stale.votes``: their lists
        or votes name an image that left) as a search now would give them;
        returns the images that must be searched in full instead (templated
        ones, whose queries are content features; those outside the run or
        without features).

        A list entry of an image without a record (gone or changed) is
        dropped; where the list was full (every slot taken) and that entry
        was within the vote distance, the next neighbour would have entered,
        unknown here: that query descriptor alone is searched again
        (``rows_searched``; it finds the new images' descriptors too, so
        ``_patch_votes`` merges none into it). The votes are then counted
        again over this run's images (``_count_again``). Non-full lists: a
        search finds every entry within the vote distance in its probed
        words, so dropping is what it would give. Before ``_patch_votes``:
        after it, a list holds the new descriptors of a changed image under
        the id its old ones had."""
        s, records = self.settings, self.records
        full = {i for i in todo if i not in allowed or i not in self.paths or "nb" not in records[i]
                or records[i].get("tmpl") or records[i].get("tdesc")}
        todo = [i for i in todo if i not in full]
        if not todo:
            return full
        # (a table by image id, looked up per list entry: not ``np.isin``
        # against every record once per image)
        known = np.fromiter(records, np.int64, len(records))
        have = np.zeros(int(known.max()) + 2, bool)  # (the last: ids past every record)
        have[known] = True
        limit, k = s.vote_max_distance, s.vote_neighbours
        for start in range(0, len(todo), PATCH_IMAGES):
            part = todo[start:start + PATCH_IMAGES]
            lists, again = {}, {}
            for i in part:
                ids, dists = _lists(records[i])
                gone = (ids >= 0) & ~have[np.clip(ids, -1, len(have) - 1)]
                if gone.any():
                    rows = np.flatnonzero((gone & (dists <= limit)).any(1) & (ids >= 0).all(1))
                    if len(rows) and ids.shape[1] != k:  # (lists of other settings)
                        full.add(i)
                        continue
                    if len(rows):
                        again[i] = rows
                    order = np.argsort(gone, axis=1, kind="stable")  # (kept ones first, in order)
                    ids = np.take_along_axis(ids, order, 1)
                    dists = np.take_along_axis(dists, order, 1)
                    left = np.take_along_axis(gone, order, 1)
                    ids, dists = np.where(left, -1, ids), np.where(left, 255, dists)
                lists[i] = (np.asarray(ids, np.int32), np.asarray(dists, np.uint8))
            if again:
                queries = self._query_descriptors(list(again))
                lost = [i for i, rows in again.items() if len(queries[i]) <= rows.max()]
                full.update(lost)
                for i in lost:
                    del again[i], lists[i]
            part = [i for i in part if i in lists]
            if again:
                desc = np.concatenate([queries[i][rows] for i, rows in again.items()])
                keys, dists = search_in_chunks(self.gallery.orb_index, desc, k,
                                               max_distance=limit)
                self.rows_searched = np.concatenate([self.rows_searched, *(
                    i * ORB_KEY_STRIDE + rows for i, rows in again.items())])
                other = np.where(keys >= 0, keys // ORB_KEY_STRIDE, -1).astype(np.int32)
                near = np.minimum(dists, 255).astype(np.uint8)
                at = 0
                for i, rows in again.items():
                    ids, d = lists[i][0].copy(), lists[i][1].copy()
                    ids[rows], d[rows] = other[at:at + len(rows)], near[at:at + len(rows)]
                    lists[i] = (ids, d)
                    at += len(rows)
            self._count_again(part, lists, allowed)
        return full

    def _query_descriptors(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The descriptors each stored image voted with (content-only ones for
        templated images, kept in their records)."""
        out = {}
        for i in ids:
            r = self.records[i]
            if r.get("tdesc"):
                out[i] = _unb64(r["tdesc"]).reshape(-1, 32)
            else:
                lf = self.cache.get(i)
                out[i] = (lf[0].desc[: self.settings.query_features] if lf is not None
                          else np.zeros((0, 32), np.uint8))
        return out
