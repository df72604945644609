"""A learned embedding as one more dedupe signal (``Settings.model``).

The tiny CLIP has random weights, so these tests check the mechanics: the
cosine reaches the pair evidence, its neighbours become candidates, and a
``min_cosine`` decides a match on its own exactly at the threshold.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from matchkit import Settings
from matchkit import dedupe  # noqa: E402
from matchkit.cli.commands import cli  # noqa: E402
from matchkit.embed import load_embedder  # noqa: E402

from conftest import make_photo  # noqa: E402


@pytest.fixture
def two_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (1, 2):
        make_photo(seed).save(folder / f"p{seed}.jpg", quality=92)
    return folder


def _cosine(model_dir, folder) -> float:
    from PIL import Image
    emb = load_embedder(str(model_dir))
    v = emb.embed_images([Image.open(folder / f"p{s}.jpg").convert("RGB") for s in (1, 2)])
    return float(v[0] @ v[1])


# (Its searches ask for more neighbours than two images have: USearch's
# unset distances past the count once warned "invalid value in subtract".)
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_min_cosine_decides_alone_at_its_threshold(two_photos, tiny_clip_dir, tmp_path):
    cos = _cosine(tiny_clip_dir, two_photos)
    base = Settings(workers=1, model=str(tiny_clip_dir), cosine_candidate=-1.0)
    # Different photos: no hash or local match, so only the embedding can join them.
    below = dedupe([two_photos], settings=base.with_(min_cosine=cos - 0.01))
    assert len(below.clusters) == 1
    (pair,) = below.clusters[0].pairs
    assert pair.evidence["rule"] == "embedding"
    assert pair.evidence["cosine"] == pytest.approx(cos, abs=2e-3)
    above = dedupe([two_photos], settings=base.with_(min_cosine=min(1.0, cos + 0.01)))
    assert above.clusters == []
    assert above.stats["model"] == load_embedder(str(tiny_clip_dir)).name


def test_without_a_model_no_cosine_is_reported(photo_dir):
    report = dedupe([photo_dir], settings=Settings(workers=1))
    assert report.stats["model"] is None
    assert all("cosine" not in p.evidence for c in report.clusters for p in c.pairs)


def test_model_cosine_reaches_near_pair_evidence(photo_dir, tiny_clip_dir):
    report = dedupe([photo_dir], settings=Settings(workers=1, model=str(tiny_clip_dir)))
    near = [p for c in report.clusters for p in c.pairs if p.kind == "near"]
    assert near and all(-1.0 <= p.evidence["cosine"] <= 1.0 for p in near)
    plain = dedupe([photo_dir], settings=Settings(workers=1))
    # Without min_cosine the embedding only adds candidates: the same clusters.
    assert sorted(map(sorted, (c.members for c in report.clusters))) == \
        sorted(map(sorted, (c.members for c in plain.clusters)))


def test_cli_missing_model_is_one_line_exit_2(two_photos, tmp_path):
    r = CliRunner().invoke(cli, ["dedupe", str(two_photos), "--model", str(tmp_path / "nope"),
                                 "-q"])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "error" in r.output


def test_cli_min_cosine_needs_model(two_photos):
    r = CliRunner().invoke(cli, ["dedupe", str(two_photos), "--min-cosine", "0.9"])
    assert r.exit_code == 2


def test_models_command_lists_registry():
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0
    names = {m["name"] for m in json.loads(r.output)}
    assert {"clip-vit-b32", "sscd-disc-mixup"} <= names
