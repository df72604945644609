"""`matchkit apply`: a reviewed selection moves exactly its non-keepers, or nothing.

The review file is what the HTML page's "Save review" button downloads
(tests/test_browser.py clicks it); here it is made with
``review.review_of_report`` and edited as a reviewer would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from matchkit import dedupe
from matchkit.cli.commands import cli
from matchkit.report.review import ReviewError, parse_review, review_of_report


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def reviewed(photo_dir, tmp_path):
    """photo_dir's report and a review of it: in the a-cluster a_flip.jpg is made
    the keeper and a_small.jpg unticked; the b-cluster is left as suggested."""
    report = dedupe([photo_dir]).to_dict()
    rev = review_of_report(report, page="review.html").to_dict()
    a = next(c for c in rev["clusters"] if c["keep"].endswith("a.jpg"))
    flip, small = str(photo_dir / "a_flip.jpg"), str(photo_dir / "a_small.jpg")
    a["move"] = [m for m in a["move"] if m not in (flip, small)] + [a["keep"]]
    a["keep"], a["stay"] = flip, [small]
    path = tmp_path / "review.json"
    path.write_text(json.dumps(rev, indent=1))
    return photo_dir, path, tmp_path / "dupes"


def apply(*args):
    return CliRunner().invoke(cli, ["apply", *map(str, args)])


def test_apply_moves_exactly_the_reviewed_non_keepers_and_undo_restores(reviewed):
    root, review, dest = reviewed
    before = {p: (root / p).read_bytes() for p in files_under(root)}
    r = apply(review, "--to", dest)
    assert r.exit_code == 0, r.output
    assert "review: 2 clusters, 4 files to move, 1 unticked member left in place" in r.stdout
    b = next(c for c in json.loads(review.read_text())["clusters"]
             if Path(c["keep"]).name.startswith("b"))
    b_keep, b_move = Path(b["keep"]).name, Path(b["move"][0]).name
    # Kept: the chosen keeper, the unticked member, the b keeper, the singletons.
    assert files_under(root) == {"a_flip.jpg", "a_small.jpg", b_keep, "c.jpg", "d.jpg"}
    manifest = next(dest.glob("matchkit-moves-*.json"))
    assert files_under(dest) == {"a.jpg", "a.png", "sub/a_copy.jpg", b_move, manifest.name}
    assert f"undo with: matchkit undo {manifest}" in r.stdout
    r = CliRunner().invoke(cli, ["undo", str(manifest)])
    assert r.exit_code == 0 and r.stdout.strip() == "restored 4 files"
    assert {p: (root / p).read_bytes() for p in files_under(root)} == before


def test_a_changed_file_refuses_the_whole_review(reviewed):
    root, review, dest = reviewed
    (root / "b_rot90.jpg").write_bytes((root / "b_rot90.jpg").read_bytes() + b"\0")  # b's pair
    r = apply(review, "--to", dest)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("matchkit: error: review ")
    assert f"{root / 'b_rot90.jpg'} size changed" in r.stderr and "nothing was moved" in r.stderr
    assert not dest.exists() and len(files_under(root)) == 9


def test_a_vanished_keeper_refuses_too(reviewed):
    """Moving the duplicates of a keeper that is gone could leave no copy at all."""
    root, review, dest = reviewed
    os.unlink(root / "a_flip.jpg")
    r = apply(review, "--to", dest)
    assert r.exit_code == 2 and f"{root / 'a_flip.jpg'} is gone" in r.stderr
    assert not dest.exists()


def test_same_content_with_a_new_mtime_is_the_same_file(reviewed):
    root, review, dest = reviewed
    os.utime(root / "a.png", ns=(1_000_000_000, 1_000_000_000))  # touched, not changed
    assert apply(review, "--to", dest, "--dry-run").exit_code == 0
    # Without a recorded hash, the modification time decides.
    data = json.loads(review.read_text())
    for stamp in data["files"].values():
        del stamp["sha256"]
    review.write_text(json.dumps(data))
    r = apply(review, "--to", dest)
    assert r.exit_code == 2 and f"{root / 'a.png'} was modified" in r.stderr
    assert not dest.exists()


def test_dry_run_and_destination_from_the_review(reviewed):
    root, review, dest = reviewed
    r = apply(review, "--to", dest, "--dry-run")
    assert r.exit_code == 0 and "dry run: 4 files would move" in r.stdout
    assert not dest.exists() and len(files_under(root)) == 9
    r = apply(review)
    assert r.exit_code == 2 and r.stderr.strip() == (
        "matchkit: error: the review names no destination folder; give one with --to DIR")
    data = json.loads(review.read_text())
    data["to"] = "dupes"  # typed on the page; relative to what?
    review.write_text(json.dumps(data))
    r = apply(review)
    assert r.exit_code == 2 and "'dupes' is not an absolute path" in r.stderr
    data["to"] = str(dest)
    review.write_text(json.dumps(data))
    r = apply(review, "--json", "-", "-q")
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"] == {"moved": 4}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(matchkit_review=7), "not a matchkit review file"),
    (lambda d: d["clusters"][0].update(keep="relative.jpg"), "absolute, normalised"),
    (lambda d: d["clusters"][0]["move"].append(d["clusters"][0]["keep"]), "listed twice"),
    (lambda d: d["clusters"][1]["move"].append(d["clusters"][0]["move"][0]), "listed twice"),
    (lambda d: d["clusters"][0].update(references=[d["clusters"][0]["move"][0]]),
     "reference folder"),
    (lambda d: d["files"].pop(d["clusters"][0]["move"][0]), "no recorded size"),
    (lambda d: d.update(files=[]), "'files' object"),
])
def test_malformed_reviews_are_refused_in_one_line(reviewed, edit, message):
    root, review, dest = reviewed
    data = json.loads(review.read_text())
    edit(data)
    review.write_text(json.dumps(data))
    r = apply(review, "--to", dest)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not dest.exists()


def test_unreadable_review_file(tmp_path):
    for content in (None, "{not json"):
        p = tmp_path / "r.json"
        if content is not None:
            p.write_text(content)
        r = apply(p, "--to", tmp_path / "d")
        assert r.exit_code == 2 and r.stderr.count("\n") == 1


def test_review_round_trips_and_mtime_may_be_text(reviewed):
    root, review, dest = reviewed
    data = json.loads(review.read_text())
    rev = parse_review(data)
    assert parse_review(rev.to_dict()).to_dict() == rev.to_dict()
    stamp = next(iter(data["files"].values()))
    stamp["mtime_ns"] = str(stamp["mtime_ns"])  # as the page writes it
    parse_review(data)
    stamp["mtime_ns"] = "soon"
    with pytest.raises(ReviewError, match="mtime_ns"):
        parse_review(data)


def test_a_name_that_is_not_utf8_survives_the_review_file(photo_dir, tmp_path):
    """Such names travel as \\udcNN escapes (as the page's JSON.stringify writes
    them) and name the very same bytes when the review is applied."""
    odd = os.fsdecode(b"c_copy_\xe9.jpg")
    (photo_dir / odd).write_bytes((photo_dir / "c.jpg").read_bytes())
    rev = review_of_report(dedupe([photo_dir]).to_dict()).to_dict()
    c = next(c for c in rev["clusters"] if Path(c["keep"]).name in ("c.jpg", odd))
    assert {Path(p).name for p in [c["keep"], *c["move"]]} == {"c.jpg", odd}
    text = json.dumps(rev)
    assert "\\udce9" in text
    review = tmp_path / "review.json"
    review.write_text(text)
    r = apply(review, "--to", tmp_path / "dupes")
    assert r.exit_code == 0, r.output
    moved = Path(c["move"][0]).name
    assert (tmp_path / "dupes" / moved).exists() and not (photo_dir / moved).exists()
