"""Profiles: round trip through TOML, refusing tampered or malformed files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from matchkit.cli import cli
from matchkit.pairfeatures import FEATURES
from matchkit.profiles import (Profile, ProfileError, checksum, dump_toml, load_profile,
                               save_profile)

from test_calibrate import _fitted

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def calibrator():
    return _fitted()


@pytest.fixture
def saved(tmp_path, calibrator):
    p = Profile("holiday", 0.99, calibrator, settings={"phash_max_distance": 80},
                data={"source": "tests", "photos": 12})
    return save_profile(p, tmp_path / "holiday.toml")


def test_round_trip(saved, calibrator):
    back = load_profile(saved)
    assert back.name == "holiday" and back.target_precision == 0.99
    assert back.settings == {"phash_max_distance": 80} and back.data["photos"] == 12
    X = np.random.default_rng(3).random((30, len(FEATURES)))
    assert np.array_equal(back.calibrator.score(X), calibrator.score(X))
    assert np.array_equal(back.calibrator.predict(X), calibrator.predict(X))
    assert back.calibrator.threshold_ == calibrator.threshold_
    from matchkit.config import Settings
    assert back.apply(Settings()).phash_max_distance == 80


def _rewrite(path, edit, fix_checksum: bool):
    """Edit the file's text; optionally recompute the checksum (a careful forger)."""
    text = edit(path.read_text())
    if fix_checksum:
        data = tomllib.loads(text)
        text = re.sub(r'checksum = "[^"]*"', f'checksum = "{checksum(data)}"', text)
    path.write_text(text)


def test_edited_number_is_refused(saved):
    _rewrite(saved, lambda t: re.sub(r"^threshold = .*$", "threshold = 0.5", t, flags=re.M),
             fix_checksum=False)
    with pytest.raises(ProfileError, match="checksum mismatch"):
        load_profile(saved)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("intercept = ", "intercept = nan #", 1), "not finite"),
    (lambda t: t.replace('"phash_distance"', '"phash_distanse"', 1), "features do not match"),
    (lambda t: t.replace("phash_max_distance = 80", 'phash_max_distance = "80"'), "wrong value"),
    (lambda t: t.replace("phash_max_distance = 80", "run_shell = 1"), "unknown setting"),
    (lambda t: re.sub(r"^target_precision = .*$", "target_precision = 1.5", t, count=1,
                      flags=re.M), "target_precision"),
    (lambda t: re.sub(r"^name = .*$", "", t, count=1, flags=re.M), "missing name"),
])
def test_malformed_content_is_refused_even_with_a_valid_checksum(saved, edit, message):
    _rewrite(saved, edit, fix_checksum=True)
    with pytest.raises(ProfileError, match=message):
        load_profile(saved)


def test_bad_toml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.toml")
    with pytest.raises(ProfileError, match="unknown profile 'nope' \\(available: "):
        load_profile("nope")


def test_dump_toml_round_trips_values():
    data = {"a": 1, "b": 1e-05, "c": -2.5e300, "d": "x\"y\n\u00e9", "e": [0.1, 2, 3.0],
            "f": True, "t": {"u": [1, 2], "v": {"w": "z"}}}
    assert tomllib.loads(dump_toml(data)) == data


def test_cli_refuses_bad_profile_in_one_line(tmp_path, photo_dir, saved):
    _rewrite(saved, lambda t: t.replace("intercept = ", "intercept = 1", 1), fix_checksum=False)
    for arg in (str(saved), "no-such-profile"):
        r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--profile", arg, "-q"])
        assert r.exit_code == 2
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("matchkit: error: ")


def test_profiles_are_found_by_name_in_matchkit_configs(tmp_path, monkeypatch, calibrator):
    folder = tmp_path / "profiles"
    with pytest.raises(ProfileError, match="differs from the calibrator"):
        save_profile(Profile("shop", 0.95, calibrator), folder / "shop.toml")
    assert not (folder / "shop.toml").exists()
    save_profile(Profile("shop", 0.99, calibrator), folder / "shop.toml")
    monkeypatch.setenv("MATCHKIT_CONFIGS", str(folder))
    assert load_profile("shop").name == "shop"
    with pytest.raises(ProfileError, match="available: .*shop"):
        load_profile("shops")


def test_calibrate_cli_refuses_unknown_suite(tmp_path, photo_dir):
    r = CliRunner().invoke(cli, ["calibrate", str(photo_dir), "--out", str(tmp_path / "x.toml"),
                                 "--edits", "nonsense"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("matchkit: error: unknown edit suite 'nonsense'")
    assert not (tmp_path / "x.toml").exists()
