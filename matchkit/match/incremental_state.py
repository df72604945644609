"""The stored state's texts: how incremental matching writes what it keeps.

A pair's evidence as canonical JSON (``evidence_json``, read back by
``evidence_from_json``), what verification changed in it
(``verification_json``, applied by ``apply_verification``), a stored pair
row (``PairRow``) and its kinds, and the packed arrays of an image's record
(ids and neighbour lists as base64). Separate from ``match/incremental.py``: pure
encoding, with no matcher and no gallery, used by every part of the
``IncrementalMatcher`` that reads or writes the state.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

import numpy as np

from matchkit.util.jsonfmt import loads
from matchkit.signals.local import Overlap, Verification
from matchkit.match.pairs import PairEvidence
from matchkit.signals.thumbmatch import IconComparison

#: Pair kinds in the ``match_pairs`` table: a candidate pair, and the second
#: look a cluster takes at a pair outside the candidates (straight, mirrored).
CANDIDATE, HOP, HOP_MIRRORED = 0, 1, 2


def _plain(o):
    """JSON for numpy values (exact: float32 widens to the same value)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (IconComparison, Overlap)):  # (``extra["icon"]``, ``extra["picture"]``)
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def evidence_json(ev: PairEvidence) -> str:
    """A pair's evidence as canonical JSON (equal evidence, equal text)."""
    return json.dumps({
        "a": ev.a, "b": ev.b, "d": ev.phash_distance, "c": ev.colour_similarity,
        "v": ev.votes, "cos": ev.cosine, "oc": ev.overlap_correlation, "r": ev.rule,
        "p": ev.pending, "x": ev.extra,
        "ver": dataclasses.asdict(ev.verification) if ev.verification else None,
        "ov": dataclasses.asdict(ev.overlap) if ev.overlap else None,
    }, sort_keys=True, default=_plain)


#: Top-level fields of ``evidence_json`` a verification can change, and the
#: ``PairEvidence`` attributes they are (``ver``, ``ov`` and ``x`` apart).
_CHANGEABLE = {"d": "phash_distance", "c": "colour_similarity", "cos": "cosine",
               "oc": "overlap_correlation", "r": "rule", "p": "pending"}


def verification_json(before: str, ev: PairEvidence) -> str:
    """What verifying a pair changed in its evidence, as canonical JSON: the
    fields of ``ev`` that differ from ``before`` (the ``evidence_json`` it was
    verified from), "x+" the extra entries added or changed, "x-" the names
    of those removed. Never the votes: a stored verification is reused under
    other votes (``_same_verification``), which the pair keeps.

    Stored instead of the whole verified evidence: on 5,000 images, 150
    bytes per verified pair against 440, and less to read back on every run
    (``apply_verification``)."""
    old, new = loads(before), loads(evidence_json(ev))
    out = {k: new[k] for k in (*_CHANGEABLE, "ver", "ov") if new[k] != old[k]}
    plus = {k: v for k, v in new["x"].items() if k not in old["x"] or old["x"][k] != v}
    gone = sorted(k for k in old["x"] if k not in new["x"])
    if plus:
        out["x+"] = plus
    if gone:
        out["x-"] = gone
    return json.dumps(out, sort_keys=True)


def apply_verification(ev: PairEvidence, text: str) -> None:
    """Bring ``ev`` (the evidence a stored verification was made from) to
    what that verification left (``verification_json``)."""
    d = loads(text)
    # (all read before any is set: a damaged text leaves ``ev`` as it was)
    changes = {_CHANGEABLE[k]: v for k, v in d.items() if k in _CHANGEABLE}
    if "ver" in d:
        changes["verification"] = Verification(**d["ver"]) if d["ver"] else None
    if "ov" in d:
        changes["overlap"] = Overlap(**d["ov"]) if d["ov"] else None
    if "x+" in d or "x-" in d:
        extra = {k: v for k, v in ev.extra.items() if k not in d.get("x-", ())}
        extra.update(_extra_objects(d.get("x+", {})))
        changes["extra"] = extra
    for name, value in changes.items():  # (a few fields: what verification changed)
        setattr(ev, name, value)


def _extra_objects(extra: dict) -> dict:
    """Extra entries stored as dicts back to the objects they were."""
    if "icon" in extra:
        extra["icon"] = IconComparison(**extra["icon"])
    if isinstance(extra.get("picture"), dict):
        extra["picture"] = Overlap(**extra["picture"])
    return extra


def evidence_from_json(text: str, into: PairEvidence | None = None) -> PairEvidence:
    """The evidence ``evidence_json`` wrote (filling ``into`` in place if given)."""
    d = loads(text)
    ev = into if into is not None else PairEvidence(d["a"], d["b"], d["d"], d["c"])
    ev.phash_distance, ev.colour_similarity, ev.votes = d["d"], d["c"], d["v"]
    ev.cosine, ev.overlap_correlation, ev.rule, ev.pending = d["cos"], d["oc"], d["r"], d["p"]
    ev.extra = _extra_objects(d["x"])
    ev.verification = Verification(**d["ver"]) if d["ver"] else None
    ev.overlap = Overlap(**d["ov"]) if d["ov"] else None
    return ev


@dataclasses.dataclass(slots=True)
class PairRow:
    """One stored pair: its evidence as the global signals left it, as local
    verification left it (None: not verified yet), whether the two images
    have the same pixels (None: not checked), whether it can matter to
    clustering at all (``live``: matched, pending, or near enough to be an
    exact copy), and its settled relation in a report (None: not asked)."""

    before: str
    after: str | None = None
    same: int | None = None
    live: int = 1
    relation: str | None = None

    @classmethod
    def of(cls, ev: PairEvidence, exact_check_distance: int) -> "PairRow":
        return cls(evidence_json(ev), live=int(bool(
            ev.rule or ev.pending or ev.phash_distance <= exact_check_distance)))

    def astuple(self) -> tuple:
        return self.before, self.after, self.same, self.live, self.relation


def _pack_ids(ids) -> bytes:
    """Image ids as the bytes of int32 (a record's neighbour lists and
    "hits"): held as one value instead of a list of Python ints, and stored
    apart from the record's JSON (``split_record``)."""
    return np.ascontiguousarray(ids, "<i4").tobytes()


def _unpack_ids(packed: bytes | str) -> np.ndarray:
    """The int32 ids ``_pack_ids`` made (a read-only view); base64 text as
    records stored them inside their JSON before ``split_record``."""
    if packed.__class__ is str:
        packed = base64.b64decode(packed)
    return np.frombuffer(packed, "<i4")


def _hits(rec: dict) -> np.ndarray:
    """A record's "hits" (``_pack_ids``; a JSON list, as earlier builds stored it)."""
    hits = rec["hits"]
    if isinstance(hits, (bytes, str)):
        return _unpack_ids(hits).astype(np.int64)
    return np.asarray(hits, np.int64)


def _pack_lists(ids: np.ndarray, dists: np.ndarray) -> list:
    return [ids.shape[1] if ids.ndim == 2 else 0, _pack_ids(ids),
            np.ascontiguousarray(dists, np.uint8).tobytes()]


def _lists(rec: dict) -> tuple[np.ndarray, np.ndarray]:
    """A record's descriptor neighbour lists (image ids, distances)."""
    k, ids, dists = rec["nb"]
    return (_unpack_ids(ids).reshape(-1, k or 1),
            np.frombuffer(dists, np.uint8).reshape(-1, k or 1))


def _pack_probes(words: np.ndarray) -> list:
    """A record's "pw": the words its query descriptors probed in an IVF
    index (``VoteDetail.probes``), as [probes, bytes per word, bytes]."""
    words = np.asarray(words)
    width = 2 if not words.size or int(words.max()) < 1 << 16 else 4
    return [words.shape[1] if words.ndim == 2 else 1, width,
            np.ascontiguousarray(words, f"<u{width}").tobytes()]


def _probes(rec: dict) -> np.ndarray:
    """A record's probed words (rows, probes) as stored (``_pack_probes``:
    uint16 or uint32, a read-only view: an add reads them for every stored
    image, and widening them to int64 cost it a tenth of a second)."""
    probes, width, raw = rec["pw"]
    return np.frombuffer(raw, f"<u{width}").reshape(-1, probes)


# -- a record's lists, stored apart from its JSON ------------------------------
#: The fields of a record held as packed ids (``_pack_lists``, ``_pack_ids``)
#: or words (``_pack_probes``): stored as bytes beside the record's JSON
#: (``split_record``), not in it.
LIST_FIELDS = ("nb", "hits", "pw")
#: Header of the stored probed words (flag 4, after the lists): bytes per
#: word, probes per row, rows.
_PROBES_HEADER = struct.Struct("<BHI")
#: Header of the stored lists: flags (1: "nb", 2: "hits", 4: "pw"), bytes per id,
#: "nb" columns, "nb" entries, "hits" entries.
_LISTS_HEADER = struct.Struct("<BBHII")
#: Stored ids (+ 1) by bytes per id (3: the low bytes of "<u4").
_ID_TYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def split_record(rec: dict) -> tuple[dict, bytes | None]:
    """A record as (its fields but the lists, the lists as bytes; None when
    it has none). Why apart: the lists are three quarters of a record and
    change with nearly every add (a new image's descriptors enter the lists
    of 8,000 of 10,000 images), while the rest rarely changes; as base64
    inside deflated JSON they cost an add 0.3 s to write and as much to
    read. Stored as ids + 1 in as few bytes as the largest needs (an empty
    slot is -1), so 10,000 images take 2 bytes an id, without deflating."""
    if not any(f in rec for f in LIST_FIELDS):
        return rec, None
    rest = {k: v for k, v in rec.items() if k not in LIST_FIELDS}
    flags, k, ids, dists = 0, 0, np.zeros(0, np.int64), b""
    if "nb" in rec:
        flags |= 1
        k, packed, dists = rec["nb"]
        ids = _unpack_ids(packed).astype(np.int64)
    hits = np.zeros(0, np.int64)
    if "hits" in rec:
        flags |= 2
        hits = _hits(rec)
    both = np.concatenate([ids, hits]) + 1
    width = max(1, (int(both.max()).bit_length() + 7) // 8) if len(both) else 1
    if len(both) and (both.min() < 0 or width > 4):
        raise ValueError("record lists: an id out of range")
    if width == 3:
        raw = both.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = both.astype(_ID_TYPES[width]).tobytes()
    probed = b""
    if "pw" in rec:
        flags |= 4
        probes, word_bytes, words = rec["pw"]
        probed = _PROBES_HEADER.pack(word_bytes, probes, len(words) // (word_bytes * probes)
                                     if probes else 0) + words
    return rest, (_LISTS_HEADER.pack(flags, width, k, len(ids), len(hits))
                  + raw[:len(ids) * width] + dists + raw[len(ids) * width:] + probed)


def join_record(rest: dict, lists: bytes | None) -> dict:
    """The record ``split_record`` split (``rest`` is completed in place);
    a record stored whole before (no ``lists``) has its base64 lists read
    as bytes, as ``split_record`` gives them back."""
    if lists is None:
        if "nb" in rest and rest["nb"][1].__class__ is str:
            k, ids, dists = rest["nb"]
            rest["nb"] = [k, base64.b64decode(ids), base64.b64decode(dists)]
        if "hits" in rest and rest["hits"].__class__ is not bytes:
            rest["hits"] = _pack_ids(_hits(rest))
        return rest
    if len(lists) < _LISTS_HEADER.size:
        raise ValueError("record lists: truncated")
    flags, width, k, n_ids, n_hits = _LISTS_HEADER.unpack_from(lists)
    at = _LISTS_HEADER.size
    end = at + (n_ids + n_hits) * width + n_ids
    if flags & 4 and 1 <= width <= 4 and len(lists) >= end + _PROBES_HEADER.size:
        word_bytes, probes, rows = _PROBES_HEADER.unpack_from(lists, end)
        start = end + _PROBES_HEADER.size
        end = start + word_bytes * probes * rows
        if word_bytes in (2, 4) and probes:
            rest["pw"] = [probes, word_bytes, lists[start:end]]
    if not 1 <= width <= 4 or len(lists) != end or (flags & 4 and "pw" not in rest):
        raise ValueError("record lists: damaged")

    def ids(start: int, n: int) -> bytes:
        if width == 3:
            wide = np.zeros((n, 4), np.uint8)
            wide[:, :3] = np.frombuffer(lists, np.uint8, n * 3, start).reshape(n, 3)
            out = wide.view("<u4").ravel().astype("<i4")
        else:
            out = np.frombuffer(lists, _ID_TYPES[width], n, start).astype("<i4")
        out -= 1
        return out.tobytes()
    if flags & 1:
        rest["nb"] = [k, ids(at, n_ids), lists[at + n_ids * width:at + n_ids * (width + 1)]]
    if flags & 2:
        rest["hits"] = ids(at + n_ids * (width + 1), n_hits)
    return rest


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.uint8)

