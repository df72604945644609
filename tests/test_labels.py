"""Labelled galleries: import from an ImageFolder tree or a CSV/JSONL table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_photo
from matchkit import Gallery
from matchkit.jobs.labels import (LabelError, class_counts, folder_labels, import_folder,
                                  import_table, table_labels)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """cat/ (2 photos, one in a subfolder), dog/ (1 photo + 1 broken file), a stray photo."""
    root = tmp_path / "tree"
    (root / "cat" / "more").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / ".hidden").mkdir()
    make_photo(1).save(root / "cat" / "c1.jpg")
    make_photo(2).save(root / "cat" / "more" / "c2.png")
    make_photo(3).save(root / "dog" / "d1.jpg")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    make_photo(4).save(root / ".hidden" / "h.jpg")
    make_photo(5).save(root / "stray.jpg")
    return root


def test_folder_import_labels_by_subfolder_and_reports_the_rest(tree, tmp_path):
    with Gallery(tmp_path / "g") as g:
        rep = import_folder(g, tree)
        assert rep.images == 3 and rep.classes == 2 and rep.added == 3
        reasons = {Path(s.path).name: s.reason for s in rep.skipped}
        assert set(reasons) == {"broken.jpg", "stray.jpg"}
        assert "class folder" in reasons["stray.jpg"]
        assert class_counts(g) == {"cat": 2, "dog": 1}
    # Labels persist with the gallery.
    with Gallery(tmp_path / "g", create=False) as g:
        by_name = {Path(g.get(i).path).name: v for i, v in g.labelled().items()}
        assert by_name == {"c1.jpg": ["cat"], "c2.png": ["cat"], "d1.jpg": ["dog"]}


def test_reimport_is_incremental_and_moves_images_between_classes(tree, tmp_path):
    with Gallery(tmp_path / "g") as g:
        import_folder(g, tree)
        (tree / "dog" / "c1.jpg").write_bytes((tree / "cat" / "c1.jpg").read_bytes())
        (tree / "cat" / "c1.jpg").unlink()
        rep = import_folder(g, tree)
        # Only the moved file is decoded; the gone one is forgotten.
        assert rep.added == 1 and rep.unchanged == 2 and rep.removed == 1
        assert class_counts(g) == {"cat": 1, "dog": 2}
        rep = import_folder(g, tree)
        assert rep.relabelled == rep.added == rep.removed == 0 and rep.unchanged == 3
        # A relabelled row in a table moves an image to another class.
        table = tmp_path / "fix.csv"
        table.write_text(f"{tree / 'dog' / 'c1.jpg'},cat\n")
        rep = import_table(g, table)
        assert rep.relabelled == 1 and class_counts(g) == {"cat": 2, "dog": 1}


def test_csv_import_with_header_relative_paths_and_bad_rows(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    make_photo(1).save(img / "a.jpg")
    make_photo(2).save(img / "b.jpg")
    table = tmp_path / "labels.csv"
    table.write_text("label,path\nsku-1,imgs/a.jpg\nsku-2,imgs/b.jpg\nsku-2,imgs/missing.jpg\n"
                     ",imgs/a.jpg\n\nsku-3,imgs/a.jpg\n")
    with Gallery(tmp_path / "g") as g:
        rep = import_table(g, table)
        assert rep.images == 2 and rep.classes == 3
        reasons = [s.reason for s in rep.skipped]
        assert any("no label" in r for r in reasons)
        assert any("cannot read file" in r for r in reasons)  # missing.jpg
        by_name = {Path(g.get(i).path).name: v for i, v in g.labelled().items()}
        assert by_name == {"a.jpg": ["sku-1", "sku-3"], "b.jpg": ["sku-2"]}


def test_csv_without_header_and_jsonl(tmp_path):
    make_photo(1).save(tmp_path / "a.jpg")
    (tmp_path / "l.csv").write_text(f"{tmp_path / 'a.jpg'},x\n")
    pairs, skipped = table_labels(tmp_path / "l.csv")
    assert pairs == [(tmp_path / "a.jpg", "x")] and not skipped
    (tmp_path / "l.jsonl").write_text(
        '{"path": "a.jpg", "labels": ["x", "y"]}\nnot json\n[1]\n{"path": "a.jpg"}\n')
    pairs, skipped = table_labels(tmp_path / "l.jsonl")
    assert [lab for _, lab in pairs] == ["x", "y"]
    assert [s.reason.split(":")[0] for s in skipped] == ["not JSON", "not a JSON object",
                                                         "row has no label"]


def test_bad_sources_raise_label_error(tmp_path):
    with pytest.raises(LabelError, match="no such folder"):
        folder_labels(tmp_path / "nope")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(LabelError, match="no rows"):
        table_labels(tmp_path / "empty.csv")
    with pytest.raises(LabelError, match="cannot read"):
        table_labels(tmp_path / "missing.csv")
    (tmp_path / "flat").mkdir()
    with Gallery(tmp_path / "g") as g, pytest.raises(LabelError, match="class subfolders"):
        import_folder(g, tmp_path / "flat")


def test_set_labels_is_one_transaction(tmp_path):
    make_photo(1).save(tmp_path / "a.jpg")
    with Gallery(tmp_path / "g") as g:
        (i,) = g.add([tmp_path / "a.jpg"]).ids
        assert g.set_labels({i: ["p"]}) == 1
        assert g.set_labels({i: ["p"]}) == 0  # unchanged rows are not rewritten
        assert g.labelled() == {i: ["p"]} and g.last_id() == i
        assert json.loads(json.dumps(g.get(i).labels)) == ["p"]
