"""The signal registry (matchkit.signals) and its generic hooks, with a toy signal.

The toy signal's payload is the file name's first letter; it vetoes pairs
whose letters differ. So two resized copies of one photo named ``a...`` and
``b...`` are one cluster without it and two with it: that proves extraction,
storage, reload and the dedupe veto without any OCR.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from PIL import Image

from matchkit import signals
from matchkit.cli.commands import cli
from matchkit.config import Settings, SettingsError
from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery
from matchkit.match.incremental import settings_key


@dataclass(frozen=True)
class Initial(signals.Signal):
    name: str = "initial"

    def extract(self, image, path):
        first = os.path.basename(path)[0]
        return None if first == "z" else first.encode()  # "z...": nothing to say

    def pair_evidence(self, pa, pb):
        same = None if pa is None or pb is None else float(pa == pb)
        return {"same_initial": same}

    def veto(self, evidence):
        return "initials differ" if evidence.get("same_initial") == 0.0 else None


@pytest.fixture
def initial():
    signals.register("initial", Initial)
    yield signals.get("initial")
    signals._REGISTRY.pop("initial", None)
    signals._INSTANCES.pop("initial", None)


def _copies(tmp_path, photo):
    d = tmp_path / "imgs"
    d.mkdir()
    p = photo(11)
    p.save(d / "a_orig.jpg", quality=92)
    p.resize((240, 180), Image.Resampling.LANCZOS).save(d / "a_small.jpg", quality=85)
    p.resize((280, 210), Image.Resampling.LANCZOS).save(d / "b_other.jpg", quality=85)
    photo(12).save(d / "z_alone.jpg", quality=90)
    return d


def test_registry_refuses_unknown_names():
    assert "ocr" in signals.available()
    with pytest.raises(signals.UnknownSignal, match="unknown signal 'nope'"):
        signals.get("nope")
    with pytest.raises(SettingsError, match="unknown signal"):
        Settings(signals=("nope",))
    with pytest.raises(SettingsError, match="list of names"):
        Settings(signals="ocr")
    with pytest.raises(ValueError):
        signals.register("bad name!", Initial)
    # A list (from a profile) becomes a tuple; names given twice count once.
    assert Settings(signals=["ocr"]).signals == ("ocr",)
    assert signals.check_names(["ocr", "ocr"]) == ("ocr",)


def test_default_settings_key_does_not_mention_signals():
    # The default adds nothing to the key (stored decisions stay valid) ...
    assert settings_key(Settings()) == settings_key(Settings(signals=()))
    # ... and a configured signal changes it.
    assert settings_key(Settings(signals=("ocr",))) != settings_key(Settings())


def test_payload_stored_and_reloaded(tmp_path, photo, initial):
    d = _copies(tmp_path, photo)
    settings = Settings(signals=("initial",), workers=1)
    with Gallery(tmp_path / "g", settings) as g:
        g.add(sorted(d.iterdir()))
        g.save()
    with Gallery(tmp_path / "g", create=False) as g:
        by_name = {os.path.basename(r.path): i for i, r in g.images().items()}
        got = g.signal_payloads("initial")
        assert got[by_name["a_orig.jpg"]] == b"a"
        assert got[by_name["b_other.jpg"]] == b"b"
        assert by_name["z_alone.jpg"] in got and got[by_name["z_alone.jpg"]] is None
        assert g.signal_payloads("other") == {}
    # A gallery made without the signal gets its payloads on the next add with it.
    with Gallery(tmp_path / "g2", Settings(workers=1)) as g:
        g.add(sorted(d.iterdir()))
        assert g.signal_payloads("initial") == {}
    with Gallery(tmp_path / "g2", settings) as g:
        report = g.add(sorted(d.iterdir()))
        assert report.updated == 4
        assert len(g.signal_payloads("initial")) == 4
        # Removing an image drops its payload in the same transaction.
        g.remove([by_name["a_orig.jpg"]])
        assert by_name["a_orig.jpg"] not in g.signal_payloads("initial")


def _clusters(report):
    return sorted(sorted(os.path.basename(m) for m in c.members) for c in report.clusters)


def test_veto_in_dedupe(tmp_path, photo, initial):
    d = _copies(tmp_path, photo)
    plain = dedupe([d], settings=Settings(workers=1))
    assert ["a_orig.jpg", "a_small.jpg", "b_other.jpg"] in _clusters(plain)
    vetoed = dedupe([d], settings=Settings(workers=1, signals=("initial",)),
                    gallery=tmp_path / "g")
    assert _clusters(vetoed) == [["a_orig.jpg", "a_small.jpg"]]
    pair = vetoed.clusters[0].pairs[0]
    assert pair.evidence["signals"] == {"initial": {"same_initial": 1.0}}
    assert "initial: " in signals.describe(pair.evidence["signals"])
    # Stored decisions are reused with the same result.
    again = dedupe([d], settings=Settings(workers=1, signals=("initial",)),
                   gallery=tmp_path / "g")
    assert _clusters(again) == _clusters(vetoed)


def test_cli_refuses_unknown_signal(tmp_path, photo):
    d = tmp_path / "p"
    d.mkdir()
    photo(1).save(d / "x.jpg")
    for args in (["dedupe", str(d), "--signal", "nope"],
                 ["index", str(d), "--gallery", str(tmp_path / "g"), "--signal", "nope"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "unknown signal 'nope'" in lines[0]
    assert not (tmp_path / "g").exists()


def test_evidence_json_roundtrip_keeps_signal_evidence():
    from matchkit.match.incremental import evidence_from_json, evidence_json
    from matchkit.match.pairs import PairEvidence

    ev = PairEvidence(1, 2, 30, 0.9, rule="phash")
    ev.extra["signals"] = {"ocr": {"words_a": 7, "words_b": 6, "text_similarity": 0.2}}
    back = evidence_from_json(evidence_json(ev))
    assert back.extra["signals"] == ev.extra["signals"]
    assert json.loads(json.dumps(back.to_evidence()))["signals"]["ocr"]["text_similarity"] == 0.2
