"""``matchkit labels`` (import, show, calibrate) and ``matchkit label``:
labelled galleries and labelling images by their nearest labelled examples.

Separate because these commands share their own helpers (the ``--gallery``
argument of ``labels``, the model options, fitting a ``Labeler``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from matchkit.store.gallery import Gallery, GalleryError
from matchkit.cli.common import (
    _LEVEL_OPTION, _check_html_path, _emit_json, _fail, _load_profile, _one_line,
    _open_gallery, cli)


def _gallery_argument(f):
    """``--gallery G`` like every other command, and the older positional
    ``GALLERY`` (deprecated, still accepted) of the ``labels`` commands."""
    f = click.option("--gallery", "gallery_opt", type=click.Path(file_okay=False),
                     help="The labelled gallery folder.")(f)
    return click.argument("gallery", required=False, type=click.Path(file_okay=False),
                          metavar="[GALLERY]")(f)


def _pick_gallery(positional: str | None, option: str | None) -> str:
    """The gallery named by ``--gallery`` or (deprecated) positionally; usage error otherwise."""
    if positional and option and positional != option:
        _fail(f"two galleries given ({positional} and --gallery {option}); give only --gallery")
    if not (positional or option):
        _fail("give the gallery with --gallery G")
    return option or positional


@cli.group()
def labels() -> None:
    """Labelled galleries: import labels, calibrate the unknown threshold, list classes.

    The gallery is named with --gallery G, as in every other command (the
    older form with the gallery as first argument still works, but is
    deprecated).

    \b
    Example:
      matchkit labels import --gallery cat-gallery --folder catalogue/  # catalogue/<class>/*.jpg
      matchkit labels import --gallery cat-gallery --csv labels.csv     # rows: path,label
      matchkit labels show --gallery cat-gallery
    """


@labels.command("import")
@_gallery_argument
@click.option("--folder", type=click.Path(file_okay=False),
              help="ImageFolder tree: one subfolder per class.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False),
              help="CSV of path,label rows (header optional; paths relative to the file).")
@click.option("--jsonl", "jsonl_file", type=click.Path(dir_okay=False),
              help='JSON Lines: {"path": ..., "label": ...} per line.')
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the import report here instead of stdout.")
def labels_import(gallery, gallery_opt, folder, csv_file, jsonl_file, json_path):
    """Add labelled images to the --gallery (created if missing) and set their labels.

    Re-importing is incremental: unchanged files are not decoded again and
    the labels of every listed image are replaced. Unreadable images and bad
    rows are listed under "skipped" with a reason. GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels import --gallery parts-gallery --folder bench-photos/
      matchkit labels import --gallery art-gallery --jsonl artworks.jsonl --json import.json
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.store.gallery import Gallery
    from matchkit.jobs.labels import LabelError, import_folder, import_table

    sources = [x for x in (folder, csv_file, jsonl_file) if x]
    if len(sources) != 1:
        _fail("give exactly one of --folder, --csv or --jsonl")
    try:
        with Gallery(gallery) as g:
            if folder:
                report = import_folder(g, folder)
            else:
                report = import_table(g, csv_file or jsonl_file, "csv" if csv_file else "jsonl")
    except (GalleryError, LabelError) as e:
        _fail(str(e))
    _emit_json(report.to_dict(), json_path)


@labels.command("show")
@_gallery_argument
def labels_show(gallery, gallery_opt):
    """Print the classes of the --gallery with their number of images, as JSON.

    GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels show --gallery parts-gallery | jq '.classes | length'
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.jobs.labels import class_counts

    g = _open_gallery(gallery)
    with g:
        counts = class_counts(g)
        _emit_json({"images": len(g), "labelled": len(g.labelled()), "classes": counts}, None)


def _calibration_bars(intro: str):
    """Progress of a synthetic calibration on stderr: ``intro`` once it starts,
    then a line and (on a terminal) a bar per stage (``Labeler(progress=)``)."""
    from matchkit.util.progress import StageBars

    started: list[bool] = []

    def say(line: str) -> None:
        if not started:
            started.append(True)
            click.echo(f"matchkit: {intro}", err=True)
        click.echo(f"matchkit: {line}", err=True)
    return StageBars(say)


def _labeler(gallery, k, target, calibration, quiet, samples=200, model=None,
             no_model=False, text_labels=False, profile=None, level=None, bars=None):
    """A fitted Labeler over an existing gallery, or a one-line usage error.

    The embedding model is ``model``, else the one model the gallery holds
    vectors for (``matchkit index --model``), else none.
    """
    from matchkit.jobs.classify import Labeler
    from matchkit.jobs.labels import LabelError

    if not (Path(gallery) / "gallery.sqlite").exists():
        _fail(f"no gallery at {gallery} (create one with `matchkit labels import --gallery "
              f"{shlex.quote(str(gallery))} --folder DIR`)")
    if model and no_model:
        _fail("--model and --no-model contradict each other")
    if not model and not no_model:
        try:
            with Gallery(gallery, create=False) as g:
                held = list(g.models())
        except GalleryError as e:
            _fail(_one_line(e))
        if len(held) > 1:
            _fail(f"gallery {gallery} holds vectors of several models ({', '.join(held)}); "
                  "choose one with --model or none with --no-model")
        model = held[0] if held else None
    embedder = None
    if model:
        from matchkit.embed import EmbedderError, load_embedder
        try:
            embedder = load_embedder(model)
        except EmbedderError as e:
            _fail(_one_line(e) + " (or label without embeddings: --no-model)")
    if text_labels and embedder is None:
        _fail("--text-labels needs a CLIP model (--model)")
    bars = bars if bars is not None or quiet else _calibration_bars(
        "first answer from this gallery: calibrating the unknown threshold (once; it is "
        "stored with the gallery)")
    lab = Labeler(k=k, target_accuracy=target, calibration=calibration,
                  calibration_samples=samples, embedder=embedder,
                  texts="labels" if text_labels else None, profile=profile, level=level,
                  progress=bars)
    try:
        lab.fit(gallery)
    except (GalleryError, LabelError, ValueError) as e:
        lab.close()
        _fail(_one_line(e))
    finally:
        if bars is not None:
            bars.close()
    cal = lab.calibration_
    if not quiet and cal is not None and lab.calibrated_now_:
        click.echo(f"matchkit: calibrated the unknown threshold on {cal['queries']} synthetic "
                   f"queries (stored with the gallery for next time)", err=True)
    return lab


_MODEL_OPTIONS = [
    click.option("--model", default=None,
                 help="Embedding model for look-alike classes (name, folder or .onnx); "
                      "default: the model the gallery was indexed with, if any."),
    click.option("--no-model", is_flag=True, help="Use no embeddings, only instance evidence."),
    click.option("--text-labels", is_flag=True,
                 help="Also use class names as text examples (CLIP models)."),
]


def _model_options(f):
    for option in reversed(_MODEL_OPTIONS):
        f = option(f)
    return f


@labels.command("calibrate")
@_gallery_argument
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Neighbours that vote.")
@click.option("--target", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.99,
              show_default=True, help="Accuracy wanted on accepted (non-unknown) answers.")
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="Gallery images to make synthetic calibration queries from.")
@click.option("--queries", "queries", type=click.Path(dir_okay=False),
              help='Calibrate on your own queries instead: CSV/JSONL of path,label rows '
                   'with label "unknown" for images of no gallery class.')
@_model_options
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def labels_calibrate(gallery, gallery_opt, k, target, samples, queries, model, no_model,
                     text_labels, quiet):
    """Fit and store the threshold below which answers are "unknown".

    GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels calibrate --gallery parts-gallery --target 0.99
      matchkit labels calibrate --gallery parts-gallery --queries held-out.csv
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.jobs.labels import LabelError, table_labels

    bars = None if quiet or queries else _calibration_bars(
        "calibrating the unknown threshold on edited copies of gallery images")
    lab = _labeler(gallery, k, target, "none", True, samples, model, no_model, text_labels,
                   bars=bars)
    with lab:
        try:
            if queries:
                rows, _ = table_labels(queries)
                lab.calibrate([p for p, _ in rows], [c for _, c in rows])
            else:
                lab.calibrate_synthetic(samples)
        except (LabelError, ValueError) as e:
            _fail(str(e))
        finally:
            if bars is not None:
                bars.close()
        where = lab.save_calibration()
        cal = {k: v for k, v in lab.calibration_.items() if k not in ("x", "y")}
        _emit_json({"stored": str(where), **cal}, None)


@cli.command()
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="A labelled gallery (see `matchkit labels import`).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the answers here instead of stdout.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Neighbours that vote.")
@click.option("--target", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.99,
              show_default=True, help="Accuracy wanted on accepted (non-unknown) answers.")
@click.option("--calibration", type=click.Choice(["auto", "stored", "none"]), default="auto",
              show_default=True,
              help="auto: use the stored calibration or fit one; stored: only use a stored one; "
                   "none: uncalibrated (accept verified matches without a rival class).")
@_model_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write a review page (HTML plus a PATH_files/ folder of thumbnails).")
@click.option("--profile", "profile_name", default=None, metavar="NAME|PATH",
              help="Decide whether a query copies a labelled example with a calibrated "
                   "profile (a name in configs/ or a .toml file) instead of the hand rules.")
@_LEVEL_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
def label(queries, gallery, json_path, k, target, calibration, model, no_model, text_labels,
          html_path, profile_name, level, quiet):
    """Label each image in QUERIES (files or folders) by its nearest labelled
    gallery examples, or "unknown" when nothing matches well enough.

    Each answer has the label, a calibrated confidence, the best class even
    when rejected, and the neighbours that support it with their evidence.

    \b
    Example:
      matchkit label --gallery parts-gallery photo1.jpg photo2.jpg
      matchkit label --gallery art-gallery new-scans/ -k 3 --json answers.json
      matchkit label --gallery parts-gallery query.jpg | jq -r '.answers[].label'
      matchkit label --gallery art-gallery scan.jpg --model clip-vit-b32 --text-labels
      matchkit label --gallery parts-gallery new-photos/ --html answers.html
      matchkit label --gallery parts-gallery new-photos/ --profile default
    """
    import time

    from matchkit.io.load import iter_image_files

    _check_html_path(html_path)
    start = time.perf_counter()
    try:
        files = [str(p) for p in iter_image_files(queries)]
    except FileNotFoundError as e:
        _fail(str(e))
    profile = _load_profile(profile_name, level)
    lab = _labeler(gallery, k, target, calibration, quiet, model=model, no_model=no_model,
                   text_labels=text_labels, profile=profile, level=level)
    with lab:
        answers = lab.answers(files)
        out = lab.report(answers, seconds=time.perf_counter() - start)  # = the API's JSON
    if html_path:
        from matchkit.report.pages import write_label_html
        try:
            out["html"] = write_label_html(out, html_path, progress=not quiet).to_dict()
        except OSError as e:
            _fail(f"cannot write HTML report {html_path}: {e.strerror or e}")
    _emit_json(out, json_path)
    if not quiet:
        st = out["stats"]
        click.echo(f"{st['queries']} queries: {st['labelled']} labelled, {st['unknown']} unknown"
                   f" ({st['unreadable']} unreadable)", err=True)
