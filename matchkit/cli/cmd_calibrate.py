"""``matchkit calibrate``: fit a calibrated pair decision (a profile) on
edits of the user's own photos.

Separate because it runs a whole calibration and prints its report, and
shares nothing else with the other commands but the group.
"""

from __future__ import annotations

from pathlib import Path

import click

from matchkit.config import Settings
from matchkit.relation import DEFAULT_LEVEL, LEVELS
from matchkit.cli.common import _fail, _one_line, _Setting, cli


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Profile file to write (TOML), e.g. configs/products.toml.")
@click.option("--target-precision", type=click.FloatRange(0.5, 1.0, max_open=True),
              default=0.99, show_default=True,
              help="Precision the decision threshold is certified for on held-out pairs "
                   "(one-sided 95% Clopper-Pearson lower bound).")
@click.option("--edits", "suite_name", default="copy-detection", show_default=True,
              help="Edit suite that makes the positives: a name in configs/edits/ "
                   "(exact-ish, transformed, copy-detection) or a .toml file.")
@click.option("--name", default=None, help="Profile name (default: the --out file's stem).")
@click.option("--source", default=None,
              help="What the photos are, recorded in the profile (default: the PATHS).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Precision-recall plot (PNG; default: beside --out, same stem).")
@click.option("--workers", type=_Setting("workers"), default=None,
              help="Worker processes for decoding (default: one per core).")
@click.option("--model", type=click.Choice(["boosting", "logistic"]), default="boosting",
              show_default=True,
              help="The decision model: gradient-boosted trees, or a logistic regression "
                   "(smoother, but it cannot tell recolours from grey copies).")
@click.option("--level", type=click.Choice(list(LEVELS)), default=DEFAULT_LEVEL,
              show_default=True,
              help="Which relations are duplicates: the suite's variant edits (recolours, "
                   "light/dark) are negatives at copies and positives at variants/similar. "
                   "Use the profile at this level.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def calibrate(paths, out_path, target_precision, suite_name, name, source, plot_path, workers,
              model, level, quiet):
    """Fit a calibrated pair decision on edits of your own photos in PATHS.

    Photos are split in two halves by a hash of their name. Positives are
    edits of the same photo (the --edits suite); negatives are the other
    photos' images the candidate search proposes (the hardest non-duplicates).
    The model is fitted on one half; the threshold is chosen on the other, as
    the lowest whose lower precision bound reaches --target-precision.

    \b
    Example:
      matchkit calibrate ~/product-shots --out configs/products.toml --edits copy-detection
      matchkit dedupe ~/product-shots --profile configs/products.toml --json dupes.json
      matchkit calibrate ~/wallpapers --level variants --out configs/variants.toml
    """
    from matchkit.match.edits import EditError, load_suite
    from matchkit.match.pairsets import calibrate_folder
    from matchkit.match.profiles import ProfileError, save_profile

    try:
        suite = load_suite(suite_name)
    except EditError as e:
        _fail(_one_line(e))
    name = name or Path(out_path).stem
    plot_path = plot_path or str(Path(out_path).with_suffix(".png"))
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    try:
        run = calibrate_folder(list(paths), suite, name=name, target_precision=target_precision,
                               model=model,
                               settings=Settings().with_(workers=workers, level=level),
                               plot=plot_path,
                               source=source or " ".join(paths), progress=say)
        save_profile(run.profile, out_path)
    except (ValueError, ProfileError, EditError) as e:
        _fail(_one_line(e))
    cal = run.profile.calibrator
    st = cal.stats_
    click.echo(
        f"calibrated {name!r} on {run.profile.data['photos']} photos "
        f"({run.profile.data['images']} images, {suite.name} edits, --level {level}) "
        f"in {run.seconds:.0f} s\n"
        f"fit half: {st['fit_pairs']} pairs ({st['fit_positives']} duplicates); "
        f"held-out half: {st['held_out_pairs']} pairs ({st['held_out_positives']} duplicates)\n"
        f"threshold {cal.threshold_:.4f} (P(duplicate) {cal.probability_threshold_:.3f}; "
        f"fit-half optimum would be {cal.train_threshold_:.4f})\n"
        f"held-out: precision {st['precision']:.4f} (95% lower bound "
        f"{st['precision_lower_bound']:.4f}, target {target_precision}"
        f"{'' if st['certified'] else ', NOT certified: too few pairs'}), "
        f"recall {st['recall']:.4f}\n"
        f"profile: {out_path}\nplot: {plot_path}")
