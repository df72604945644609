"""``matchkit index`` and ``matchkit verify``: build a gallery (features,
metadata, embeddings) and check its index files against its database.

Separate because these commands write and repair galleries, where the
others only read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from matchkit.config import Settings
from matchkit.distributed.ray_jobs import RayUnavailable
from matchkit.store.gallery import GalleryError
from matchkit.store.shards import is_sharded, open_gallery
from matchkit.cli.common import (
    _RAY_OPTION, _READ_VOTE_INDEX_OPTION, _SHARDS_OPTION, _VOTE_INDEX_OPTION, _emit_json,
    _fail, _one_line, _open_gallery, _reader_settings, _Setting, _signal_option,
    _writer_vote_index, cli)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="Gallery folder (created if missing).")
@click.option("--model", default=None,
              help="Compute embeddings with this model: a registered name (e.g. "
                   "clip-vit-b32), a CLIP checkpoint folder, a .onnx file or a .toml config. "
                   "Without it, the models the gallery already holds are used. Only images "
                   "without a vector are embedded.")
@click.option("--no-embed", is_flag=True,
              help="Compute no embeddings, not even for the gallery's models.")
@click.option("--meta", "meta_path", type=click.Path(dir_okay=False),
              help="Metadata to attach: .csv/.tsv with a 'path' column, or .jsonl with a "
                   "\"path\" key, plus any fields (see README, 'Search').")
@click.option("--no-exif-dates", is_flag=True,
              help="Do not record taken/year/month from EXIF for new or changed images.")
@click.option("--workers", type=_Setting("workers"), default=None,
              help="Worker processes/threads for decoding (default: one per core).")
@click.option("--max-pixels", type=_Setting("max_pixels"), default=None,
              help="Skip files with more pixels than this (decompression-bomb guard).")
@click.option("--hash-only", is_flag=True,
              help="Skip local features (faster; enough for search, less for dedupe).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass of the model.")
@click.option("--device", default="cpu", show_default=True,
              help="Where the model runs: cpu, cuda, cuda:N or auto.")
@_SHARDS_OPTION
@_RAY_OPTION
@_VOTE_INDEX_OPTION
@_signal_option("read with each image and kept in the gallery; 'ocr' (Tesseract) makes "
                "`matchkit search --contains TEXT` possible. Example: matchkit index docs/ "
                "--gallery g --signal ocr --no-embed")
@click.option("--forget-missing", is_flag=True,
              help="Also forget the gallery's images under the folders in PATHS whose files "
                   "are gone (deleted or moved away); files are never touched. Example: "
                   "matchkit index photos/ --gallery g --forget-missing")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def index(paths, gallery, model, no_embed, meta_path, no_exif_dates, workers, max_pixels,
          hash_only, batch_size, device, shards, ray, vote_index, signals, forget_missing,
          quiet):
    """Add images in PATHS to a gallery; attach metadata and embed them.

    Prints a JSON summary on stdout: images added/updated/unchanged, files
    skipped with reasons, metadata rows that matched no image, and how many
    images each model embedded. Running it again only processes what is new
    or changed. New and changed photos get taken/year/month from their EXIF
    capture date unless they already have one of these keys.

    \b
    Example:
      matchkit index photos/ --gallery ~/.matchkit/photos --model clip-vit-b32
      matchkit index photos/ --gallery g --model ./clip-dir --meta photos.csv
      matchkit index new-photos/ --gallery g -q     # embeds with g's model(s)
      matchkit index photos/ --gallery g --meta more.jsonl --no-embed | jq .metadata
      matchkit index archive/ --gallery big --shards 8 --ray auto -q
      matchkit index scans/ --gallery g --signal ocr --no-embed   # then: search --contains
      matchkit index photos/ --gallery g --forget-missing   # files deleted since: forgotten
    """
    from matchkit.store.gallery import DB_NAME
    from matchkit.io.load import iter_image_files
    from matchkit.jobs.metadata import MetadataError, add_exif_dates, import_metadata, read_metadata
    from matchkit.store.missing import forget_missing as forget_missing_images

    if model and no_embed:
        _fail("--model and --no-embed contradict each other")
    if ray is not None and signals:
        _fail("--signal is not supported with --ray yet")
    sharded = (shards or 1) > 1 or ray is not None or is_sharded(gallery)
    if sharded and meta_path:
        _fail("--meta is not supported on sharded galleries (--shards, --ray) yet")
    try:
        files = list(iter_image_files(paths))
    except FileNotFoundError as e:
        _fail(str(e))
    if meta_path:
        try:
            read_metadata(meta_path)  # refuse an unusable file before any work
        except MetadataError as e:
            _fail(_one_line(e))
    known: dict[str, int] = {}
    if (Path(gallery) / DB_NAME).exists() and not sharded or is_sharded(gallery):
        try:
            with open_gallery(gallery, create=False) as g:
                known = g.models()
        except GalleryError as e:
            _fail(_one_line(e))
    names = [] if no_embed else [model] if model else list(known)
    embedders = []
    if names:  # load every model first: a missing one fails before any work
        from matchkit.embed import EmbedderError, load_embedder
        for name in names:
            try:
                embedders.append(load_embedder(name, device=device, batch_size=batch_size))
            except EmbedderError as e:
                _fail(_one_line(e))
            emb = embedders[-1]
            if emb.name in known and known[emb.name] != emb.dim:
                _fail(f"model {emb.name!r} gives {emb.dim}-d vectors but gallery {gallery} "
                      f"holds {known[emb.name]}-d vectors from a model of that name; use a "
                      "new gallery")
    settings = Settings().with_(max_pixels=max_pixels, workers=workers,
                                local_features=False if hash_only else None,
                                signals=signals or None,
                                **_writer_vote_index(vote_index, gallery))
    out: dict = {"gallery": str(gallery)}
    try:
        if ray is not None:
            from matchkit.distributed.ray_jobs import RayRun
            with RayRun(ray, gallery, settings, shards=shards) as run:
                added = _add_with_bar(run, files, quiet)
        with open_gallery(gallery, settings, shards=shards) as g:
            if ray is None:
                added = _add_with_bar(g, files, quiet)
            if forget_missing:
                out["forgotten"] = forget_missing_images(g, paths)
            g.save()
            out.update(files=len(files), images=len(g), added=added.added,
                       updated=added.updated, unchanged=added.unchanged,
                       skipped=[vars(s) for s in added.skipped])
            if not no_exif_dates:
                out["exif_dated"] = add_exif_dates(g, added.changed)
            if meta_path:
                roots = [p for p in paths if Path(p).is_dir()]
                out["metadata"] = import_metadata(g, meta_path, roots=roots).to_dict()
            out["embeddings"] = [g.embed(emb, progress=not quiet, workers=workers or None
                                         ).to_dict() for emb in embedders]
    except (GalleryError, MetadataError, RayUnavailable) as e:
        _fail(_one_line(e))
    except Exception as e:
        from matchkit.embed import EmbedderError
        if not isinstance(e, EmbedderError):
            raise
        _fail(_one_line(e))
    click.echo(json.dumps(out, indent=2))


def _add_with_bar(gallery, files: list, quiet: bool):
    """``gallery.add(files)`` (a gallery, sharded one or Ray run) with a progress bar."""
    bar = _progress_bar(len(files), not quiet)
    try:
        return gallery.add(files, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


@cli.command()
@click.argument("gallery", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True,
              help="Rebuild stale or damaged index files from the database and save them.")
@_READ_VOTE_INDEX_OPTION
def verify(gallery, repair, vote_index):
    """Check a gallery's index and vector files against its database.

    Prints JSON: "differences" lists index files that claim to be current
    but whose keys differ from the database rows (exit code 1; should never
    happen), "stale" lists files that are missing, older or damaged and are
    rebuilt from the database whenever they are used (--repair rebuilds and
    saves them once). Safe to run while another matchkit writes. Without
    --vote-index the descriptor index checked is the one the gallery was
    last written with.

    \b
    Example:
      matchkit verify ~/.matchkit/photos | jq .differences
      matchkit verify ~/.matchkit/photos --repair
      matchkit verify ~/.matchkit/photos --vote-index ivf   # its orb.ivf file
    """
    with _open_gallery(gallery, _reader_settings(vote_index)) as g:
        try:
            report = g.verify(repair=repair)
        except GalleryError as e:
            _fail(_one_line(e))
    _emit_json(report.to_dict(), None)
    return 0 if report.ok else 1


def _progress_bar(total: int, enabled: bool):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled)
