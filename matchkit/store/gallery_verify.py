"""Checking a gallery's index and vector files against its database
(``Gallery.verify``, the ``matchkit verify`` command).

Each file is judged as the next open would judge it (:mod:`.gallery_indexes`):
one that would be loaded must hold exactly the keys the database's rows
make; one that would be rebuilt is only stale, and ``repair`` rebuilds it.

:class:`_VerifyMixin` is part of :class:`~matchkit.store.gallery.Gallery`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matchkit.store.gallery_indexes import ORB_KEY_STRIDE, _MODEL_KEY


@dataclass
class VerifyReport:
    """What :meth:`Gallery.verify` found.

    ``differences`` are real inconsistencies: a cache file whose stamp and
    checksum say it is current but whose keys differ from the database rows
    (never expected; each one is a bug). ``stale`` lists cache files that do
    not match the database and would be rebuilt from it on next use (missing,
    older, damaged or foreign files): harmless, but slower until repaired.
    """

    keys: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        return {"ok": self.ok, "keys": self.keys, "differences": self.differences,
                "stale": self.stale, "repaired": self.repaired}


class _VerifyMixin:
    """The consistency check of a :class:`~matchkit.store.gallery.Gallery`."""

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Compare every index and vector file with the database.

        Each cache file is judged as the next open would judge it: a file
        whose stamp names the current generation and whose bytes match the
        recorded checksum is loaded, and its keys must equal the database's
        rows (pHash: image ids; ORB: the strongest ``index_features``
        descriptors of each image; vectors: embedded ids). Any difference is
        reported in ``differences``. Files that would be rebuilt are listed in
        ``stale``; with ``repair`` they are rebuilt from SQLite and saved
        (taking the writer lock).
        """
        report = VerifyReport()
        with self._snapshot():
            generation = self.generation
            expected = {"phash": set(self.ids())}
            n = self.settings.index_features
            expected["orb"] = {
                i * ORB_KEY_STRIDE + r
                for i, size in self._db.execute(
                    "SELECT image_id, length(descriptors) FROM local_features")
                for r in range(min(size // 32, n))}
            infos = {name: self._model_info(name) for name in self.models()}
            for name in infos:
                expected[_MODEL_KEY + name] = set(self._db.execute(
                    "SELECT e.image_id FROM embeddings e JOIN images i ON i.id = e.image_id "
                    "WHERE e.model=?", (name,)).fetchall())
                expected[_MODEL_KEY + name] = {i for (i,) in expected[_MODEL_KEY + name]}
        checks = []
        for name in ("phash", "orb"):
            checks.append((name, self._index_file(name), generation, self._index_loader(name)))
        for name, info in infos.items():
            key = _MODEL_KEY + name
            checks.append((key, self.path / info["file"], info["generation"],
                           lambda data, k=key, m=name, d=int(info["dim"]):
                           self._vectors_from_bytes(data, k, m, d)))
        for key, file, gen, loader in checks:
            want = expected[key]
            idx, why = self._load_file(key, file, gen, loader)
            if idx is None:
                if want or file.exists():
                    report.stale.append(f"{file.name}: {why}; rebuilt from the database on use")
                    if repair:
                        self._drop_cached(key)
                        if key.startswith(_MODEL_KEY):
                            self.vector_index(key[len(_MODEL_KEY):])
                        else:
                            self._index(key)
                        report.repaired.append(file.name)
                continue
            got = set(idx.keys().tolist())
            report.keys[file.name] = len(got)
            if got != want:
                missing, extra = sorted(want - got), sorted(got - want)
                report.differences.append(
                    f"{file.name}: stamped current, but {len(missing)} database rows are "
                    f"missing from it (e.g. {missing[:3]}) and {len(extra)} keys are not in the "
                    f"database (e.g. {extra[:3]})")
        if report.repaired:
            self.save()
        return report
