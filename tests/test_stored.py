"""Compact stored features, and matching that needs nothing but them."""

from __future__ import annotations

import io
import shutil
import sqlite3
import sys

import numpy as np
import PIL.Image
import pytest

import matchkit.io.load
from matchkit import Gallery, Settings
from matchkit.jobs.dedupe import find_clusters
from matchkit.features import extract
from matchkit.store.gallery import DB_NAME, SCHEMA_VERSION
from matchkit.signals.hashing import jpeg_stream_digest
from matchkit.signals.local import LocalFeatures, verify
from matchkit.store.stored import (decode_colour, encode_colour, encode_local, stored_features,
                                   thumb_features)
from test_thumbmatch import _icon


def test_stored_features_round_trip(photo_dir):
    rec = extract(photo_dir / "a.jpg")
    local, thumb = stored_features(encode_local(rec.local, rec.thumb))
    assert np.abs(local.xy - rec.local.xy).max() <= 1 / 32
    assert np.array_equal(local.desc, rec.local.desc)
    # JPEG: a few grey levels of noise, no more
    assert np.abs(thumb.astype(int) - rec.thumb).mean() < 2 and thumb.shape == rec.thumb.shape
    assert np.array_equal(decode_colour(encode_colour(rec.colour)), rec.colour)
    assert len(encode_colour(rec.colour)) < 2048
    # Rows written before (encoding 1: raw float32 and raw pixels) stay readable.
    old = (rec.local.width, rec.local.height, rec.local.xy.astype("<f4").tobytes(),
           rec.local.desc.tobytes(), rec.thumb.tobytes(), rec.thumb.shape[1],
           rec.thumb.shape[0], 1)
    local1, thumb1 = stored_features(old)
    assert np.array_equal(local1.xy, rec.local.xy) and np.array_equal(thumb1, rec.thumb)


def test_mirrored_look_from_thumbnails_finds_a_flip(photo_dir):
    a, flip = extract(photo_dir / "a.jpg"), extract(photo_dir / "a_flip.jpg")
    c = extract(photo_dir / "c.jpg")
    size = (a.local.width, a.local.height)
    la = thumb_features(a.thumb, size, 500)
    mirrored = thumb_features(flip.thumb, size, 500, mirror=True)
    assert verify(la, mirrored).inliers >= 30
    assert verify(la, thumb_features(c.thumb, size, 500, mirror=True)).inliers < 12
    assert isinstance(mirrored, LocalFeatures) and mirrored.width == size[0]


def test_a_flipped_images_mirrored_look_is_made_once_for_all_its_pairs(photo_dir, monkeypatch):
    """``verify_stored`` with a ``ThumbLooks`` (as ``PairMatcher.verify`` passes
    it) makes an image's mirrored thumbnail features once for all its pairs,
    with the same verification as without."""
    import matchkit.match.pairs as M
    import matchkit.match.verification as V

    recs = {n: extract(photo_dir / n) for n in ("a.jpg", "c.jpg", "a_flip.jpg")}
    feats = {n: (r.local, r.thumb) for n, r in recs.items()}
    settings = Settings()

    def run(looks):
        out = []
        for a in ("a.jpg", "c.jpg"):
            ev = M.PairEvidence(1 if a == "a.jpg" else 2, 3, 20, 0.9,
                                extra={"reflect": True, "verifiable": True}, pending=True)
            M.verify_stored(ev, feats[a], feats["a_flip.jpg"], None, None, {}, settings,
                            True, looks)
            out.append((ev.verification, ev.rule, ev.extra.get("mirror_tried")))
        return out

    calls = []
    real = V.thumb_features
    monkeypatch.setattr(V, "thumb_features", lambda thumb, *a, **kw: calls.append(
        (id(thumb), kw.get("mirror", False))) or real(thumb, *a, **kw))
    plain = run(None)
    assert calls.count((id(recs["a_flip.jpg"].thumb), True)) == 2  # once per pair
    calls.clear()
    shared = run(M.ThumbLooks())
    assert calls.count((id(recs["a_flip.jpg"].thumb), True)) == 1  # once for both
    assert shared == plain
    assert plain[0][0].mirrored and plain[0][0].inliers >= 30  # the flip was found mirrored


def test_jpeg_stream_digest_ignores_metadata_only():
    img = PIL.Image.new("RGB", (64, 48), (10, 200, 30))
    plain, tagged = io.BytesIO(), io.BytesIO()
    img.save(plain, "JPEG", quality=90)
    exif = PIL.Image.Exif()
    exif[0x010E] = "a description"  # metadata only
    img.save(tagged, "JPEG", quality=90, exif=exif, comment=b"hello")
    assert plain.getvalue() != tagged.getvalue()
    assert jpeg_stream_digest(plain.getvalue()) == jpeg_stream_digest(tagged.getvalue())
    assert jpeg_stream_digest(plain.getvalue()) != jpeg_stream_digest(plain.getvalue(), 6)
    other = io.BytesIO()
    img.save(other, "JPEG", quality=60)
    assert jpeg_stream_digest(other.getvalue()) != jpeg_stream_digest(plain.getvalue())
    assert jpeg_stream_digest(b"not a jpeg") is None


def _outcome(gallery: Gallery, ids: list[int], root, settings: Settings) -> list:
    """Clusters as (keeper, members, pairs with kind and relation), paths
    relative to ``root`` (the folder may have moved since)."""
    clusters, _, _ = find_clusters(gallery, ids, settings)

    def rel(p: str) -> str:
        return p.split(root.name + "/", 1)[1]

    return sorted((rel(c.keep), sorted(map(rel, c.members)),
                   sorted((rel(p.a), rel(p.b), p.kind, p.relation) for p in c.pairs))
                  for c in clusters)


def _gallery_with_icons(photo_dir, tmp_path):
    _icon(128).save(photo_dir / "icon128.png")
    _icon(64).save(photo_dir / "icon64.png")
    g = Gallery(tmp_path / "g", Settings(workers=1))
    ids = g.add(sorted(p for p in photo_dir.rglob("*") if p.is_file())).ids
    return g, ids


def test_matching_reads_no_file(photo_dir, tmp_path, monkeypatch):
    """Verification (mirrored looks, icons, same pixels) runs on stored
    records alone: the same clusters, keepers and relations once the files
    are gone, and no decoder is asked for a file meanwhile. (Images in a
    template crowd still get a closer look from their file; there are none
    here.)"""
    s = Settings(workers=1)
    g, ids = _gallery_with_icons(photo_dir, tmp_path)
    before = _outcome(g, ids, photo_dir, s)
    g.close()
    assert any("a_flip.jpg" in c[1] for c in before)
    assert any(c[1] == ["icon128.png", "icon64.png"] for c in before)
    assert any(p[3] == "exact" for c in before for p in c[2])  # a.png: same pixels as a.jpg

    moved = tmp_path / "elsewhere"
    shutil.move(str(photo_dir), moved)
    opened = []
    real_open = PIL.Image.open

    def no_files(fp, *args, **kwargs):
        if not hasattr(fp, "read"):  # a path: stored blobs come as file objects
            opened.append(fp)
        return real_open(fp, *args, **kwargs)

    def no_load(path, *args, **kwargs):
        opened.append(path)
        raise AssertionError(f"load_image({path}) during matching")

    monkeypatch.setattr(PIL.Image, "open", no_files)
    for module in list(sys.modules.values()):  # every ``from .io import load_image`` too
        if (getattr(module, "__name__", "").startswith("matchkit")
                and vars(module).get("load_image") is matchkit.io.load.load_image):
            monkeypatch.setattr(module, "load_image", no_load)
    with Gallery(tmp_path / "g", s) as g2:
        after = _outcome(g2, ids, photo_dir, s)
    assert opened == []
    assert after == before


def test_old_gallery_is_migrated_and_extracted_again(photo_dir, tmp_path):
    """A gallery of schema 1 (raw features, no icon column) opens: its rows
    stay readable, and the next add decodes every file once more into the
    compact form."""
    if sqlite3.sqlite_version_info < (3, 35):
        pytest.skip("ALTER TABLE DROP COLUMN needs SQLite 3.35")
    files = sorted(p for p in photo_dir.rglob("*.jpg"))
    with Gallery(tmp_path / "g", Settings(workers=1)) as g:
        ids = g.add(files).ids
        want = {i: g.local_features(i) for i in ids}
        rows = {i: extract(g.get(i).path) for i in ids}
    db = sqlite3.connect(tmp_path / "g" / DB_NAME)
    for i, rec in rows.items():  # as schema 1 stored them
        db.execute("UPDATE local_features SET xy=?, thumb=? WHERE image_id=?",
                   (rec.local.xy.astype("<f4").tobytes(), rec.thumb.tobytes(), i))
    db.execute("ALTER TABLE local_features DROP COLUMN encoding")
    db.execute("ALTER TABLE images DROP COLUMN icon")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    with Gallery(tmp_path / "g", Settings(workers=1)) as g:
        assert int(g._meta("schema_version")) == SCHEMA_VERSION
        for i in ids:
            local, thumb = g.local_features(i)
            assert np.abs(local.xy - want[i][0].xy).max() <= 1 / 32
            assert np.abs(thumb.astype(int) - want[i][1]).max() <= 16
        report = g.add(files)
        assert report.updated == len(ids) and sorted(report.ids) == sorted(ids)
        encodings = {r[0] for r in g._db.execute("SELECT encoding FROM local_features")}
        assert encodings == {2}
