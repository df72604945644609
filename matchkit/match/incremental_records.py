"""The per-image records of incremental matching: which still hold, how one
changes, and how the images that need it are searched anew.

``StoredRecords`` finds the records naming an image that left (``_stale``),
sets a record's fields and notes which pairs that can change (``_update``,
``_note_change``), and makes new records by a full candidate and frame search
(``_search``: each enabled signal's search, ``SEARCHES``, in the signals'
order through the loop every matcher uses, ``searches.signal_steps``; and
``_framed_search``). Separate from ``match/incremental.py`` (which
decides, per run, what is brought up to date and how): the record-level work
the hash and vote updates (``incremental_hash.py``, ``incremental_votes.py``)
build on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from matchkit.util.arrays import unique
from matchkit.match.candidates import VoteDetail, phash_candidates
from matchkit.util.checkpoint import checkpoint
from matchkit.signals.hashing import PHASH_BITS
from matchkit.match.framed import framed_pairs, unframed
from matchkit.index.pictures import PictureIndex, picture_file, picture_rows
from matchkit.match.pairs import _content_features
from matchkit.match.searches import signal_steps
from matchkit.match.incremental_state import _b64, _pack_lists, _pack_probes, _unb64
from matchkit.match.incremental_hash import _phash_fields
from matchkit.match.incremental_votes import _vote_fields

#: Record fields whose change alone leaves a pair's global evidence as it was
#: (``IncrementalMatcher._update``): descriptor lists, how far searches reached,
#: votes (patched into the pairs' evidence), hits and probed words.
_NOT_NEIGHBOURHOOD = frozenset({"nb", "reach", "lreach", "rt", "lk", "vo", "hits", "pw"})


@dataclass
class Stale:
    """Stored records naming an image that left (``StoredRecords._stale``),
    by what is done again for them. Why not all searched again: a removed
    image's descriptors sit in the neighbour lists of most images (a new
    one's enter those of 8,000 of 10,000), so removing 1% of a gallery
    would search nearly all of it again."""

    #: Searched again from scratch: a framed picture names an image out of the run.
    full: set[int] = field(default_factory=set)
    #: The hash search again (``HashSearchUpdates._refresh_phash``): a hash
    #: neighbour without a record, or a hash pair out of the run.
    hash: set[int] = field(default_factory=set)
    #: The votes again (``StoredVotes._repair_votes``): a near descriptor's
    #: image without a record, or a vote or hit out of the run.
    votes: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.full or self.hash or self.votes)

    def every(self) -> set[int]:
        return self.full | self.hash | self.votes


@dataclass
class RecordRun:
    """What the searches of the images an incremental run searches again
    found so far (``StoredRecords._search``)."""

    todo: list[int]
    allowed: set[int]
    #: Kept images whose frames are looked for again (``_regate``).
    reframe: list[int]
    #: The pHash search (``candidates.phash_candidates``, per owner).
    found: object | None = None
    #: The vote search's detail: votes, hits and neighbour lists by image.
    detail: VoteDetail = field(default_factory=VoteDetail)
    #: Frame-search record fields by image (``_framed_search``).
    framed: dict[int, dict] = field(default_factory=dict)


class StoredRecords:
    """``IncrementalMatcher``'s record keeping (a mixin: it reads and sets
    the attributes ``IncrementalMatcher.__init__`` sets, such as ``records``,
    ``changed`` and ``partners``)."""

    # -- which records still hold ------------------------------------------
    def _stale(self, searched: list[int], allowed: set[int]) -> "Stale":
        """Records naming an image that left (removed, changed, out of the
        run), by what must be done again (``Stale``). Every record's named
        images are gathered flat and checked at once (a loop over every name
        took 0.4 s of a 5,000-image run; an array per record, 0.8 s of a
        10,000-image one)."""
        records, limit = self.records, self.settings.vote_max_distance
        # Owners and names, flat, by what a name that left means (and whether
        # it must still have a record, else be in the run): a hash neighbour
        # without a record or a hash pair out of the run, the hash search
        # again; a vote or hit out of the run, or a near descriptor's image
        # without a record, the votes again; a framed picture out of the run,
        # everything again. Packed ids (hits, descriptor lists) are gathered
        # as bytes and read at once.
        fields = {"near": ("hash", True), "ph": ("hash", False), "vo": ("votes", False),
                  "fr": ("full", False)}
        flat: dict[tuple[str, bool], tuple[list[int], list[int]]] = {
            key: ([], []) for key in [*fields.values(), ("votes", True)]}
        packed: list[tuple[int, bytes, bytes | None]] = []  # (owner, int32 ids, uint8 dists)
        for i in searched:
            checkpoint()
            r = records[i]
            for name, key in fields.items():
                names = [x[0] for x in r.get(name, ())]
                flat[key][1].extend(names)
                flat[key][0].extend([i] * len(names))
            hits = r["hits"]
            if hits.__class__ is bytes:  # (as ``join_record`` reads every stored form)
                packed.append((i, hits, None))
            else:  # (a JSON list: earlier builds)
                flat["votes", False][1].extend(hits)
                flat["votes", False][0].extend([i] * len(hits))
            if "nb" in r:  # a near descriptor of a gone image held a place
                _, ids, dists = r["nb"]
                packed.append((i, ids, dists))
        arrays = {key: (np.asarray(owner, np.int64), np.asarray(names, np.int64))
                  for key, (owner, names) in flat.items()}
        for need_record, rows in ((False, [p for p in packed if p[2] is None]),
                                  (True, [p for p in packed if p[2] is not None])):
            if not rows:
                continue
            ids = np.frombuffer(b"".join(p[1] for p in rows), "<i4").astype(np.int64)
            owner = np.repeat(np.array([p[0] for p in rows], np.int64),
                              [len(p[1]) // 4 for p in rows])
            if need_record:
                near_enough = np.frombuffer(b"".join(p[2] for p in rows), np.uint8) <= limit
                ids, owner = ids[near_enough], owner[near_enough]
            was = arrays["votes", need_record]
            arrays["votes", need_record] = (np.concatenate([was[0], owner]),
                                            np.concatenate([was[1], ids]))
        out = Stale()
        known = {need: np.fromiter(ids, np.int64, len(ids))
                 for need, ids in ((True, records), (False, allowed))}
        for (what, need_record), (owner, names) in arrays.items():
            if len(owner):
                getattr(out, what).update(
                    unique(owner[~np.isin(names, known[need_record])]).tolist())
        out.hash -= out.full
        out.votes -= out.full
        return out

    # -- changing a record -------------------------------------------------
    def _update(self, image_id: int, fields: dict) -> None:
        """Set fields of a record. If its hash neighbourhood or pairs changed,
        the pairs that can change are measured again (``_note_change``); votes
        are patched into its pairs' evidence (``_evidence``); neighbour lists
        alone change nothing. (Its per-image values, ``memo``, depend on the
        image alone.)"""
        rec = self.records[image_id]
        if any(rec.get(k) != v for k, v in fields.items()):
            moved = [k for k, v in fields.items()
                     if k not in _NOT_NEIGHBOURHOOD and rec.get(k) != v]
            if moved:
                self._note_change(image_id, rec, fields, moved)
            rec.update(fields)
            self._write.add(image_id)

    def _note_change(self, i: int, rec: dict, fields: dict, moved: list[str]) -> None:
        """What a change of image ``i``'s hash search (fields ``moved``, from
        ``rec`` to ``fields``) can alter among its pairs' global evidence:
        all of them when its crowd distance changed (the hash rule and the
        calibrated decision read it) or anything but its nearest list and
        hash pairs; else only the pairs to images whose hash distance entry
        changed (new pairs) or that entered or left its ``verify_top``
        nearest (``mark_verifiable``). A pair's evidence depends on nothing
        else of the record (``global_evidence``). A crowd distance that
        moved is kept as it was (``old_crowd``): without a calibrator it
        decides only a few comparisons of each pair's hash distance, which
        ``StoredPairs._crowd_moves`` makes again (a 1% add to 100,000
        images moved 5,299 crowds and measured 117,474 pairs again)."""
        if self.calibrator is not None or any(k not in ("near", "ph", "crowd") for k in moved):
            self.changed.add(i)
            return
        if "crowd" in moved:
            self.old_crowd.setdefault(i, rec.get("crowd", PHASH_BITS))
        partners = self.partners.setdefault(i, set())
        if "near" in moved:
            top = self.settings.verify_top
            partners.update({j for j, _ in rec.get("near", [])[:top]}
                            ^ {j for j, _ in fields["near"][:top]})
        if "ph" in moved:
            old, new = dict(map(tuple, rec.get("ph", []))), dict(map(tuple, fields["ph"]))
            partners.update(j for j in old.keys() | new.keys() if old.get(j) != new.get(j))

    # -- searching the images that need it ---------------------------------
    #: Built-in signal -> the method that runs its search for the images
    #: searched again (``searches.signal_steps``: the signals' order,
    #: enabled ones only). Icons have none here: every run measures their
    #: pairs afresh from the stored views (``IncrementalMatcher.__init__``).
    SEARCHES = {"phash": "_phash_records", "local": "_local_records"}

    def _search(self, todo: list[int], allowed: set[int], reframe: list[int]) -> None:
        """Candidate searches of ``todo`` against the whole gallery, as records.
        Its frame search also serves the kept images ``reframe`` (``_regate``),
        which have one of their own when nothing is searched."""
        if not todo:
            if reframe:
                self._framed_search([], allowed, {}, reframe)
            return
        run = RecordRun(todo, allowed, reframe)
        for step in signal_steps(self.SEARCHES, self.settings):
            getattr(self, step)(run)
        s = self.settings
        for i in todo:
            rec = {"q": 1, "run": 1, **_phash_fields(run.found, i), **_vote_fields(run.detail, i),
                   "tmpl": int(i in self.templated)}
            if s.local_features:
                rec.update(run.framed.get(i, {}))
            if i in run.detail.lists:
                rec["nb"] = _pack_lists(*run.detail.lists[i])
            if i in run.detail.probes:  # (packed once: the search's words let go)
                rec["pw"] = _pack_probes(run.detail.probes.pop(i))
            if i in self.templated:
                rec["tdesc"] = _b64(self.templated[i].desc[: s.query_features])
            self.records[i] = rec
            self._write.add(i)

    def _phash_records(self, run: "RecordRun") -> None:
        """The pHash search of the images searched again (per owner: what
        each image's record keeps of it, ``_phash_fields``)."""
        s, g = self.settings, self.gallery
        run.found = phash_candidates(g.phash_index, run.todo, g.phash_variants(run.todo),
                                     neighbours=s.neighbours, allowed=run.allowed,
                                     per_owner=True, **self._phash_limits())

    def _local_records(self, run: "RecordRun") -> None:
        """The local-feature search of the images searched again: template
        content where a shared frame shows (from the pHash search's nearest
        images), descriptor votes with their neighbour lists, and the
        pictures inside frames (which also serves ``run.reframe``)."""
        s = self.settings
        self.templated.update(_content_features(run.todo, self.paths, run.found, self.cache, s,
                                                self._masks, self._pool))
        self.vote_search(run.todo, run.allowed, run.detail)
        run.framed = self._framed_search(run.todo, run.allowed, run.found.nearest, run.reframe)

    def _framed_search(self, todo: list[int], allowed: set[int], nearest: dict[int, list],
                       again: list[int]) -> dict[int, dict]:
        """Record fields of ``framed`` pairs for ``todo``: "fh", the plain
        hashes of the pictures inside its frames; "fr", the images those pair
        it with, by distance; "fx", whether its frames were looked for (not
        ``framed.unframed`` by its ``nearest`` images). Searched against every
        image of the run (other images' pictures from their records), in both
        directions, so an image entering later finds the pairs of the ones
        searched before.

        The kept images ``again`` (``_regate``, by the nearest images of
        their records) join the same search, and their records are updated
        here: each search needs the pictures of every image of the run
        indexed (66,640 after an add of 500 images to 50,500), kept between
        runs (``PictureIndex``), saved with the records (``save``)."""
        todo = todo + again
        nearest = {**nearest, **{i: self.records[i]["near"] for i in again}}
        look = {i for i in todo if not unframed(nearest.get(i), self.settings)}
        pictures = self.picture_hashes(sorted(look))
        asked = set(todo)
        for i in allowed:
            fh = self.records.get(i, {}).get("fh") if i not in asked else None
            if fh:
                pictures[i] = _unb64(fh).reshape(-1, 1, PHASH_BITS // 8)
        plain = dict(zip(todo, self.gallery.phash_variants(todo)))
        # (kept beside the gallery: an add indexes only its own pictures)
        self._pictures = PictureIndex(picture_file(self.gallery.path, self.key),
                                      *picture_rows(pictures))
        found = framed_pairs(self.gallery.phash_index, pictures, plain, todo, allowed,
                             picture_index=self._pictures.index)
        out = {}
        for i in todo:
            fields = {"fr": sorted([j, d] for j, d in found.get(i, {}).items()),
                      "fx": int(i in look)}
            fields["fh"] = _b64(pictures[i][:, 0]) if i in pictures else ""
            out[i] = fields
        for i in again:
            self._update(i, out[i])
        return out

    def _regate(self, kept: list[int]) -> list[int]:
        """The kept images whose frames are looked for again, where their hash
        neighbours now say otherwise (``framed.unframed``: a copy entered near
        them), as a search from scratch would (``_framed_search``)."""
        return [i for i in kept if bool(self.records[i].get("fx"))
                == unframed(self.records[i]["near"], self.settings)]

    def _ensure_templated(self, ids) -> None:
        """Template-content features of clean images that need them (a
        verification or keeper choice touching them), from their records."""
        from matchkit.match.candidates import Candidates

        todo = [i for i in ids if self.records.get(i, {}).get("tmpl") and i not in self.templated]
        if todo:
            found = Candidates(nearest={i: [tuple(x) for x in self.records[i]["near"]]
                                        for i in todo})
            self.templated.update(_content_features(todo, self.paths, found, self.cache,
                                                    self.settings, self._masks, self._pool))
