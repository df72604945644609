"""Moving duplicates and undoing it: nothing lost, nothing overwritten, ever.

Failures that real permissions cannot produce when tests run as root (a
read-only folder does not stop root) are simulated by making the system call
raise, exactly where the real failure would happen.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from matchkit.io import moves, relocate
from matchkit.cli.commands import cli
from matchkit.io.moves import MoveError, move_duplicates, plan_moves, read_manifest, undo


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: (sha256, mtime_ns), keyed by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            data = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
            out[str(p.relative_to(folder))] = (hashlib.sha256(data).digest(), st.st_mtime_ns)
    return out


@pytest.fixture
def tree(tmp_path: Path):
    """A folder of small files in two sub-folders and a report with 2 clusters."""
    root = tmp_path / "photos"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "other").mkdir()
    files = {
        "a.jpg": b"A" * 1000, "sub/a_copy.jpg": b"A" * 1000, "sub/deep/a_small.jpg": b"a" * 300,
        "b.jpg": b"B" * 2000, "other/b_edit.jpg": b"b" * 1500, "other/b_more.jpg": b"bb" * 10,
        "single.jpg": b"S" * 10,
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.utime(root / "sub/a_copy.jpg", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    p = lambda rel: str(root / rel)  # noqa: E731
    report = {"clusters": [
        {"keep": p("a.jpg"), "members": [p("a.jpg"), p("sub/a_copy.jpg"), p("sub/deep/a_small.jpg")],
         "pairs": []},
        {"keep": p("b.jpg"), "members": [p("b.jpg"), p("other/b_edit.jpg"), p("other/b_more.jpg")],
         "pairs": []},
    ], "skipped": [], "stats": {}}
    return root, report, tmp_path / "dupes"


def test_move_then_undo_is_byte_identical_at_original_paths(tree):
    root, report, dest = tree
    before = snapshot(root)
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok and res.counts() == {"moved": 4}
    # Keepers and unclustered files stay; non-keepers keep their relative paths.
    assert sorted(snapshot(root)) == ["a.jpg", "b.jpg", "single.jpg"]
    assert (dest / "sub/deep/a_small.jpg").read_bytes() == b"a" * 300
    assert (dest / "other/b_more.jpg").exists()
    data = read_manifest(res.manifest)
    assert data["status"] == "moved" and all(m["state"] == "moved" for m in data["moves"])
    assert all(len(m["sha256"]) == 64 for m in data["moves"])

    back = undo(res.manifest)
    assert back.ok and back.counts() == {"restored": 4}
    assert snapshot(root) == before  # bytes and modification times
    # The folders the move created are gone again; only the manifest is left.
    assert [p.name for p in dest.iterdir()] == [Path(res.manifest).name]
    assert read_manifest(res.manifest)["status"] == "undone"
    # Undo twice is harmless, and says it did nothing.
    again = undo(res.manifest)
    assert again.counts() == {} and again.already == {"restored": 4}
    assert snapshot(root) == before


def test_dry_run_changes_nothing(tree):
    root, report, dest = tree
    before = snapshot(root)
    res = move_duplicates(report, dest, roots=[root], dry_run=True)
    assert res.dry_run and res.manifest is None and len(res.moves) == 4
    assert {Path(m.dst).relative_to(dest).as_posix() for m in res.moves} == {
        "sub/a_copy.jpg", "sub/deep/a_small.jpg", "other/b_edit.jpg", "other/b_more.jpg"}
    assert snapshot(root) == before and not dest.exists()


def test_name_collision_gets_a_suffix_and_nothing_is_overwritten(tree):
    root, report, dest = tree
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "a_copy.jpg").write_bytes(b"already here")
    (dest / "sub" / "a_copy~1.jpg").write_bytes(b"also here")
    before = snapshot(root)
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok
    assert (dest / "sub" / "a_copy.jpg").read_bytes() == b"already here"
    assert (dest / "sub" / "a_copy~1.jpg").read_bytes() == b"also here"
    assert (dest / "sub" / "a_copy~2.jpg").read_bytes() == b"A" * 1000
    assert undo(res.manifest).ok
    assert snapshot(root) == before
    assert (dest / "sub" / "a_copy.jpg").read_bytes() == b"already here"


def test_two_sources_with_one_relative_name_do_not_collide(tmp_path):
    r1, r2 = tmp_path / "x" / "cam", tmp_path / "y" / "cam"
    for r in (r1, r2):
        r.mkdir(parents=True)
        (r / "k.jpg").write_bytes(b"k" + r.parent.name.encode())
        (r / "d.jpg").write_bytes(b"d" + r.parent.name.encode())
    report = {"clusters": [{"keep": str(r / "k.jpg"), "members": [str(r / "k.jpg"), str(r / "d.jpg")]}
                           for r in (r1, r2)]}
    res = move_duplicates(report, tmp_path / "dupes", roots=[r1, r2])
    assert sorted(Path(m.dst).relative_to(tmp_path / "dupes").as_posix() for m in res.moves) == \
        ["x/cam/d.jpg", "y/cam/d.jpg"]


def test_destination_appearing_after_planning_is_not_overwritten(tree):
    root, report, dest = tree
    planned = plan_moves(report, dest, roots=[root])
    target = Path(planned[0].dst)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's file")
    res = moves.move_files(planned, dest)
    assert res.moves[0].state == "failed" and "original path" in res.moves[0].error
    assert target.read_bytes() == b"someone else's file"
    assert Path(res.moves[0].src).exists()
    assert res.counts() == {"failed": 1, "moved": 3}


def test_read_only_source_folder_leaves_file_in_place(tree, monkeypatch):
    root, report, dest = tree
    before = snapshot(root)
    locked = root / "other"
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the permission bits: fail where the kernel would
        real_unlink = os.unlink

        def unlink(path, *a, **kw):
            if os.path.dirname(os.path.abspath(path)) == str(locked):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_unlink(path, *a, **kw)
        monkeypatch.setattr(os, "unlink", unlink)
        real_rename = os.rename

        def rename(src, dst, *a, **kw):
            if str(locked) in (os.path.dirname(os.path.abspath(src)),
                               os.path.dirname(os.path.abspath(dst))):
                raise PermissionError(errno.EACCES, "Permission denied", str(src))
            return real_rename(src, dst, *a, **kw)
        monkeypatch.setattr(os, "rename", rename)
    try:
        res = move_duplicates(report, dest, roots=[root])
    finally:
        locked.chmod(0o755)
    failed = {Path(m.src).name: m for m in res.problems}
    assert sorted(failed) == ["b_edit.jpg", "b_more.jpg"]
    assert all("Permission denied" in m.error and "left at its original path" in m.error
               for m in failed.values())
    assert res.counts() == {"moved": 2, "failed": 2}
    # The failed files are still in place, and no second name was left behind.
    assert (locked / "b_edit.jpg").read_bytes() == b"b" * 1500
    assert not (dest / "other" / "b_edit.jpg").exists()
    monkeypatch.undo()
    assert undo(res.manifest).ok
    assert snapshot(root) == before


def test_disk_full_during_cross_filesystem_copy_loses_nothing(tree, monkeypatch):
    root, report, dest = tree
    before = snapshot(root)
    monkeypatch.setattr(relocate, "_same_filesystem", lambda src, dst_dir: False)
    calls = []

    def full_disk(src, tmp):
        calls.append(tmp)
        with open(tmp, "xb") as f:  # a partial copy reaches the disk, then ENOSPC
            f.write(Path(src).read_bytes()[:7])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    monkeypatch.setattr(relocate, "_copy_file", full_disk)
    res = move_duplicates(report, dest, roots=[root])
    assert len(calls) == 4 and res.counts() == {"failed": 4}
    assert all("No space left on device" in m.error for m in res.moves)
    assert snapshot(root) == before
    # No partial copy and no final name anywhere in the destination.
    assert [p for p in dest.rglob("*") if p.is_file() and p.suffix != ".json"] == []


def test_cross_filesystem_copy_verifies_and_undo_restores(tree, monkeypatch):
    root, report, dest = tree
    before = snapshot(root)
    monkeypatch.setattr(relocate, "_same_filesystem", lambda src, dst_dir: False)
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok and res.counts() == {"moved": 4}
    assert (dest / "sub" / "a_copy.jpg").stat().st_mtime_ns == before["sub/a_copy.jpg"][1]
    assert undo(res.manifest).ok
    assert snapshot(root) == before


def test_corrupted_copy_is_detected_and_original_kept(tree, monkeypatch):
    root, report, dest = tree
    before = snapshot(root)
    monkeypatch.setattr(relocate, "_same_filesystem", lambda src, dst_dir: False)

    def bad_copy(src, tmp):
        data = bytearray(Path(src).read_bytes())
        data[0] ^= 0xFF  # a bit flip on the way to the other disk
        with open(tmp, "xb") as f:
            f.write(data)
        return "not checked by the caller"
    monkeypatch.setattr(relocate, "_copy_file", bad_copy)
    res = move_duplicates(report, dest, roots=[root])
    assert res.counts() == {"failed": 4}
    assert all("hash differs" in m.error for m in res.moves)
    assert snapshot(root) == before


_CRASH = r"""
import os, sys
sys.path.insert(0, {repo!r})
from matchkit.io import moves
real = moves._relocate
n = [0]
def relocate(src, dst, expect, created):
    n[0] += 1
    if n[0] == 3:            # killed after the link, before the original is unlinked
        moves._makedirs(os.path.dirname(dst), created)
        os.link(src, dst)
        os._exit(9)
    return real(src, dst, expect, created)
moves._relocate = relocate
moves.move_files(moves.plan_moves({report!r}, {dest!r}, [{root!r}]), {dest!r},
                 manifest={manifest!r})
"""


def test_killed_mid_move_then_undo_restores_everything(tree, tmp_path):
    root, report, dest = tree
    before = snapshot(root)
    manifest = tmp_path / "manifest.json"
    code = _CRASH.format(repo=str(Path(__file__).resolve().parent.parent), report=report,
                         dest=str(dest), root=str(root), manifest=str(manifest))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    # The manifest was written before the first move; states may lag behind.
    data = read_manifest(manifest)
    assert data["status"] == "moving" and len(data["moves"]) == 4
    assert len(snapshot(root)) < len(before)  # two files really moved
    res = undo(manifest)
    assert res.ok, res.to_dict()
    assert snapshot(root) == before
    assert [p for p in dest.rglob("*") if p.is_file()] == []  # no copy left behind


def test_killed_during_cross_filesystem_copy_then_undo(tree, tmp_path, monkeypatch):
    root, report, dest = tree
    before = snapshot(root)
    monkeypatch.setattr(relocate, "_same_filesystem", lambda src, dst_dir: False)

    class Killed(BaseException):
        pass

    def dying_copy(src, tmp):
        with open(tmp, "xb") as f:
            f.write(b"partial")
        raise Killed
    monkeypatch.setattr(relocate, "_copy_file", dying_copy)
    with pytest.raises(Killed):
        move_duplicates(report, dest, roots=[root], manifest=tmp_path / "m.json")
    # Pretend the cleanup never ran (a real kill would not run it).
    part = dest / "sub" / f".a_copy.jpg{moves.PART_SUFFIX}"
    part.write_bytes(b"partial")
    monkeypatch.undo()
    res = undo(tmp_path / "m.json")
    assert res.ok and not part.exists()
    assert snapshot(root) == before


def test_undo_never_overwrites_a_file_that_reappeared(tree):
    root, report, dest = tree
    before = snapshot(root)
    res = move_duplicates(report, dest, roots=[root])
    newcomer = root / "sub" / "a_copy.jpg"
    newcomer.write_bytes(b"a new file with the old name")
    back = undo(res.manifest)
    assert not back.ok
    [bad] = back.problems
    assert bad.src == str(newcomer) and "not overwritten" in bad.error
    assert newcomer.read_bytes() == b"a new file with the old name"
    assert (dest / "sub" / "a_copy.jpg").read_bytes() == b"A" * 1000
    assert back.counts() == {"restored": 3, "undo_failed": 1}
    # Once the newcomer is out of the way, undo finishes the job.
    newcomer.unlink()
    assert undo(res.manifest).ok
    assert snapshot(root) == before


def test_undo_refuses_a_moved_file_that_changed(tree):
    root, report, dest = tree
    res = move_duplicates(report, dest, roots=[root])
    (dest / "other" / "b_edit.jpg").write_bytes(b"edited after the move")
    back = undo(res.manifest)
    [bad] = back.problems
    assert "hash differs" in bad.error and not (root / "other" / "b_edit.jpg").exists()
    assert (dest / "other" / "b_edit.jpg").read_bytes() == b"edited after the move"


def test_symlinks_move_as_links(tree):
    root, report, dest = tree
    (root / "link.jpg").symlink_to("b.jpg")
    report["clusters"][1]["members"].append(str(root / "link.jpg"))
    before = snapshot(root)
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok and (dest / "link.jpg").is_symlink()
    assert undo(res.manifest).ok
    assert snapshot(root) == before and (root / "link.jpg").is_symlink()


def test_keepers_never_move_and_bad_destinations_refused(tree, tmp_path):
    root, report, dest = tree
    report["clusters"].append({"keep": str(root / "sub/a_copy.jpg"),
                               "members": [str(root / "sub/a_copy.jpg"), str(root / "single.jpg")]})
    srcs = {m.src for m in plan_moves(report, dest, roots=[root])}
    assert str(root / "sub/a_copy.jpg") not in srcs and str(root / "a.jpg") not in srcs
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(MoveError):
        plan_moves(report, f)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(MoveError):
        undo(bad)


# ---------------------------------------------------------------- through the CLI

def test_cli_move_dry_run_undo(photo_dir, tmp_path):
    runner = CliRunner()
    before = snapshot(photo_dir)
    dest = tmp_path / "dupes"
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--move-duplicates-to", str(dest),
                            "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("would move: ") == 5 and "nothing was changed" in r.stdout
    assert snapshot(photo_dir) == before and not dest.exists()

    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--move-duplicates-to", str(dest),
                            "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["moves"]["counts"] == {"moved": 5} and len(out["clusters"]) == 2
    keepers = {str(Path(c["keep"]).relative_to(photo_dir)) for c in out["clusters"]}
    assert set(snapshot(photo_dir)) == keepers | {"c.jpg", "d.jpg"}
    moved = {str(p.relative_to(dest)) for p in dest.rglob("*.*") if p.suffix != ".json"}
    assert moved == set(before) - keepers - {"c.jpg", "d.jpg"}  # relative paths kept

    r = runner.invoke(cli, ["undo", out["moves"]["manifest"], "--dry-run"])
    assert r.exit_code == 0 and "5 files would be put back" in r.stdout
    assert len(snapshot(photo_dir)) == 4
    r = runner.invoke(cli, ["undo", out["moves"]["manifest"], "--json", "-"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"] == {"restored": 5}
    assert "restored 5 files" in r.stderr
    assert snapshot(photo_dir) == before


@pytest.mark.parametrize("args", [
    ["dedupe", ".", "--dry-run"],
    ["undo", "/no/such/manifest.json"],
    ["undo"],
])
def test_cli_bad_arguments_one_line_exit_2(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:")


def test_cli_move_target_is_a_file(photo_dir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--move-duplicates-to", str(f)])
    assert r.exit_code == 2 and r.stderr.startswith("matchkit: error:")


def test_cli_undo_conflict_exits_1(tree):
    root, report, dest = tree
    res = move_duplicates(report, dest, roots=[root])
    (root / "other" / "b_more.jpg").write_bytes(b"new")
    r = CliRunner().invoke(cli, ["undo", res.manifest, "--json", "-"])
    assert r.exit_code == 1
    assert "not restored" in r.stderr and json.loads(r.stdout)["counts"]["undo_failed"] == 1
    assert "restored 3 files, 1 could not" in r.stderr


# ---------------------------------------------------------------- manifests are data, not commands

def disk_state(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: folders, links (target) and files (bytes, mtime)."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", p.read_bytes(), p.stat().st_mtime_ns)
    return out


@pytest.fixture
def moved(tree, tmp_path):
    """A real move of ``tree`` and things outside it a hostile manifest could aim at."""
    root, report, dest = tree
    outside = tmp_path / "outside"
    (outside / "empty").mkdir(parents=True)
    (outside / "victim.txt").write_bytes(b"precious, lives outside the scanned folder")
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok
    return root, dest, outside, Path(res.manifest)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(src, dst, sha="", state="moved"):
    return {"src": str(src), "dst": str(dst), "cluster": 0, "size": 1, "sha256": sha,
            "state": state, "error": ""}


def _hostile(kind: str, data: dict, root: Path, dest: Path, outside: Path,
             manifest: Path) -> None:
    victim = outside / "victim.txt"
    first = data["moves"][0]
    if kind == "dst_outside":          # move any file anywhere ...
        data["moves"].append(_entry(root / "stolen.txt", victim, _sha(victim)))
    elif kind == "sha_null":           # ... or without the hash check
        data["moves"].append(_entry(root / "stolen.txt", victim, None))
    elif kind == "sha_null_own_entry":
        first["sha256"] = None
    elif kind == "src_equals_dst":     # "restoring" a file onto itself deletes it
        data["moves"].append(_entry(victim, victim, _sha(victim)))
    elif kind == "src_equals_dst_in_root":  # ... even the keeper itself
        keeper = root / "a.jpg"
        data["moves"].append(_entry(keeper, keeper, _sha(keeper)))
    elif kind == "dotdot":
        first["src"] = f"{root}/sub/../../outside/escaped.jpg"
    elif kind == "relative":           # resolved against the current folder
        first["src"] = "escaped.jpg"
    elif kind == "src_outside_roots":
        first["src"] = str(outside / "escaped.jpg")
    elif kind == "created_dirs_outside":  # undo removes listed (empty) folders
        data["created_dirs"].append(str(outside / "empty"))
    elif kind == "roots_missing":
        del data["roots"]
    elif kind == "root_relative":
        data["roots"] = ["photos"]
    elif kind == "duplicate_src":
        data["moves"][1]["src"] = first["src"]
    elif kind == "unknown_state":
        first["state"] = "rm -rf"
    elif kind == "dst_is_the_manifest":
        first["dst"], first["sha256"] = str(manifest), _sha(manifest)
    else:
        raise AssertionError(kind)


HOSTILE = ["dst_outside", "sha_null", "sha_null_own_entry", "src_equals_dst",
           "src_equals_dst_in_root", "dotdot",
           "relative", "src_outside_roots", "created_dirs_outside", "roots_missing",
           "root_relative", "duplicate_src", "unknown_state", "dst_is_the_manifest"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_manifest_is_refused_whole_and_changes_no_file(moved, tmp_path, monkeypatch,
                                                               kind):
    root, dest, outside, manifest = moved
    data = json.loads(manifest.read_text())
    _hostile(kind, data, root, dest, outside, manifest)
    manifest.write_text(json.dumps(data))
    monkeypatch.chdir(outside)
    before = disk_state(tmp_path)
    for args in (["undo", str(manifest), "--dry-run"], ["undo", str(manifest)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (kind, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("matchkit: error: "), r.stderr
        assert disk_state(tmp_path) == before
    with pytest.raises(MoveError):
        undo(manifest)
    assert disk_state(tmp_path) == before


def test_manifest_records_scanned_roots_and_undo_checks_them(moved):
    root, dest, outside, manifest = moved
    data = read_manifest(manifest)
    assert data["roots"] == [str(root)] and data["dest"] == str(dest)
    assert all(os.path.isabs(m["src"]) and len(m["sha256"]) == 64 for m in data["moves"])
    assert undo(manifest).ok


def test_old_manifest_without_roots_is_refused(moved, tmp_path):
    root, dest, outside, manifest = moved
    data = json.loads(manifest.read_text())
    data["matchkit_manifest"] = 1
    del data["roots"]
    manifest.write_text(json.dumps(data))
    before = disk_state(tmp_path)
    with pytest.raises(MoveError, match="format 1"):
        undo(manifest)
    assert disk_state(tmp_path) == before


def test_undo_does_not_follow_a_folder_replaced_by_a_link_out_of_the_roots(moved, tmp_path):
    """The manifest is fine but the disk changed: ``photos/other`` now leads outside."""
    root, dest, outside, manifest = moved
    (root / "other").rmdir()
    (root / "other").symlink_to(outside)
    back = undo(manifest)
    assert {Path(m.src).name for m in back.problems} == {"b_edit.jpg", "b_more.jpg"}
    assert all("symbolic link" in m.error for m in back.problems)
    assert sorted(p.name for p in outside.iterdir()) == ["empty", "victim.txt"]
    assert (dest / "other" / "b_edit.jpg").exists()


def test_second_undo_restores_nothing_and_says_so(moved):
    root, dest, outside, manifest = moved
    assert undo(manifest).counts() == {"restored": 4}
    before = disk_state(manifest.parent.parent)
    again = undo(manifest)
    assert again.ok and again.counts() == {} and again.already == {"restored": 4}
    assert disk_state(manifest.parent.parent) == before  # not even the manifest changed


def test_cli_undo_prints_a_summary_and_details_on_request(moved):
    root, dest, outside, manifest = moved
    runner = CliRunner()
    r = runner.invoke(cli, ["undo", str(manifest), "--dry-run"])
    assert r.exit_code == 0 and "4 files would be put back" in r.stdout
    assert "{" not in r.stdout  # no JSON unless asked for
    r = runner.invoke(cli, ["undo", str(manifest), "-v"])
    assert r.exit_code == 0, r.output
    assert "restored 4 files" in r.stdout
    assert r.stdout.count("restored: ") == 4 and "{" not in r.stdout
    r = runner.invoke(cli, ["undo", str(manifest)])
    assert r.exit_code == 0
    assert r.stdout.strip() == ("nothing left to restore: all 4 moved files were put back "
                                "by an earlier undo")
    assert "restored" not in r.stdout and "{" not in r.stdout
    r = runner.invoke(cli, ["undo", str(manifest), "--dry-run"])
    assert r.exit_code == 0 and r.stdout.startswith("nothing left to restore")
    r = runner.invoke(cli, ["undo", str(manifest), "--json", "-"])
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"] == {}
    assert "nothing left to restore" in r.stderr


def test_link_to_a_file_outside_the_roots_is_skipped_with_a_reason(tree, tmp_path):
    root, report, dest = tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "twin.jpg").write_bytes(b"a" * 300)
    (root / "twin.jpg").symlink_to(outside / "twin.jpg")
    # A gallery reports the file a link leads to, not the link.
    report["clusters"][0]["members"].append(str(outside / "twin.jpg"))
    res = move_duplicates(report, dest, roots=[root])
    assert res.ok and res.counts() == {"moved": 4, "skipped": 1}
    [skip] = [m for m in res.moves if m.state == "skipped"]
    assert skip.src == str(outside / "twin.jpg") and "outside the scanned folders" in skip.error
    assert (outside / "twin.jpg").read_bytes() == b"a" * 300 and (root / "twin.jpg").is_symlink()
    assert undo(res.manifest).ok


def test_root_given_through_a_link_keeps_the_layout(tree, tmp_path):
    root, report, dest = tree
    link = tmp_path / "link_to_photos"
    link.symlink_to(root)
    res = move_duplicates(report, dest, roots=[link])
    assert res.ok
    assert {Path(m.dst).relative_to(dest).as_posix() for m in res.moves} == {
        "sub/a_copy.jpg", "sub/deep/a_small.jpg", "other/b_edit.jpg", "other/b_more.jpg"}
    assert read_manifest(res.manifest)["roots"] == [str(root)]
    assert undo(res.manifest).ok


def _run_move(runner, scan, dest):
    r = runner.invoke(cli, ["dedupe", str(scan), "--move-duplicates-to", str(dest),
                            "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_cli_symlinks_never_move_files_from_outside_and_second_run_moves_nothing(
        photo_dir, tmp_path):
    runner = CliRunner()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "twin.jpg").write_bytes((photo_dir / "a_small.jpg").read_bytes())
    (photo_dir / "twin_link.jpg").symlink_to(outside / "twin.jpg")
    link = tmp_path / "link"
    link.symlink_to(photo_dir)
    before = snapshot(photo_dir)
    out = _run_move(runner, link, link / "dupes")
    dest = photo_dir / "dupes"
    assert (outside / "twin.jpg").is_file() and (photo_dir / "twin_link.jpg").is_symlink()
    skipped = [m for m in out["moves"]["moves"] if m["state"] == "skipped"]
    assert [Path(m["src"]).name for m in skipped] == ["twin.jpg"]
    keepers = {str(Path(c["keep"]).relative_to(photo_dir)) for c in out["clusters"]
               if Path(c["keep"]).parent != outside}
    moved = {str(p.relative_to(dest)) for p in dest.rglob("*.*") if p.suffix != ".json"}
    assert any("/" in rel for rel in moved)  # sub/... kept, not flattened
    assert moved == set(before) - keepers - {"c.jpg", "d.jpg", "twin_link.jpg"}
    # The destination lies inside the scanned folder: a second run finds the
    # moved files again and must not move them a second time.
    again = _run_move(runner, link, link / "dupes")
    assert again["moves"]["counts"].get("moved", 0) == 0 and again["moves"]["manifest"] is None
    assert not (dest / "dupes").exists()
    assert {str(p.relative_to(dest)) for p in dest.rglob("*.*") if p.suffix != ".json"} == moved


def test_file_name_that_is_not_utf8_moves_and_comes_back(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    keep, odd = root / "keep.jpg", os.fsdecode(os.fsencode(str(root)) + b"/caf\xe9.jpg")
    keep.write_bytes(b"K" * 10)
    Path(odd).write_bytes(b"K" * 10)
    report = {"clusters": [{"keep": str(keep), "members": [str(keep), odd]}]}
    res = move_duplicates(report, tmp_path / "dupes", roots=[root])
    assert res.ok and res.counts() == {"moved": 1} and not os.path.lexists(odd)
    assert undo(res.manifest).counts() == {"restored": 1}
    assert Path(odd).read_bytes() == b"K" * 10
