"""Payloads of the extra signals (:mod:`matchkit.signals`) in a gallery.

One row per image and configured signal in the ``signal_data`` table
(``_SIGNAL_SCHEMA`` in :mod:`.schema`; payload NULL: the signal had nothing
to say), written in the transaction that writes the image's record and
dropped with it. The table is made by the first writer that has signals
configured, so galleries without them, and read-only ones, open as before.

:class:`_SignalsMixin` is part of :class:`~matchkit.store.gallery.Gallery`.
"""

from __future__ import annotations

from collections.abc import Sequence

from matchkit.store.records import _chunks
from matchkit.store.schema import _SIGNAL_SCHEMA


class _SignalsMixin:
    """The signal payloads of a :class:`~matchkit.store.gallery.Gallery`."""

    def _has_signal_table(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                "name='signal_data'").fetchone() is not None

    def _has_signals(self, image_id: int) -> bool:
        """Whether the image has a row for every configured signal."""
        names = self.settings.signals
        if not names:
            return True
        if not self._has_signal_table():
            return False
        got = self._db.execute(
            f"SELECT COUNT(*) FROM signal_data WHERE image_id=? AND signal IN "
            f"({','.join('?' * len(names))})", (image_id, *names)).fetchone()[0]
        return got == len(names)

    def _drop_signals(self, ids: Sequence[int]) -> None:
        """Inside a transaction: forget the images' signal payloads."""
        if ids and self._has_signal_table():
            marks = ','.join('?' * len(ids))
            self._db.execute(f"DELETE FROM signal_data WHERE image_id IN ({marks})", list(ids))

    def _store_signals(self, image_id: int, payloads: dict | None) -> None:
        """Inside a transaction: one row per signal payload of an image."""
        if not payloads:
            return
        self._db.execute(_SIGNAL_SCHEMA)
        self._db.executemany(
            "INSERT OR REPLACE INTO signal_data(image_id, signal, payload) VALUES (?,?,?)",
            [(image_id, name, payload) for name, payload in payloads.items()])

    def signal_payloads(self, signal: str, ids: Sequence[int] | None = None
                        ) -> dict[int, bytes | None]:
        """Stored payloads of ``signal``: image id -> bytes (None: nothing to
        say); images never read with the signal are absent."""
        if not self._has_signal_table():
            return {}
        if ids is None:
            rows = self._db.execute(
                "SELECT image_id, payload FROM signal_data WHERE signal=?", (signal,)).fetchall()
        else:
            rows = []
            for chunk in _chunks(list(ids), 900):
                rows += self._db.execute(
                    f"SELECT image_id, payload FROM signal_data WHERE signal=? AND image_id IN "
                    f"({','.join('?' * len(chunk))})", (signal, *chunk)).fetchall()
        return {int(i): (None if p is None else bytes(p)) for i, p in rows}
