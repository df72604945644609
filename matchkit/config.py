"""Settings that steer the pipeline, as one plain dataclass.

Later profiles (``configs/*.toml``) override these fields; keeping them in one
place means every command and the Python API agree on the defaults.

Every numeric setting has an allowed range in :data:`RANGES`. ``Settings``
refuses a value outside it (:class:`SettingsError`, one line), and profiles
and the command-line options that set the same fields use the same check,
so a value is judged the same way wherever it comes from. The bounds are
where the pipeline still works in bounded memory and time (a 100,000-pixel
working image took 7.4 GB and crashed OpenCV), not tuned optima.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields, replace

from matchkit.io.load import DEFAULT_MAX_PIXELS
from matchkit.relation import LEVELS

#: Distances between 256-bit hashes or descriptors, in bits.
_BITS = (0, 256)
#: Allowed values of each numeric setting, inclusive: (min, max).
RANGES: dict[str, tuple[float, float]] = {
    "hash_side": (32, 1024),               # pHash reads a 32x32 image
    "max_pixels": (1, 1_000_000_000),      # 1 gigapixel: ~3 GB decoded
    "phash_max_distance": _BITS,
    "phash_strong_distance": _BITS,
    "colour_min_similarity": (0.0, 1.0),
    "crowd_margin": (-256, 256),
    "exact_check_distance": _BITS,
    "neighbours": (1, 1000),
    "workers": (0, 1024),
    "work_side": (64, 4096),               # images are scaled (up, too) to this side
    "n_features": (1, 10_000),
    "index_features": (1, 10_000),
    "query_features": (1, 10_000),
    "vote_neighbours": (1, 256),
    "vote_max_distance": _BITS,
    "vote_candidates": (1, 1000),
    "vote_min_votes": (0.0, 1000.0),
    "ivf_probes": (1, 64),
    "ivf_nodes": (1, 256),
    "phash_candidate_distance": _BITS,
    "verify_top": (0, 1000),
    "verify_crowd_margin": _BITS,
    "verify_features": (0, 10_000),
    "verify_retry_inliers": (0, 10_000),
    "verify_retry_votes": (0.0, 1000.0),
    "mirror_max_distance": _BITS,
    "mirror_crowd_margin": (-256, 256),
    "min_inliers": (3, 10_000),            # an affine fit needs 3 points
    "min_overlap_correlation": (-1.0, 1.0),
    "burst_pictures": (0, 10_000_000),
    "burst_weak_pictures": (0, 10_000_000),
    "burst_weak_votes": (0.0, 1e9),
    "template_crowd_distance": _BITS,
    "thumb_side": (16, 1024),
    "embedding_neighbours": (1, 1000),
    "cosine_candidate": (-1.0, 1.0),
    "min_cosine": (-1.0, 1.0),
}


class SettingsError(ValueError):
    """A setting with a value of the wrong kind or outside its range (one line)."""


@dataclass(frozen=True)
class Settings:
    #: Longest side of the thumbnail that perceptual hashes are computed from.
    #: pHash looks at 32x32 anyway; decoding JPEGs this small is ~2x faster.
    hash_side: int = 64
    #: Files with more pixels than this are skipped, not decoded.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Largest dihedral pHash distance (of 256 bits) accepted as a near duplicate.
    phash_max_distance: int = 90
    #: Pairs at most this far apart match without further evidence.
    phash_strong_distance: int = 40
    #: Smallest colour-histogram intersection for matches beyond the strong distance.
    colour_min_similarity: float = 0.9
    #: ... which must also be this much closer than either image's crowd distance
    #: (distance to its ``neighbours``-th nearest image).
    crowd_margin: int = 5
    #: Pairs this close with equal dimensions get their full pixels compared.
    exact_check_distance: int = 16
    #: Neighbours fetched per hash variant when looking for candidates.
    neighbours: int = 16
    #: Worker processes for decoding and feature extraction (0: one per core).
    workers: int = 0

    #: Extract ORB local features (crops, rotations, overlays, screenshots).
    local_features: bool = True
    #: Longest side of the grey working image local features are found on.
    work_side: int = 512
    #: ORB keypoints kept per image (strongest first).
    n_features: int = 500
    #: Strongest descriptors per image that go into the descriptor index.
    index_features: int = 100
    #: Query descriptors per image when voting for candidates.
    query_features: int = 100
    #: Neighbours fetched per query descriptor.
    vote_neighbours: int = 4
    #: Largest descriptor distance (bits of 256) that counts as a vote.
    vote_max_distance: int = 56
    #: Most voted images per query image that are verified (fewer where the
    #: next image has as many votes as the last ones: tied images are all
    #: left out, ``candidates.tally_votes``).
    vote_candidates: int = 8
    #: Least votes (descriptors, each vote shared among the images it hits)
    #: that make a voted image a candidate.
    vote_min_votes: float = 1.0
    #: Descriptor index the votes search: "ivf" (inverted file over visual
    #: words, ``matchkit/index/ivf.py``: about 3.6 KB per image in memory and
    #: on disk, and exact for its own score, so shards merge to the same
    #: neighbours) or "hnsw" (USearch graph: 23-33 KB per image in memory,
    #: 11.7 on disk, approximate beyond 20,000 descriptors). IVF has been the
    #: default since the end-to-end comparison in benchmarks/RESULTS.md,
    #: "votes: the 65,536-word IVF index as the default (issue 15)".
    vote_index: str = "ivf"
    #: With ``vote_index="ivf"``: visual words each query descriptor looks in.
    ivf_probes: int = 16
    #: With ``vote_index="ivf"``: the first-level nodes of the vocabulary tree
    #: whose words the probes are chosen among.
    ivf_nodes: int = 8
    #: With ``vote_index="ivf"``: the shipped vocabulary (``index.vocabulary.VOCABULARIES``).
    ivf_vocabulary: str = "orb-64k"
    #: Looser pHash distance that still makes a pair worth verifying locally.
    phash_candidate_distance: int = 110
    #: A pair the descriptors did not vote for is verified only if one image is
    #: among the other's this many nearest by pHash (most look-alikes in a
    #: crowd are not copies; verifying them all was most of the run time).
    verify_top: int = 4
    #: ... and, when that is all it has (no votes, no close embeddings), only
    #: if its pHash distance is more than this many bits inside the pair's
    #: crowd distance (0: no such gate). A nearest hash neighbour at the
    #: crowd's own distance is as near as the crowd's unrelated pictures: on
    #: the scale set's 10,000 distinct pictures the 31,369 such verifications
    #: of no-vote nearest neighbours found no copy; 8 skips 46% of all
    #: first-pass verifications there, and the calib halves (transformed,
    #: hard, recapture) give the same pairs at 4 and 8. (The same margin as
    #: ``mirror_crowd_margin``, which gates the mirrored look.)
    verify_crowd_margin: int = 8
    #: Keypoints per image in the first look of a verification (0: always all);
    #: all ``n_features`` are matched only when the first look is inconclusive:
    #: at least this many inliers ...
    verify_features: int = 300
    verify_retry_inliers: int = 5
    #: ... or at least this many descriptor votes for the pair.
    verify_retry_votes: float = 3.0
    #: Dedupe verifies a pair as a mirror image too only when its hashes align
    #: under a reflection within this pHash distance, or a second hop says so:
    #: beyond it the best-aligning variant is chance (unrelated hashes sit
    #: near 128 bits). On the transformed calib half 36 of about 500
    #: first-pass mirrored tries matched, 34 of them within 100 bits, none
    #: beyond 110.
    mirror_max_distance: int = 100
    #: ... and at least this many bits closer than the pair's crowd distance
    #: (the pHash distance to each image's 16th-nearest image, the closer of
    #: the two, at most 128): in a collection whose unrelated pictures' hashes
    #: sit near each other, alignment under a reflection at the crowd's
    #: distance is chance too. On the scale set's distinct pictures (10,000,
    #: crowd distances 95-100) 15,779 first-pass mirrored looks at 90-99 bits
    #: found no copy and took 58% of verification time; with 8, the calib
    #: halves (transformed, hard, recapture) give the same pairs.
    mirror_crowd_margin: int = 8
    #: Local-feature match: least RANSAC inliers ...
    min_inliers: int = 12
    #: ... and least correlation of the aligned overlap (photometric check).
    min_overlap_correlation: float = 0.5
    #: A local match whose inliers gather on a part that at least this many
    #: other pictures of the run carry (a sticker, a logo) is refused
    #: (``matchkit/match/burst.py``; 0: not checked).
    burst_pictures: int = 32
    #: ... or that at least this many carry (0: not checked) where fewer than
    #: ``burst_weak_votes`` of the pair's descriptors voted for it. Chosen on
    #: the sticker dev set and the calib halves (``benchmarks/burst_pairs.py``):
    #: true matches under 2 votes had at most 7 carriers, sticker links 21+.
    burst_weak_pictures: int = 12
    burst_weak_votes: float = 2.0
    #: Look-alikes within this pHash distance are used to detect a shared
    #: template (screenshot frame, form); see matchkit/match/template.py.
    template_crowd_distance: int = 120
    #: Longest side of the stored grey thumbnail used by the photometric check.
    thumb_side: int = 128
    #: Which relations form clusters and matches (``relation.LEVELS``):
    #: "copies" (exact through recapture), "variants" or "similar".
    level: str = "copies"

    #: Learned embedding model (registry name, directory or file; see
    #: ``matchkit.embed``) whose cosine joins the signals; None: no model.
    model: str | None = None
    #: Nearest images by embedding fetched per image as candidates.
    embedding_neighbours: int = 8
    #: Least cosine for an embedding neighbour to become a candidate pair.
    cosine_candidate: float | None = 0.3
    #: Cosine at which the embedding alone decides a match (None: it never
    #: does; its candidates are verified with local features). Model-specific.
    min_cosine: float | None = None

    #: Extra pair signals by registry name (``matchkit.signals``, e.g. "ocr"):
    #: extracted with each image, and a pair they veto is refused. Opt-in.
    signals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name))
        if not isinstance(self.signals, tuple):  # (a list from a profile or JSON)
            object.__setattr__(self, "signals", tuple(self.signals))

    def decode_side(self) -> int:
        """Longest side to decode: what the most demanding enabled feature needs."""
        return max(self.hash_side, self.work_side if self.local_features else 0)

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def with_(self, **changes) -> "Settings":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@functools.lru_cache(maxsize=None)
def _kind(name: str) -> tuple[str, bool]:
    """A setting's base type name ("int", "float", "bool", "str") and whether None is allowed."""
    annotation = str(Settings.__dataclass_fields__[name].type)
    parts = [p.strip() for p in annotation.split("|")]
    return parts[0], "None" in parts


class _Choices(dict):
    """``CHOICES``; the names ``signals`` takes are read from the signal
    registry when asked for (``matchkit.signals``: plugins may register late),
    those of ``ivf_vocabulary`` from the shipped vocabularies
    (``index.vocabulary.VOCABULARIES``)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name == "signals":
            from matchkit.signals import available
            return tuple(available())
        if name == "ivf_vocabulary":
            from matchkit.index.vocabulary import VOCABULARIES
            return tuple(VOCABULARIES)
        return super().__getitem__(name)


#: Text settings with a fixed set of values (numbers have ``RANGES``), and
#: ``signals``, a list of names from the signal registry.
CHOICES: dict[str, tuple[str, ...]] = _Choices(
    {"level": tuple(LEVELS), "vote_index": ("hnsw", "ivf"), "ivf_vocabulary": (),
     "signals": ()})


#: ``--vote-index`` names (CLI) and the settings each stands for: the index
#: kind and, for IVF, the vocabulary, probes and nodes they were measured with
#: (benchmarks/RESULTS.md, "candidates: words chosen node by node, and a
#: 65,536-word vocabulary"). "ivf" is the default's; "ivf-4k" the first IVF
#: index (4,096 words, 64-bit signatures, 2 probes).
VOTE_INDEXES: dict[str, dict] = {
    "ivf": {"vote_index": "ivf", "ivf_vocabulary": "orb-64k", "ivf_probes": 16,
            "ivf_nodes": 8},
    "hnsw": {"vote_index": "hnsw"},
    "ivf-4k": {"vote_index": "ivf", "ivf_vocabulary": "orb-4k", "ivf_probes": 2,
               "ivf_nodes": 2},
    "ivf-16k": {"vote_index": "ivf", "ivf_vocabulary": "orb-16k", "ivf_probes": 16,
                "ivf_nodes": 8},
}
#: The default's vocabulary by its size, as the other IVF names are given.
VOTE_INDEXES["ivf-64k"] = VOTE_INDEXES["ivf"]


def vote_index_settings(name: str | None) -> dict:
    """The settings a ``--vote-index`` name stands for (none for None)."""
    return {} if name is None else dict(VOTE_INDEXES[name])


def check_setting(name: str, value):
    """``value`` if it is allowed for setting ``name``, else :class:`SettingsError`."""
    if name not in Settings.__dataclass_fields__:
        raise SettingsError(f"unknown setting {name!r}")
    kind, optional = _kind(name)
    if value is None and optional:
        return value
    if kind.startswith("tuple"):  # names of registered signals
        from matchkit.signals import UnknownSignal, check_names

        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise SettingsError(f"{name} must be a list of names, got {value!r}")
        try:
            check_names(value)
        except UnknownSignal as e:
            raise SettingsError(f"{name}: {e}") from None
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise SettingsError(f"{name} must be text, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise SettingsError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        return value
    lo, hi = RANGES[name]
    whole = kind == "int"
    number = not isinstance(value, bool) and isinstance(value, int if whole else (int, float))
    if not number or (isinstance(value, float) and not math.isfinite(value)):
        what = "a whole number" if whole else "a number"
        raise SettingsError(f"{name} must be {what} between {lo} and {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value!r}")
    return value


def clamp_setting(name: str, value):
    """``value`` moved into the range of setting ``name`` (for derived values,
    such as a zoomed-in view that doubles a size)."""
    lo, hi = RANGES[name]
    return type(value)(min(max(value, lo), hi))


def setting_kind(name: str) -> type:
    """The Python type a setting's value has (int, float, bool or str)."""
    return {"int": int, "float": float, "bool": bool, "str": str}[_kind(name)[0]]
