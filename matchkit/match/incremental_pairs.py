"""The stored pairs of incremental matching: evidence, verifications, relations.

``StoredPairs`` gives each candidate pair its evidence from the stored pair
row where the pair's images and votes did not move, and measures it again
where they did (``_evidence``); looks a verification, same-pixels check or
settled relation up before doing it, and stores what it does; and verifies
a run's new pending pairs ahead, in batches or in the background, where
earlier runs asked for nearly all theirs (``_verify_ahead``). Separate from
``match/incremental.py``: everything kept per pair (``match_pairs``), apart from
the per-image records (``incremental_records.py``).
"""

from __future__ import annotations

import warnings
from collections import ChainMap

from matchkit.util.jsonfmt import loads
from matchkit.util.checkpoint import report
from matchkit.util.linequeue import LineQueue
from matchkit.match.pairs import VERIFY_BATCH, PairEvidence, PairMatcher, mark_verifiable
from matchkit.match.evidence import hash_rule_by_distance
from matchkit.match.verification import mirror_worth_trying
from matchkit.signals.hashing import closer_crowd, crowd_distance
from matchkit.signals.thumbmatch import icon_candidates
from matchkit.match.incremental_state import (CANDIDATE, HOP, HOP_MIRRORED, PairRow,
                                              apply_verification, evidence_from_json,
                                              evidence_json, verification_json)

#: Verify a run's new pending pairs ahead (``IncrementalMatcher._verify_ahead``)
#: only if earlier runs left at most this share of their pending pairs
#: unasked (5,000 scale-set images: 41 of 50,052, 0.1%; 2,000 transformed-set
#: images: 7,707 of 9,185, 84%).
AHEAD_MAX_UNASKED = 0.1
#: At most this many pairs are verified ahead in the background, while
#: clustering starts (``IncrementalMatcher._verify_in_background``); more are
#: verified ahead in batches before it (their features would all be held).
AHEAD_IN_BACKGROUND = 4096


class StoredPairs:
    """``IncrementalMatcher``'s stored pair rows (a mixin: it reads and sets
    the attributes ``IncrementalMatcher.__init__`` sets, such as ``_rows``,
    ``_changed_rows`` and ``records``; its ``super()`` calls reach
    ``PairMatcher``)."""

    # -- evidence -----------------------------------------------------------
    def _evidence(self, ids: list[int], same: dict[int, int] | None) -> list[PairEvidence]:
        s, records = self.settings, self.records
        pairs: dict[tuple[int, int], int] = {}
        votes: dict[tuple[int, int], float] = {}
        top, vo = {}, {}
        for q in ids:
            r = records[q]
            vo[q] = dict(map(tuple, r["vo"]))
            for j, d in r["ph"]:
                p = (q, j) if q < j else (j, q)
                if d < pairs.get(p, 1 << 30):
                    pairs[p] = d
            for j, v in r["vo"]:
                p = (q, j) if q < j else (j, q)
                votes[p] = max(votes.get(p, 0.0), v)
            top[q] = {j for j, _ in r["near"][:s.verify_top]}
        for q in ids:  # ``framed``: the picture inside a frame (worth verifying)
            for j, _ in records[q].get("fr", ()):
                pairs.setdefault((q, j) if q < j else (j, q), -1)
                top[q].add(j)
        for p in votes:
            pairs.setdefault(p, -1)
        for p in icon_candidates(self.icons):
            pairs.setdefault(p, -1)
        changed, old_votes, partners = self.changed, self.old_votes, self.partners
        old_crowd = self.old_crowd
        #: Stored pending pairs that earlier runs never asked to verify, of all.
        self._unasked = [0, 0]
        self.templated_flags = {i for i in ids if records[i].get("tmpl")}
        keep: list[PairEvidence] = []
        fresh: dict[tuple[int, int], int] = {}
        for (a, b), d in pairs.items():
            if same is not None and same.get(a, a) == same.get(b, b):
                continue
            row = self._rows.get((a, b, CANDIDATE))
            if (row is None or a in changed or b in changed
                    or b in partners.get(a, ()) or a in partners.get(b, ())):
                fresh[(a, b)] = d
            elif (a in old_crowd or b in old_crowd) and self._crowd_moves(a, b, row, top):
                fresh[(a, b)] = d
            elif (a in old_votes or b in old_votes) and votes.get((a, b), 0.0) != max(
                    old_votes.get(a, vo[a]).get(b, 0.0), old_votes.get(b, vo[b]).get(a, 0.0)):
                if self.calibrator is not None:  # (the votes are one of its features)
                    fresh[(a, b)] = d
                    continue
                # Only the votes changed (a new image took a share): the same
                # evidence with the new votes, as a new measurement would give.
                ev = self._stored_evidence((a, b), row)
                if ev is None:
                    fresh[(a, b)] = d
                    continue
                ev.votes = votes.get((a, b), 0.0)
                mark_verifiable(ev, top, s, self.pair_crowd(ev))
                ev.pending = ev.extra["verifiable"] and not ev.rule
                self._replace_row(ev, row)
                if self._rows[(a, b, CANDIDATE)].live:
                    keep.append(ev)
            elif row.live:  # (the others cannot change any cluster)
                ev = self._stored_evidence((a, b), row)
                if ev is None:
                    fresh[(a, b)] = d
                    continue
                keep.append(ev)
                if ev.pending:  # (how many earlier runs never asked for: ``_verify_ahead``)
                    self._unasked[0] += row.after is None
                    self._unasked[1] += 1
        need = sorted({i for p in fresh for i in p})
        self.plain.update(zip(need, self.gallery.phash_variants(need)))
        self._ensure_templated(need)  # "template" evidence: who is templated
        made = self.global_evidence(fresh, votes, top, same) if fresh else []
        for ev in made:
            self._replace_row(ev, self._rows.get((ev.a, ev.b, CANDIDATE)))
        return sorted(keep + made, key=lambda ev: (ev.a, ev.b))

    def _crowd_moves(self, a: int, b: int, row: PairRow, top: dict[int, set[int]]) -> bool:
        """Whether the crowd distances that moved this run (``old_crowd``) change
        what pair (a, b)'s global evidence decides, so that it must be measured
        again. Without a calibrator a pair's crowd distance enters three
        decisions, each asked here of its own function with the old and the
        new distances: the hash rule (``evidence.hash_rule_by_distance``),
        whether the pair is worth verifying (``evidence.mark_verifiable``)
        and whether verification also looks at it mirrored
        (``verification.mirror_worth_trying``). Where only the last moves,
        the evidence stands and its stored verification is dropped."""
        s, crowd = self.settings, self.crowd
        was = ChainMap({x: self.old_crowd[x] for x in (a, b)
                        if x in self.old_crowd and x in crowd}, crowd)
        if closer_crowd(a, b, crowd) == closer_crowd(a, b, was):
            return False
        try:
            ev = evidence_from_json(row.before)
        except (ValueError, KeyError, TypeError):
            return True  # (measured again; ``_stored_evidence`` would warn the same)
        if not ev.extra.get("template") and (
                hash_rule_by_distance(ev, crowd, s) != hash_rule_by_distance(ev, was, s)):
            return True
        now, then = crowd_distance(ev, crowd), crowd_distance(ev, was)
        mark_verifiable(ev, top, s, then)
        verifiable = ev.extra["verifiable"]
        mark_verifiable(ev, top, s, now)
        if ev.extra["verifiable"] != verifiable:
            return True
        if row.after is not None and (mirror_worth_trying(ev, s, now)
                                      != mirror_worth_trying(ev, s, then)):
            row.after = row.relation = None
            self._changed_rows.add((a, b, CANDIDATE))
        return False

    def _stored_evidence(self, pair: tuple[int, int], row: PairRow) -> PairEvidence | None:
        """A stored pair's evidence; None, with a warning, where its text does
        not read back (a damaged row): the pair is then measured again."""
        try:
            return evidence_from_json(row.before)
        except (ValueError, KeyError, TypeError) as e:
            self._damaged(f"pair {pair[0]}-{pair[1]}", e)
            del self._rows[(*pair, CANDIDATE)]
            return None

    def _damaged(self, what: str, error: Exception) -> None:
        """Warn of the first damaged stored pair of a run (one line, not one per pair)."""
        if self._told_damaged:
            return
        self._told_damaged = True
        warnings.warn(f"gallery {self.gallery.path}: stored matching state of {what} "
                      f"unreadable ({type(error).__name__}: {error}); measuring it again "
                      "(and any other such pair)")

    def _replace_row(self, ev: PairEvidence, old: PairRow | None) -> None:
        """Store a candidate pair's new evidence, keeping what was stored of
        it where that still holds: all of it if the evidence is the same, its
        verification if only the votes moved (``_same_verification``); never
        for templated images (their content features depend on neighbours)."""
        k = (ev.a, ev.b, CANDIDATE)
        text = evidence_json(ev)
        templated = ev.a in self.templated_flags or ev.b in self.templated_flags
        if old is not None and old.before == text and not templated:
            return
        row = self._rows[k] = PairRow.of(ev, self.settings.exact_check_distance)
        self._changed_rows.add(k)
        if old is not None and not templated and self._same_verification(old.before, text):
            row.after, row.same, row.relation = old.after, old.same, old.relation

    def _same_verification(self, old: str, new: str) -> bool:
        """Whether evidence ``new`` would be verified as ``old`` was: the same
        but for the descriptor votes (a new image took a share of them), which
        verification only asks about as "at least ``verify_retry_votes``".
        A calibrated decision reads the votes themselves: then never."""
        if self.calibrator is not None:
            return False
        a, b = loads(old), loads(new)
        limit = self.settings.verify_retry_votes
        va, vb = a.pop("v"), b.pop("v")
        return a == b and (va < limit) == (vb < limit)

    def _kind(self, ev: PairEvidence) -> tuple[int, int, int]:
        kind = (HOP_MIRRORED if ev.extra.get("reflect") else HOP) if ev.extra.get(
            "second_hop") else CANDIDATE
        return ev.a, ev.b, kind

    def evidence_between(self, a: int, b: int, reflect: bool) -> PairEvidence:
        if a not in self.plain or b not in self.plain:
            need = [i for i in (a, b) if i not in self.plain]
            self.plain.update(zip(need, self.gallery.phash_variants(need)))
        ev = super().evidence_between(a, b, reflect)
        k = self._kind(ev)
        text, old = evidence_json(ev), self._rows.get(k)
        templated = {ev.a, ev.b} & self.templated_flags
        touched = {ev.a, ev.b} & self.changed
        if old is None or old.before != text or (templated and touched):
            self._rows[k] = PairRow.of(ev, self.settings.exact_check_distance)
            self._changed_rows.add(k)
        return ev

    # -- verifying ahead -----------------------------------------------------
    def _verify_ahead(self) -> None:
        """Verify now, in batches shared by the workers, the pending candidate
        pairs this run measured (new, or whose evidence moved) when earlier
        runs on this gallery asked for nearly all their pending pairs
        (``AHEAD_MAX_UNASKED``). Clustering asks for them a star at a time:
        668 requests for 1,233 pairs on a 50-image add to 4,950 (scale set),
        mostly too few to share across the workers (2.9 s against 1.4-1.8 s
        verified ahead, two workers). Where clustering leaves most pending
        pairs unasked (2,000 transformed-set images: a first run asked for
        1,824 of 9,872), verifying them all costs more than sharing saves
        (55 s against 33 s): then, and in a first run (no history to tell),
        clustering verifies as it asks. Copies are
        verified and the results stored; the pairs stay pending until
        clustering asks (``verify`` then applies the result), so clustering
        sees what it saw before; results it never asks for are kept.

        Up to ``AHEAD_IN_BACKGROUND`` pairs (hand-set rules) are verified in
        the background: their features are read here, then workers of their
        own verify them while clustering starts; when clustering asks for a
        pair, ``verify`` takes its result, waiting for it if need be (a pair
        not started yet goes to the front of the queue, ``_collect``);
        ``finish`` waits for the rest."""
        unasked, pending = self._unasked
        if not pending or unasked > AHEAD_MAX_UNASKED * pending:
            return
        rows = []
        for ev in self.evidence:
            k = (ev.a, ev.b, CANDIDATE)
            if ev.pending and k in self._changed_rows:
                row = self._rows.get(k)
                if row is not None and row.after is None:
                    rows.append(row)
        if not rows:
            return
        if (self.calibrator is None and self._pool is not None
                and len(rows) <= AHEAD_IN_BACKGROUND):
            self._verify_in_background(rows)
            return
        for start in range(0, len(rows), VERIFY_BATCH):
            report("ahead", start, len(rows))
            part = [(row, evidence_from_json(row.before))
                    for row in rows[start:start + VERIFY_BATCH]]
            self._ensure_templated({i for _, ev in part for i in (ev.a, ev.b)})
            PairMatcher.verify(self, [ev for _, ev in part])
            for row, ev in part:
                self._verified_ahead(row, ev)
        report("ahead", len(rows), len(rows))

    def _verified_ahead(self, row: PairRow, ev: PairEvidence) -> None:
        """Store a pair verified ahead (its row is among ``_changed_rows``
        already); it counts as verified, never also as reused."""
        row.after, row.relation = verification_json(row.before, ev), None
        self._ahead.add((ev.a, ev.b, CANDIDATE))
        self.verified += 1

    def _verify_in_background(self, rows: list[PairRow]) -> None:
        """Start verifying ``rows`` (pending pairs, none verified) on workers
        of their own; ``_collect`` takes each result (in the order clustering
        asks for them), as the batches of ``_verify_ahead`` would have left it.
        Their features are read here (SQLite belongs to this thread): at most
        ``AHEAD_IN_BACKGROUND`` pairs, so what the queued work holds stays small."""
        report("ahead", 0, len(rows))
        part = [(row, evidence_from_json(row.before)) for row in rows]
        self._ensure_templated({i for _, ev in part for i in (ev.a, ev.b)})
        items = self._read_pairs([ev for _, ev in part])
        self._background = LineQueue(self._verify_read, self.settings.n_workers())
        for (row, ev), item in zip(part, items):
            k = (ev.a, ev.b, CANDIDATE)
            self._running[k] = (row, ev)
            self._background.put(k, item)
        report("ahead", len(rows), len(rows))

    def _collect(self, keys) -> None:
        """Take the background verification of those of ``keys`` it holds and
        store each result, as ``_verify_ahead`` does; those not started yet
        go to the front of its queue (``linequeue.LineQueue``), so clustering
        waits only for what it asks for."""
        keys = [k for k in keys if k in self._running]
        if not keys:
            return
        self._background.take(keys)
        for k in keys:
            row, ev = self._running.pop(k)
            self._verified_ahead(row, ev)

    def finish(self) -> None:
        self._collect(sorted(self._running))

    def close(self) -> None:
        """Workers end; background verification not yet taken is dropped (a
        stopped run: those pairs stay unverified, as if never asked)."""
        if self._background is not None:
            self._background.close()
            self._background = None
        self._running.clear()
        super().close()

    # -- stored verifications, same pixels, relations ------------------------
    def verify(self, todo: list[PairEvidence]) -> None:
        todo = [ev for ev in todo if ev.pending]
        if self._running:
            self._collect([self._kind(ev) for ev in todo])
        work = []
        for ev in todo:
            row = self._rows.get(self._kind(ev))
            if row is not None and row.after is not None:
                try:
                    apply_verification(ev, row.after)
                except (ValueError, KeyError, TypeError) as e:
                    self._damaged(f"pair {ev.a}-{ev.b}", e)  # (verified again)
                    row.after = None
                    work.append(ev)
                    continue
                self.reused += self._kind(ev) not in self._ahead
            else:
                work.append(ev)
        if not work:
            return
        self._ensure_templated({i for ev in work for i in (ev.a, ev.b)})
        super().verify(work)
        self.verified += len(work)
        for ev in work:
            row = self._rows[self._kind(ev)]
            row.after, row.relation = verification_json(row.before, ev), None
            self._changed_rows.add(self._kind(ev))

    def same_pixels(self, ev: PairEvidence) -> bool:
        k = (ev.a, ev.b, CANDIDATE)
        row = self._rows.get(k)
        if row is not None and row.same is not None:
            return bool(row.same)
        for i in (ev.a, ev.b):
            if i not in self.plain:
                self.plain[i] = self.gallery.phash_variants([i])[0]
        out = super().same_pixels(ev)
        if row is not None:
            row.same = int(out)
            self._changed_rows.add(k)
        return out

    def _unsettled(self, ev: PairEvidence) -> bool:
        row = self._rows.get(self._kind(ev))
        return row is None or row.relation is None

    def settle_relation(self, ev: PairEvidence) -> str | None:
        k = self._kind(ev)
        row = self._rows.get(k)
        if row is not None and row.relation is not None:
            ev.extra["relation"] = row.relation or None
            return ev.extra["relation"]
        out = super().settle_relation(ev)
        if row is not None:
            row.relation = out or ""
            self._changed_rows.add(k)
        return out
