"""Exact duplicates: the same bytes, or the same pixels in another container.

Both digests are made while the file is read (``io.digest``, ``io.load``:
the bytes have to be read and decoded anyway), so this signal only names
them. Equal digests settle a pair before any other signal is asked
(``jobs.dedupe`` groups them first); they add no number to the calibrated
decision, whose pairs are by construction not byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from matchkit.signals import Signal


@dataclass(frozen=True)
class ExactSignal(Signal):
    name: str = "exact"
    record_fields: tuple[str, ...] = ("sha256", "pixel_sha256")
    stores: tuple[str, ...] = ("images.sha256", "images.pixel_sha256")
    candidates: str | None = ("images with equal digests (jobs.dedupe groups them before "
                              "matching; features.digests_prove_same_pixels)")

    def extract_fields(self, views, settings) -> dict:
        return {"sha256": views.sha256, "pixel_sha256": views.loaded.pixel_sha256}

    def to_columns(self, record) -> dict:
        return {"sha256": record.sha256, "pixel_sha256": record.pixel_sha256}
