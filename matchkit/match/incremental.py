"""Incremental matching: a gallery run redoes only what new or changed images affect.

A ``dedupe --gallery`` run keeps, in the gallery, two things per settings key
(``settings_key``: every setting that changes matching, the calibration
profile, matchkit's version):

- per image, a *record* of its own candidate search: its pHash neighbours,
  crowd distance and how far each hash variant's search reached, the pairs its
  hash and descriptor searches found (with distances and votes), and each
  query descriptor's neighbour list (image ids and distances);
- per candidate pair, its evidence as the global signals left it ("before")
  and, once local verification ran, what verification changed in it
  ("after", ``verification_json``), plus
  the same-pixels check and the relation a report settled for it.

A run brings every record up to date instead of searching again:

- a record naming an image that is gone, changed or out of the run
  (``incremental_records.Stale``): its hash search is made again where a
  hash neighbour or pair is one, its votes counted again where a vote, hit or
  near descriptor is one (dropped from its neighbour lists; a full list's
  query descriptor searched again, ``_repair_votes``), and it is searched
  again from scratch where a framed picture is one (as are new images, those
  never searched, and templated ones);
- a new image whose pHash is within the record's crowd distance, or within
  some variant's reach and the pair (or nearest looser pair) distance: it is
  merged into the record's hash search (``merge_hash_search``: its nearest
  list, pairs, loose pairs and each variant's reach, from the last few
  distances each variant's search kept), and the template check is made again
  where the image's look-alikes changed (templated images are searched again
  in full); where the record cannot tell (a tie at a reach, the image pushed
  out of a variant's search may be a kept loose pair, an extended search)
  the hash search is redone;
- descriptors: each new image's indexed descriptors ask the index which
  stored query descriptors they come within the vote distance of (in an
  approximate index, among their ``WITHIN_MAX_NEIGHBOURS`` nearest), and are
  merged into those neighbour lists as the index's own search would rank them
  (at equal distance the smaller key first, as exact and IVF searches rank
  them; in an approximate HNSW search, the one indexed last); the votes are counted
  again from the lists.

With exact searches (an index whose ``ranks_ties_by_key``: below
``hamming.EXACT_SEARCH_BELOW`` codes per index or shard, or IVF) every record
is then what a search now would return, so the candidate pairs, distances,
votes, crowd and "verify top" sets are those of a full run. Pairs between
two images whose neighbourhood did not change reuse their stored evidence
(votes patched in where only they moved); pairs touching an image whose
crowd distance changed are measured again, as are the pairs that a changed
hash search added, dropped or moved into or out of an image's nearest few
(``_note_change``; its other pairs keep their evidence); these are measured
again, keeping their stored verification when the new evidence is
the same but for the votes, on the same side of ``verify_retry_votes`` (no
templated image: content features depend on neighbours; no calibrator: it
reads the votes). A verification is looked up before it is done. Clustering
runs unchanged over this evidence, so the clusters, keepers and relations are
those of a full run. Above that size the index is an approximate (HNSW)
graph, whose answer for an unchanged image can move when others are
inserted: a stored answer is kept, so a pair's votes can differ from a fresh
run's by such noise (measured: identical clusters, keepers and relations).

Records of images outside the run are kept as markers (seen, not searched),
so a later run knows they are not new. Changing any setting, the profile or
the version gives another key; each key keeps its own state (the last
``gallery_matches.MAX_MATCH_KEYS`` keys used), so switching ``--level`` back and forth
reuses both, and nothing made under one key is read under another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping

import numpy as np

from matchkit.util.version import __version__
from matchkit.util.jsonfmt import dumps_sorted, loads
from matchkit.util.checkpoint import report
from matchkit.config import Settings
from matchkit.store.gallery import Gallery
from matchkit.store.gallery_matches import record_ids_digest
from matchkit.store.image_table import ImageTable
from matchkit.util.linequeue import LineQueue
from matchkit.index.pictures import PictureIndex, forget_picture_files
from matchkit.index.vocabulary import FILING
from matchkit.match.pairs import PairEvidence, PairMatcher
from matchkit.signals.thumbmatch import IconDecider, icon_views
from matchkit.match.incremental_hash import HashSearchUpdates
from matchkit.match.incremental_pairs import StoredPairs
from matchkit.match.incremental_records import Stale, StoredRecords
from matchkit.match.incremental_votes import StoredVotes
from matchkit.match.incremental_state import (  # noqa: F401  (re-exported)
    _CHANGEABLE, CANDIDATE, HOP, HOP_MIRRORED, PairRow, _b64, _extra_objects, _hits, _lists,
    _pack_ids, _pack_lists, _plain, _unb64, _unpack_ids, apply_verification, evidence_from_json,
    evidence_json, join_record, split_record, verification_json)
from matchkit.match.incremental_hash import (  # noqa: F401  (re-exported)
    NEAREST_ROWS, _by_distance, _nearest_distance, _phash_fields, merge_hash_search)
from matchkit.match.incremental_votes import (  # noqa: F401  (re-exported)
    PATCH_IMAGES, WITHIN_MAX_NEIGHBOURS, WITHIN_SEARCH_SLOTS, _merge_all, _merge_rows,
    _vote_fields, _within, _within_ready)
from matchkit.match.incremental_records import _NOT_NEIGHBOURHOOD  # noqa: F401  (re-exported)
from matchkit.match.incremental_pairs import (  # noqa: F401  (re-exported)
    AHEAD_IN_BACKGROUND, AHEAD_MAX_UNASKED)

#: Bump when what a record or a stored pair means changes, and when the
#: decision rules change within one matchkit version (2: recapture pictures,
#: thumbnail checks of pHash matches, recolours by histogram; 3: mirrored
#: looks and icon views made from stored features, ``store/stored.py``; 4: re-photographs
#: found by the frame around the shown picture; 5: candidates from the picture
#: inside a frame, records "fh" and "fr", ``match/framed.py``; 6: a pair's "after"
#: holds only what verification changed, ``verification_json``; 7: texts stored
#: deflated, ``store/stored_text.py``, which earlier builds of one version cannot read;
#: 8: hash searches keep their reach tails and loose pairs, "rt" and "lk", which
#: an add merges new images into, ``merge_hash_search``: an earlier build would
#: update a record and leave them behind; 9: the overlap check measures a
#: picture's texture, not its area, and pale hues decide colour agreement
#: where saturated ones cannot: stored verifications decided otherwise;
#: 10: images tied in votes at a query's cut are left out together,
#: ``candidates.tally_votes``: stored records kept the first by id; 11: the
#: overlap check counts no texture at the edge of the warped picture,
#: ``local_overlap.compare_overlap``; 12: a perspective fit from a small patch that
#: explains under half the matches is a shared part, ``evidence.relation_of``;
#: 13: the inliers' spread is measured in the frame the overlap is compared
#: in, ``local_overlap.compare_overlap``, and ``evidence.MIN_SPREAD`` chosen again;
#: 14: a record's neighbour lists stored as bytes beside its JSON,
#: ``incremental_state.split_record``, which earlier builds cannot read).
STATE_VERSION = 14
#: Steps of bringing the stored state up to date, told as phase "stored"
#: (``checkpoint.report``): stored records read, gone images found, hash
#: searches redone, votes patched, frames looked for again, new images
#: searched (phase "match" inside it), pair evidence read or made.
UPDATE_STEPS = 7
#: When more than this share of a gallery's images are new to its indexes
#: (new or changed since the stored searches), every image is searched again
#: instead of patching the stored searches; stored verifications are still
#: reused where a pair's evidence is the same. Patching grows with the new
#: descriptors' neighbourhoods: adding 5,100 images to a 5,000-image gallery
#: took 511 s and peaked at 20.5 GB RSS, where a first run of all 10,100 takes
#: about 290 s and 1.45 GB.
SEARCH_ALL_ABOVE = 0.25
#: Settings that change no stored decision: how many threads run, and the
#: burstiness check (``burst``), which is measured afresh every run after the
#: stored verifications are read (it depends on which images are in the run).
_NOT_MATCHING = ("workers", "burst_pictures", "burst_weak_pictures", "burst_weak_votes")


def settings_key(settings: Settings, calibrator=None) -> str:
    """What every stored decision depends on besides the two images: the
    matching settings (level, thresholds, features, model), the calibrated
    decision (``calibrator``, a fitted ``calibrate.PairCalibrator``), and
    matchkit's version (feature extraction and rules)."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_MATCHING}
    if values.get("vote_index") == "hnsw":  # (the default, as before the IVF index existed)
        values.pop("vote_index")
        values.pop("ivf_probes", None)
        values.pop("ivf_nodes", None)
        values.pop("ivf_vocabulary", None)
    else:  # stored IVF searches depend on how words were chosen
        values["ivf_filing"] = FILING
    if not values.get("signals"):  # (none: the default, as before signals existed)
        values.pop("signals", None)
    cal = None
    if calibrator is not None:
        cal = hashlib.sha256(json.dumps(calibrator.to_dict(), sort_keys=True,
                                        default=_plain).encode()).hexdigest()
    text = json.dumps({"settings": values, "calibrator": cal, "version": __version__,
                       "state": STATE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class IncrementalMatcher(StoredRecords, HashSearchUpdates, StoredVotes, StoredPairs,
                         PairMatcher):
    """A ``PairMatcher`` whose candidate searches, global evidence and
    verifications come from the gallery's stored state where it is still
    exact, and are computed (and stored by ``save``) where it is not.

    ``reused`` and ``verified`` count the verifications looked up and done.

    Here: what a run brings up to date (``__init__``), per-image values and
    ``save``. The rest, by what it keeps: the per-image records
    (``StoredRecords``, ``incremental_records.py``), their hash searches
    (``HashSearchUpdates``, ``incremental_hash.py``) and descriptor votes
    (``StoredVotes``, ``incremental_votes.py``), and the pair rows
    (``StoredPairs``, ``incremental_pairs.py``); the stored texts are
    ``incremental_state.py``.
    """

    def __init__(self, gallery: Gallery, ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None, *,
                 rematch: bool = False, images: ImageTable | None = None):
        report("stored", 0, UPDATE_STEPS)
        self._setup(gallery, ids, settings, calibrator, images)
        self.key = settings_key(settings, calibrator)
        self.reused = self.verified = 0
        self._told_damaged = False  # (``_damaged``: one warning a run)
        #: The run's frame-picture index, when it searched frames (saved by ``save``).
        self._pictures: PictureIndex | None = None
        ids = sorted(ids)
        current = gallery.image_digests()
        # (the digests first: the records are parsed one by one as they are
        # read, below, so that their texts are never all held at once)
        stored = {} if rematch else self._read_state(gallery.match_record_digests)
        rematch = rematch or stored is None
        stored = stored or {}
        #: Images new to the indexes since the records were made (new or changed).
        fresh = [i for i in current if i not in stored or stored[i] != current[i][0]]
        if len(fresh) > SEARCH_ALL_ABOVE * len(current):
            # (a large add: every image is searched again; the stored pair
            # rows still give their verifications where the evidence is the same)
            stored, fresh = {}, list(current)
        # The new images' descriptor search (``_patch_votes``) starts first, on
        # a worker thread, while this one reads the stored state and checks
        # the stored hash searches (it is the longest step of an add).
        new = (self._new_descriptors(fresh) if fresh and stored
               and self.settings.local_features else None)
        rows = {} if rematch else self._read_state(
            lambda key: {k: PairRow(*v) for k, v in gallery.iter_match_pairs(key)})
        records = None if rows is None else {} if not stored else self._read_state(
            lambda key: {i: join_record(loads(r), x) for i, d, r, x in
                         gallery.iter_match_records(key)
                         if i in stored and i in current and current[i][0] == d})
        if rows is None or records is None:  # (unreadable: every image is matched again)
            rematch, stored, rows, records, new = True, {}, {}, {}, None
            fresh = list(current)
        self.rematch = rematch
        self._rows: dict[tuple[int, int, int], PairRow] = rows
        self._changed_rows: set[tuple[int, int, int]] = set()
        report("stored", 1, UPDATE_STEPS)
        allowed = set(ids)
        entering = fresh + [i for i in ids if i in records and not records[i].get("run")]
        self.records, self.digests = records, current
        self._write: set[int] = set()
        #: Images whose record changed this run beyond their votes (their
        #: pairs are measured again).
        self.changed: set[int] = set()
        #: Images whose record changed only for some pairs: the other images
        #: of those pairs (measured again; ``_note_change``).
        self.partners: dict[int, set[int]] = {}
        #: Images whose votes alone changed: their stored votes, by other image.
        self.old_votes: dict[int, dict[int, float]] = {}
        #: Images whose crowd distance alone moved (with their near lists and
        #: hash pairs): the distance it was (``_note_change``).
        self.old_crowd: dict[int, int] = {}
        searched = [i for i, r in records.items() if r.get("q")]
        stale = Stale() if self._none_left(stored, records, allowed) else self._stale(searched,
                                                                                     allowed)
        full = set(stale.full)
        #: Query rows (image * ``ORB_KEY_STRIDE`` + row) searched again this
        #: run (``_repair_votes``): the new images' descriptors are in them.
        self.rows_searched = np.zeros(0, np.int64)
        if self.settings.local_features:  # (before new neighbours enter the lists)
            full |= self._repair_votes(sorted(stale.votes - full), allowed)
        else:  # (no votes to count again)
            full |= stale.votes
        report("stored", 2, UPDATE_STEPS)
        if entering:
            rest = [i for i in searched if i not in full and i not in stale.hash]
            reached = self._phash_reached(rest, entering)
            if len(entering) == len(fresh) and not self._names_any(fresh):  # (only new images)
                reached, templated = self._merge_phash(reached, fresh, allowed)
                full |= templated
            full |= self._refresh_phash(reached, allowed)
            report("stored", 3, UPDATE_STEPS)
            if self.settings.local_features:
                self._patch_votes([i for i in searched if i not in full], new, allowed,
                                  retally=len(entering) > len(fresh))
        # Records naming an image that left: their hash searches again.
        full |= self._refresh_phash(sorted(stale.hash - full), allowed)
        report("stored", 4, UPDATE_STEPS)
        # Kept images whose frames are looked for again: in the run's one
        # frame search (``_search``).
        reframe = (self._regate([i for i in searched if i not in full and i in allowed])
                   if self.settings.local_features else [])
        report("stored", 5, UPDATE_STEPS)
        for i, (digest, _) in current.items():  # markers: seen, not searched
            if i not in records or i in full or bool(records[i].get("run")) != (i in allowed):
                rec = records.get(i) if i not in full else None
                records[i] = {**(rec or {"q": 0}), "run": int(i in allowed)}
                self._write.add(i)
        #: Images searched again this run.
        self.searched = [i for i in ids if not records[i].get("q")]
        self._search(self.searched, allowed, reframe)
        self.changed.update(self.searched)
        self.plain = {}
        self.crowd = {i: records[i]["crowd"] for i in ids}
        # Icons (``thumbmatch``) are judged against each other's closest views
        # in this run: their pairs are measured again every run (from the
        # small stored icon views; cheap).
        self.icons = icon_views(self.gallery.icons(ids), self.sizes, self._pool)
        self.icon_decider = IconDecider(self.icons, [])
        self.changed.update(self.icons)
        report("stored", 6, UPDATE_STEPS)
        self.evidence = self._evidence(ids, same)
        report("stored", UPDATE_STEPS, UPDATE_STEPS)
        self._ahead: set[tuple[int, int, int]] = set()
        #: Pairs being verified in the background (``_verify_in_background``):
        #: key -> (row, evidence, future).
        self._running: dict[tuple[int, int, int], tuple] = {}
        self._background: LineQueue | None = None
        self._verify_ahead()

    def _none_left(self, stored: dict, records: dict, allowed: set[int]) -> bool:
        """Whether no image a record names can have left (so ``_stale`` would
        find nothing): every record the last run saved is here (the ids'
        digest saved with them, ``Gallery.match_record_ids``), unchanged, and
        in this run. Why that suffices: a record names only images of the
        gallery when it was made, and every image of the gallery gets a
        record in every run (markers for those outside it); an image that
        changed or left since lost its record. Why: ``_stale`` reads every
        name of every record, 0.66 s of an 11 s add of 100 images to 10,000."""
        saved = getattr(self.gallery, "match_record_ids", None)
        if saved is None or not stored or len(records) != len(stored):
            return False
        if any(i not in allowed for i in stored):
            return False
        return saved(self.key) == record_ids_digest(stored)

    def _read_state(self, read):
        """``read(self.key)``: part of the stored state; None, with a warning,
        where a stored text does not read back (a damaged or foreign row):
        the state is then ignored and replaced, as with ``rematch``."""
        try:
            return read(self.key)
        except ValueError as e:
            warnings.warn(f"gallery {self.gallery.path}: stored matching state unreadable ({e}); "
                          "matching every image again")
            return None

    # -- per-image values, kept in the records -------------------------------
    def _memo(self, image_id: int, name: str, compute):
        rec = self.records.get(image_id)
        if rec is None or not rec.get("q"):
            return compute()
        memo = rec.setdefault("memo", {})
        if name not in memo:
            memo[name] = compute()
            self._write.add(image_id)
        return memo[name]

    def picture_share(self, image_id: int) -> float:
        def compute():
            self._ensure_templated([image_id])
            return PairMatcher.picture_share(self, image_id)
        return self._memo(image_id, "share", compute)

    def lightness(self, image_id: int) -> float | None:
        return self._memo(image_id, "light", lambda: PairMatcher.lightness(self, image_id))

    def picture_fractions(self, evidence: list[PairEvidence]) -> dict[int, float]:
        out = {}
        for i in {x for ev in evidence for x in (ev.a, ev.b)}:
            def compute(i=i):
                self._ensure_templated([i])
                return PairMatcher.picture_fractions(
                    self, [PairEvidence(i, i, 0, 1.0)])[i]
            out[i] = self._memo(i, "frac", compute)
        return out

    # -- writing back ---------------------------------------------------------
    def save(self) -> None:
        """Store the records and pair rows this run made or completed (one transaction)."""
        records = _StoredForm(self, sorted(i for i in self._write if i in self.digests))
        rows = {k: self._rows[k].astuple() for k in self._changed_rows}
        self.gallery.save_match_state(self.key, records, rows, replace=self.rematch)
        if self._pictures is not None:
            self._pictures.save()
        forget_picture_files(self.gallery.path, self.gallery.match_keys())


class _StoredForm(Mapping):
    """Records of ``matcher`` as ``Gallery.save_match_state`` stores them
    (digest, JSON, lists beside it), each made when asked: the save reads
    them a part at a time, so they are never all held at once."""

    def __init__(self, matcher: IncrementalMatcher, ids: list[int]):
        self._matcher, self._ids = matcher, ids

    def __getitem__(self, i: int) -> tuple[str, str, bytes | None]:
        rest, lists = split_record(self._matcher.records[i])
        return self._matcher.digests[i][0], dumps_sorted(rest), lists

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)
