"""The CLI through click's CliRunner: outputs, one-line errors, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from matchkit.cli.commands import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_dedupe_writes_json_and_csv(runner, photo_dir, tmp_path):
    out_json, out_csv = tmp_path / "d.json", tmp_path / "d.csv"
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", str(out_json),
                            "--csv", str(out_csv), "-q"])
    assert r.exit_code == 0, r.output
    assert r.output == ""  # --quiet
    data = json.loads(out_json.read_text())
    assert len(data["clusters"]) == 2 and data["stats"]["images"] == 9
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == sum(len(c["members"]) for c in data["clusters"])
    assert sum(int(r["keep"]) for r in rows) == 2


def test_dedupe_prints_summary_and_json_to_stdout(runner, photo_dir):
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", "-"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["stats"]["clusters"] == 2
    assert "2 clusters" in r.stderr  # summary moves to stderr when stdout carries JSON


def test_dedupe_shows_progress_of_every_phase_with_counts(runner, photo_dir, tmp_path):
    """Without a terminal: plain lines on stderr, each phase named with done/total."""
    out = tmp_path / "out.json"
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", str(out),
                            "--csv", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith("matchkit: ")]
    for name, unit in (("extraction", "files"), ("candidates", "images"),
                       ("clustering", "distinct images"), ("report", "clusters"), ("writing", "files")):
        last = [line for line in lines if line.startswith(f"matchkit: {name} ")][-1]
        done, total = last.split()[2].split("/")
        assert done == total and " ".join(last.split()[3:]).startswith(unit), last
    assert [line.split()[1] for line in lines] == sorted(  # phases in pipeline order
        (line.split()[1] for line in lines),
        key=["extraction", "candidates", "clustering", "report", "writing"].index)
    assert "9/9 files" in r.stderr and "2/2 files" in r.stderr
    assert "pairs verified" in r.stderr  # shown with the clustering that asks for them
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", str(out), "-q"])
    assert r.exit_code == 0 and r.stderr == ""


def test_phase_progress_on_a_terminal_draws_bars(tmp_path):
    """A terminal gets a bar per phase (and the phase's last count as a line);
    a repeated keeper pass is a new bar."""
    from matchkit.util.progress import PhaseProgress

    stream = io.StringIO()
    shown = PhaseProgress(stream=stream, terminal=True)
    for phase, done, total in [("add", 0, 3), ("add", 3, 3), ("match", 3, 3), ("cluster", 1, 2),
                               ("verify", 4, 10), ("cluster", 2, 2), ("keepers", 2, 2),
                               ("keepers", 0, 2), ("keepers", 2, 2)]:
        shown(phase, done, total)
    shown.close()
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("matchkit:")]
    assert lines == ["matchkit: extraction 3/3 files", "matchkit: candidates 3/3 images",
                     "matchkit: clustering 2/2 distinct images, 4/10 pairs verified",
                     "matchkit: keeper pass 2 2/2 distinct images",
                     "matchkit: keeper pass 3 2/2 distinct images"]
    assert "\r" in stream.getvalue()  # bars were drawn


def test_unreadable_files_listed_and_exit_zero(runner, photo_dir):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", "-", "-q"])
    assert r.exit_code == 0
    skipped = json.loads(r.stdout)["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["broken.jpg"] and skipped[0]["reason"]


@pytest.mark.parametrize("args", [
    ["dedupe", "/definitely/not/here"],
    ["dedupe", "--bogus", "x"],
    ["dedupe"],
    ["dedupe", ".", "--threshold", "999"],
    ["nosuchcommand"],
])
def test_bad_arguments_one_line_exit_2(runner, args):
    r = runner.invoke(cli, args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:")


def test_gallery_path_that_is_a_file_is_an_error(runner, photo_dir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--gallery", str(f)])
    assert r.exit_code == 2 and "matchkit: error:" in r.stderr


def test_every_command_has_help_with_example(runner):
    import click

    subs = [[name, sub] for name, group in cli.commands.items()
            if isinstance(group, click.Group) for sub in group.commands]
    assert ["labels", "import"] in subs
    for cmd in [[], *([name] for name in cli.commands), *subs]:
        r = runner.invoke(cli, [*cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output


@pytest.mark.parametrize("args, message", [
    (["--prefer", "biggest"], "unknown --prefer 'biggest'"),
    (["--prefer", "format:"], "unknown --prefer 'format:'"),
    (["--keep-in", "/no/such/folder"], "--keep-in must be an existing folder"),
])
def test_dedupe_bad_keeper_options_exit_2(runner, photo_dir, args, message):
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "-q", *args])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr


def test_dedupe_keep_in_and_prefer(runner, photo_dir, tmp_path):
    """photo_dir's a-group: a.jpg is the keeper by default; with sub/ as a
    reference folder its byte copy there is kept and never planned to move."""
    dest = tmp_path / "dupes"
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--keep-in", str(photo_dir / "sub"),
                            "--move-duplicates-to", str(dest), "--dry-run", "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    a = next(c for c in data["clusters"] if any(m.endswith("a_flip.jpg") for m in c["members"]))
    assert Path(a["keep"]).name == "a_copy.jpg" and a["keep_reason"].startswith(
        "in reference folder")
    assert [Path(p).name for p in a["references"]] == ["a_copy.jpg"]
    planned = {Path(m["src"]).name for m in data["moves"]["moves"]}
    assert "a_copy.jpg" not in planned and "a.jpg" in planned
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--prefer", "format:png", "--json", "-",
                            "-q"])
    assert r.exit_code == 0, r.output
    keeps = {Path(c["keep"]).name: c["keep_reason"] for c in json.loads(r.stdout)["clusters"]}
    assert keeps["a.png"] == "preferred: format:PNG"


# ---------------------------------------------------------------- rough edges (issue 17)

def test_summary_lists_skipped_files_when_no_json_is_written(runner, photo_dir):
    for i in range(7):
        (photo_dir / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    r = runner.invoke(cli, ["dedupe", str(photo_dir)])
    assert r.exit_code == 0, r.output
    assert "in the JSON output" not in r.stdout  # no JSON was asked for
    named = [line for line in r.stdout.splitlines() if line.startswith("skipped: ")]
    assert len(named) == 5 and all(line.count(": ") >= 2 for line in named)
    assert f"skipped: {photo_dir / 'broken0.jpg'}: " in r.stdout
    assert "... and 2 more skipped files" in r.stdout
    # With JSON written, the summary points there instead of listing.
    r = runner.invoke(cli, ["dedupe", str(photo_dir), "--json", "-"])
    assert "skipped files are listed with their reasons under 'skipped' in the JSON on " \
        "stdout" in r.stderr
    assert "skipped: " not in r.stderr
    assert len(json.loads(r.stdout)["skipped"]) == 7


def test_models_table_and_json(runner):
    r = runner.invoke(cli, ["models", "--table"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "usable", "text", "description"]
    r2 = runner.invoke(cli, ["models", "--json"])
    models = json.loads(r2.stdout)
    assert models and all(any(line.startswith(m["name"] + " ") for line in lines)
                          for m in models)
    assert "{" not in r.stdout
    # Not a terminal (a pipe, as here): JSON, so `matchkit models | jq` keeps working.
    assert json.loads(runner.invoke(cli, ["models"]).stdout) == models


def _labelled_tree(root: Path) -> Path:
    from conftest import make_photo

    for cls, seeds in {"red": (11, 12), "blue": (13, 14)}.items():
        (root / cls).mkdir(parents=True)
        for s in seeds:
            make_photo(s).save(root / cls / f"{s}.jpg", quality=90)
    return root


def test_labels_commands_take_gallery_option_and_still_the_positional(runner, tmp_path):
    tree = _labelled_tree(tmp_path / "cat")
    g = tmp_path / "g"
    r = runner.invoke(cli, ["labels", "import", "--gallery", str(g), "--folder", str(tree)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 4
    r = runner.invoke(cli, ["labels", "show", "--gallery", str(g)])
    assert json.loads(r.stdout)["classes"] == {"blue": 2, "red": 2}
    # The older positional form still works (deprecated, said in --help).
    r = runner.invoke(cli, ["labels", "show", str(g)])
    assert r.exit_code == 0 and json.loads(r.stdout)["labelled"] == 4
    assert "deprecated" in runner.invoke(cli, ["labels", "import", "--help"]).stdout
    for args in (["labels", "import", "--folder", str(tree)],
                 ["labels", "import", str(g), "--gallery", str(tmp_path / "h"),
                  "--folder", str(tree)]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1
        assert r.stderr.startswith("matchkit: error:") and "--gallery" in r.stderr
    assert not (tmp_path / "h").exists()


def test_search_without_embeddings_says_check_needs_no_model(runner, photo_dir, tmp_path):
    g = tmp_path / "g"
    assert runner.invoke(cli, ["index", str(photo_dir), "--gallery", str(g), "-q"]).exit_code == 0
    r = runner.invoke(cli, ["search", "--gallery", str(g), "--image", str(photo_dir / "a.jpg")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "no embeddings yet" in r.stderr
    assert f"matchkit check --gallery {g} IMAGE" in r.stderr


def test_label_json_is_built_by_labeler_report_as_for_the_api(runner, tmp_path, monkeypatch):
    from matchkit.jobs.classify import Labeler

    tree = _labelled_tree(tmp_path / "cat")
    g = tmp_path / "g"
    runner.invoke(cli, ["labels", "import", "--gallery", str(g), "--folder", str(tree)])
    built = []
    real = Labeler.report

    def report(self, answers, seconds=0.0):
        built.append(real(self, answers, seconds))
        return built[-1]

    monkeypatch.setattr(Labeler, "report", report)
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(tree / "blue" / "13.jpg"),
                            "--calibration", "none", "-k", "3", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(built) == 1 and out == built[0]
    assert list(out) == ["answers", "stats", "calibration"] and out["calibration"] is None
    assert list(out["stats"]) == ["queries", "labelled", "unknown", "unreadable", "classes", "k",
                                  "profile", "target_precision", "level", "seconds"]
    assert out["stats"]["k"] == 3 and out["answers"][0]["label"] == "blue"


def test_first_label_shows_calibration_progress_then_not_again(runner, tmp_path):
    tree = _labelled_tree(tmp_path / "cat")
    g = tmp_path / "g"
    runner.invoke(cli, ["labels", "import", "--gallery", str(g), "--folder", str(tree)])
    query = tree / "red" / "11.jpg"
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(query)])
    assert r.exit_code == 0, r.output
    from matchkit.jobs.classify import CALIBRATION_STAGES
    lines = r.stderr.splitlines()
    assert "calibrating the unknown threshold" in lines[0]
    # Each stage announced with its size, in order, before the answer.
    at = [next(i for i, line in enumerate(lines) if line.startswith(f"matchkit: {stage} ("))
          for stage in CALIBRATION_STAGES]
    assert at == sorted(at) and at[0] == 1
    assert json.loads(r.stdout)["answers"][0]["label"] == "red"
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(query)])  # stored now
    assert "calibrat" not in r.stderr
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(query), "-q"])
    assert r.stderr == ""
    # `labels calibrate` shows the same progress (and none with -q).
    r = runner.invoke(cli, ["labels", "calibrate", "--gallery", str(g), "--samples", "2"])
    assert r.exit_code == 0 and json.loads(r.stdout)["source"] == "synthetic"
    assert f"matchkit: {CALIBRATION_STAGES[2]} (4)" in r.stderr
    r = runner.invoke(cli, ["labels", "calibrate", "--gallery", str(g), "--samples", "2", "-q"])
    assert r.exit_code == 0 and r.stderr == ""


def test_index_forget_missing_forgets_only_gone_files_under_the_folders(runner, photo_dir,
                                                                        tmp_path):
    """``index --forget-missing``: images whose files left the folders indexed
    are forgotten (listed in the summary), files and images elsewhere are
    left alone, and a gallery dedupe afterwards matches one from scratch."""
    import shutil

    from matchkit.store.gallery import Gallery

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photo_dir / "c.jpg", other / "c_elsewhere.jpg")
    g = tmp_path / "g"
    for folder in (photo_dir, other):
        assert runner.invoke(cli, ["index", str(folder), "--gallery", str(g), "--no-embed",
                                   "-q"]).exit_code == 0
    gone = [photo_dir / "sub" / "a_copy.jpg", photo_dir / "b_rot90.jpg",
            other / "c_elsewhere.jpg"]
    for f in gone:
        f.unlink()
    r = runner.invoke(cli, ["index", str(photo_dir), "--gallery", str(g), "--no-embed", "-q"])
    assert r.exit_code == 0 and "forgotten" not in json.loads(r.stdout)
    with Gallery(g) as gal:
        assert len(gal) == 10  # (nothing forgotten without the flag)
    r = runner.invoke(cli, ["index", str(photo_dir), "--gallery", str(g), "--no-embed",
                            "--forget-missing", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert sorted(Path(p).name for p in out["forgotten"]) == ["a_copy.jpg", "b_rot90.jpg"]
    assert out["images"] == 8
    with Gallery(g) as gal:
        kept = {Path(p).name for p in gal.paths().values()}
    assert "c_elsewhere.jpg" in kept and "a_copy.jpg" not in kept  # (another folder: kept)
    assert (photo_dir / "a.jpg").exists() and len(list(photo_dir.rglob("*.*"))) == 7
    r = runner.invoke(cli, ["index", str(photo_dir), "--gallery", str(g), "--no-embed",
                            "--forget-missing", "-q"])
    assert json.loads(r.stdout)["forgotten"] == []
    d1, d2 = tmp_path / "d1.json", tmp_path / "d2.json"
    assert runner.invoke(cli, ["dedupe", str(photo_dir), "--gallery", str(g), "--json",
                               str(d1), "-q"]).exit_code in (0, 1)
    assert runner.invoke(cli, ["dedupe", str(photo_dir), "--json", str(d2),
                               "-q"]).exit_code in (0, 1)
    assert json.loads(d1.read_text())["clusters"] == json.loads(d2.read_text())["clusters"]
