"""The default descriptor index (IVF over 65,536 words) and galleries written
with another: commands not told ``--vote-index`` go on with the index a
gallery already has, and a sharded gallery chooses each query's words once."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from matchkit import Settings
from matchkit.cli.commands import cli
from matchkit.index.ivf import IVFIndex
from matchkit.store.gallery import Gallery
from matchkit.store.gallery_indexes import ORB_INDEX_NAME, ORB_IVF_INDEX_NAME
from matchkit.store.shards import ShardedGallery, open_gallery, saved_index_settings
from test_incremental import _make


def test_the_default_is_the_64k_ivf_index():
    s = Settings()
    assert (s.vote_index, s.ivf_vocabulary, s.ivf_probes, s.ivf_nodes) == \
        ("ivf", "orb-64k", 16, 8)


def test_commands_keep_the_index_a_gallery_was_written_with(tmp_path):
    """A gallery written with HNSW votes (as every gallery was before IVF
    became the default) stays HNSW when ``index`` and ``dedupe`` run on it
    without ``--vote-index``: no IVF file is built beside it, and its stored
    match decisions stay valid. A new gallery gets the default; the option
    still switches an existing one."""
    photos = _make(tmp_path / "photos", range(3))
    files = sorted(photos.iterdir())
    first, rest = tmp_path / "first", tmp_path / "rest"
    first.mkdir()
    rest.mkdir()
    for f in files[:4]:
        (first / f.name).write_bytes(f.read_bytes())
    for f in files[4:]:
        (rest / f.name).write_bytes(f.read_bytes())
    g = tmp_path / "g"
    run = CliRunner().invoke
    out = run(cli, ["index", str(first), "--gallery", str(g), "--no-embed", "--vote-index",
                    "hnsw", "-q"])
    assert out.exit_code == 0, out.output
    assert saved_index_settings(g) == {"vote_index": "hnsw"}
    out = run(cli, ["index", str(rest), "--gallery", str(g), "--no-embed", "-q"])
    assert out.exit_code == 0, out.output
    out = run(cli, ["dedupe", str(first), str(rest), "--gallery", str(g), "-q"])
    assert out.exit_code == 0, out.output
    assert saved_index_settings(g) == {"vote_index": "hnsw"}
    assert not (g / ORB_IVF_INDEX_NAME).exists() and (g / ORB_INDEX_NAME).exists()
    with Gallery(g, create=False) as gal:
        assert len(gal) == len(files) and gal.settings.vote_index == "hnsw"

    new = tmp_path / "new"
    out = run(cli, ["index", str(first), "--gallery", str(new), "--no-embed", "-q"])
    assert out.exit_code == 0, out.output
    assert saved_index_settings(new)["vote_index"] == "ivf"
    assert saved_index_settings(new).get("ivf_vocabulary") == "orb-64k"

    extra = _make(tmp_path / "extra", [5])
    out = run(cli, ["index", str(extra), "--gallery", str(g), "--no-embed", "--vote-index",
                    "ivf", "-q"])
    assert out.exit_code == 0, out.output
    assert saved_index_settings(g)["vote_index"] == "ivf" and (g / ORB_IVF_INDEX_NAME).exists()


def test_no_saved_index_means_no_settings(tmp_path):
    assert saved_index_settings(tmp_path / "missing") == {}
    (tmp_path / "empty").mkdir()
    assert saved_index_settings(tmp_path / "empty") == {}


def test_a_sharded_gallery_is_opened_with_the_index_it_was_written_with(tmp_path):
    photos = _make(tmp_path / "photos", range(2))
    with ShardedGallery(tmp_path / "s", Settings(workers=1, vote_index="hnsw"), shards=2) as sg:
        sg.add(sorted(photos.iterdir()))
    assert saved_index_settings(tmp_path / "s") == {"vote_index": "hnsw"}
    with open_gallery(tmp_path / "s") as sg:
        assert sg.settings.vote_index == "hnsw"
    with open_gallery(tmp_path / "s", Settings(workers=1)) as sg:  # told: as told
        assert sg.settings.vote_index == "ivf"


def test_a_sharded_ivf_search_chooses_each_querys_words_once(tmp_path, monkeypatch):
    """Three local shards' IVF indexes are asked with the queries encoded
    once (``merged._encoded_once``), and answer as if each encoded them."""
    photos = _make(tmp_path / "photos", range(3))
    with ShardedGallery(tmp_path / "s", Settings(workers=1), shards=3) as sg:
        sg.add(sorted(photos.iterdir()))
        q = np.concatenate([sg.local_features(i)[0].desc[:40] for i in sg.ids()])
        parts = sg.orb_index.parts
        assert len(parts) == 3 and all(isinstance(p, IVFIndex) for p in parts)
        want = [p.search(q, 6, max_distance=56) for p in parts]  # each encodes itself
        calls = []
        real = IVFIndex.encode
        monkeypatch.setattr(IVFIndex, "encode", lambda self, codes: calls.append(len(codes))
                            or real(self, codes))
        keys, dists = sg.orb_index.search(q, 6, max_distance=56)
        assert calls == [len(q)]
        all_keys = np.concatenate([w[0] for w in want], axis=1)
        all_d = np.concatenate([w[1] for w in want], axis=1)
        order = np.lexsort((all_keys, all_d), axis=1)[:, :6]
        assert np.array_equal(keys, np.take_along_axis(all_keys, order, 1))
        assert np.array_equal(dists, np.take_along_axis(all_d, order, 1))
        assert (keys >= 0).any()
