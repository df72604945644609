"""Profiles: round trip through TOML, refusing tampered or malformed files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from matchkit.cli.commands import cli
from matchkit.match.pairfeatures import FEATURES
from matchkit.match.profiles import (Profile, ProfileError, checksum, dump_toml, load_profile,
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
    (lambda t: t.replace("phash_max_distance = 80", 'phash_max_distance = "80"'),
     "must be a whole number"),
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


# ---------------------------------------------------------------- every value range-checked

def _with_settings(path, lines: str):
    """Replace the [settings] table and fix the checksum (anyone can: it is unkeyed)."""
    _rewrite(path, lambda t: t.replace("phash_max_distance = 80", lines), fix_checksum=True)


@pytest.mark.parametrize("line, message", [
    ("work_side = 100000", "work_side must be between 64 and 4096, got 100000"),
    ("n_features = 1000000000", "n_features must be between 1 and 10000, got 1000000000"),
    ("n_features = 1e9", "n_features must be a whole number between 1 and 10000, got 1000000000.0"),
    ("hash_side = 0", "hash_side must be between 32 and 1024, got 0"),
    ("hash_side = -8", "hash_side must be between 32 and 1024, got -8"),
    ("max_pixels = 0", "max_pixels must be between 1 and 1000000000, got 0"),
    ("workers = -1", "workers must be between 0 and 1024, got -1"),
    ("colour_min_similarity = 1.5", "colour_min_similarity must be between 0.0 and 1.0, got 1.5"),
    ("min_cosine = -3.0", "min_cosine must be between -1.0 and 1.0, got -3.0"),
    ("local_features = 1", "local_features must be true or false, got 1"),
])
def test_out_of_range_setting_is_refused_with_one_line(saved, line, message):
    _with_settings(saved, line)
    with pytest.raises(ProfileError) as info:
        load_profile(saved)
    assert str(info.value) == f"profile {saved}: {message}"


def test_cli_refuses_out_of_range_profile_before_reading_images(saved, photo_dir):
    _with_settings(saved, "work_side = 100000")
    r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--profile", str(saved), "-q"])
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"matchkit: error: profile {saved}: work_side must be "
                                "between 64 and 4096, got 100000")


def test_settings_and_profiles_share_one_range_table(calibrator, tmp_path):
    from matchkit.config import RANGES, Settings, SettingsError

    from matchkit.config import CHOICES

    assert set(RANGES) == {f for f in Settings.__dataclass_fields__
                           if f not in ("local_features", "model", *CHOICES)}
    with pytest.raises(SettingsError, match="level must be one of copies, variants, similar"):
        Settings(level="dupes")
    for name, (lo, hi) in RANGES.items():
        Settings().with_(**{name: lo}).with_(**{name: hi})  # the bounds themselves are fine
    with pytest.raises(SettingsError, match="^work_side must be between 64 and 4096, got 4097$"):
        Settings(work_side=4097)
    with pytest.raises(SettingsError, match="hash_side"):
        Settings().with_(hash_side=0)
    # A profile that would be refused on loading is never written.
    with pytest.raises(ProfileError, match="work_side must be between"):
        save_profile(Profile("big", 0.99, calibrator, settings={"work_side": 100000}),
                     tmp_path / "big.toml")
    assert not (tmp_path / "big.toml").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--workers", "5000", "workers must be between 0 and 1024, got 5000"),
    ("--max-pixels", "0", "max_pixels must be between 1 and 1000000000, got 0"),
    ("--threshold", "300", "phash_max_distance must be between 0 and 256, got 300"),
])
def test_cli_options_that_set_settings_use_the_same_check(photo_dir, option, value, message):
    r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), option, value, "-q"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error: ") and message in lines[0]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("alpha = ", "alpha = 7.0 #", 1), "alpha must be between"),
    (lambda t: t.replace("\nC = ", "\nC = -1.0 #", 1), "C must be between"),
    (lambda t: re.sub(r"^threshold = .*$", "threshold = 5.0", t, count=1, flags=re.M),
     "threshold must be between"),
])
def test_calibrator_numbers_are_range_checked(saved, edit, message):
    _rewrite(saved, edit, fix_checksum=True)
    with pytest.raises(ProfileError, match=message):
        load_profile(saved)


# ---------------------------------------------------------------- version recorded in a profile

def _with_version(path, version: str):
    _rewrite(path, lambda t: re.sub(r'^matchkit_version = .*$', f'matchkit_version = "{version}"',
                                    t, count=1, flags=re.M), fix_checksum=True)


@pytest.mark.parametrize("version", ["99.0.0", "0.2.0", "1.0", "0.2.0.dev1"])
def test_profile_from_a_newer_matchkit_is_refused(saved, version):
    import matchkit
    _with_version(saved, version)
    with pytest.raises(ProfileError) as info:
        load_profile(saved)
    assert str(info.value) == (
        f"profile {saved}: written by matchkit {version}, newer than this matchkit "
        f"{matchkit.__version__}; upgrade matchkit or re-run matchkit calibrate")


@pytest.mark.parametrize("version", ["0.1.0", "0.1.9", "0.0.3"])
def test_profile_from_this_or_an_older_release_or_a_newer_patch_loads(saved, version):
    _with_version(saved, version)
    assert load_profile(saved).matchkit_version == version


def test_profile_with_no_version_number_is_refused(saved):
    _with_version(saved, "banana")
    with pytest.raises(ProfileError, match="matchkit_version 'banana' is not a version number"):
        load_profile(saved)


def test_profile_keeps_its_level_and_refuses_another(tmp_path, calibrator, photo_dir):
    from matchkit.config import Settings
    old = load_profile(save_profile(Profile("old", 0.99, calibrator), tmp_path / "old.toml"))
    assert old.level == "copies"        # profiles from before levels
    var = save_profile(Profile("wide", 0.99, calibrator, data={"level": "variants"}),
                       tmp_path / "wide.toml")
    profile = load_profile(var)
    assert profile.level == "variants"
    assert profile.apply(Settings()).level == "variants"    # no --level: the profile's
    with pytest.raises(ProfileError, match="calibrated for --level variants, not copies"):
        profile.apply(Settings(), "copies")
    r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--profile", str(var),
                                 "--level", "copies", "-q"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "matchkit: error: profile 'wide' was calibrated for --level variants, not copies "
        "(fit one with: matchkit calibrate PHOTOS --level copies --out FILE)"]
    r = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--profile", str(var), "--json", "-",
                                 "-q", "--workers", "1"])
    assert r.exit_code == 0, r.output
    import json
    assert json.loads(r.output)["stats"]["level"] == "variants"


def test_profile_with_an_unknown_level_is_refused(tmp_path, calibrator):
    with pytest.raises(ProfileError, match="level must be one of"):
        save_profile(Profile("odd", 0.99, calibrator, data={"level": "cousins"}),
                     tmp_path / "odd.toml")
    assert not (tmp_path / "odd.toml").exists()
