"""``matchkit serve`` and ``matchkit serve keys`` (add, list, remove): the
HTTP service and its API keys.

Separate because it is the only command that needs the serve extra
(imported only when it runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from matchkit.store.gallery import GalleryError
from matchkit.cli.common import _fail, _one_line, _Setting, cli


@cli.group(invoke_without_command=True)
@click.option("--gallery", "galleries", multiple=True, type=click.Path(file_okay=False),
              help="Gallery folder to serve (repeatable); its name in URLs is the folder's.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--no-auth", is_flag=True,
              help="Allow requests without an API key (only on a loopback --host).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=25.0,
              show_default=True, help="Largest upload (request body), in MiB.")
@click.option("--max-pixels", type=_Setting("max_pixels"), default=50_000_000,
              show_default=True, help="Largest uploaded image (width x height).")
@click.option("--rate", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Requests per second per key (bursts of twice that); 0: no limit.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request may take before it is answered 504.")
@click.option("--readers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Reader threads (each keeps the galleries' indexes in memory).")
@click.option("--cors-origin", "cors", multiple=True,
              help="Allow browser pages from this origin (repeatable); CORS is off without.")
@click.pass_context
def serve(ctx, galleries, host, port, no_auth, max_upload_mb, max_pixels, rate, timeout,
          readers, cors):
    """Serve galleries over HTTP: search, check, label, add and manage images.

    Needs the serve extra (pip install 'matchkit[serve]'). Every request
    needs an API key made with 'matchkit serve keys add' (sent as
    'Authorization: Bearer KEY'), unless --no-auth on a loopback host.
    The API's schema and interactive docs are at /api/docs.

    \b
    Example:
      matchkit serve keys add --gallery ~/.matchkit/photos --scope read
      matchkit serve --gallery ~/.matchkit/photos --port 8000
      matchkit serve --gallery g1 --gallery g2 --host 127.0.0.1 --no-auth
    """
    if ctx.invoked_subcommand is not None:
        return
    if not galleries:
        _fail("give at least one --gallery to serve")
    try:
        import uvicorn  # noqa: F401  (the serve extra is installed)

        from matchkit.serve import ServeSettings, create_app
    except ImportError as e:
        _fail(f"matchkit serve needs the serve extra: pip install 'matchkit[serve]' ({e})")
    settings = ServeSettings(no_auth=no_auth, max_upload_bytes=int(max_upload_mb * 2**20),
                             max_pixels=max_pixels, rate=rate, burst=max(1, int(2 * rate)),
                             timeout=timeout, readers=readers, cors_origins=tuple(cors))
    try:
        app = create_app(list(galleries), settings, host=host)
    except (GalleryError, ValueError) as e:
        _fail(_one_line(e))
    click.echo(f"matchkit: serving {', '.join(app.state.matchkit.galleries)} on "
               f"http://{host}:{port}/api/ (docs: /api/docs)", err=True)
    from matchkit.serve.server import serve_app

    serve_app(app, host, port)


@serve.group("keys")
def serve_keys() -> None:
    """API keys of a gallery: add (the key is shown once), list, remove.

    \b
    Example:
      matchkit serve keys add --gallery g --scope read --name uploader
      matchkit serve keys list --gallery g
      matchkit serve keys remove --gallery g KEY_ID
    """


def _key_store(gallery: str):
    from matchkit.store.gallery import DB_NAME
    from matchkit.serve.keys import KeyStore

    if not (Path(gallery) / DB_NAME).is_file():
        _fail(f"no gallery at {gallery} (missing {DB_NAME})")
    return KeyStore(gallery)


@serve_keys.command("add")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read",
              show_default=True, help="read: look and query; write: also change images; "
                                      "admin: everything.")
@click.option("--name", default="", help="A note saying who or what the key is for.")
def serve_keys_add(gallery, scope, name):
    """Make an API key for GALLERY and print it (only its hash is stored)."""
    token, key = _key_store(gallery).add(scope, name)
    click.echo(json.dumps({"key": token, **key.public()}, indent=1))


@serve_keys.command("list")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
def serve_keys_list(gallery):
    """List the keys of GALLERY (ids, scopes, names; never the keys)."""
    from matchkit.serve.keys import KeyStoreError
    try:
        keys = _key_store(gallery).keys()
    except KeyStoreError as e:
        _fail(str(e))
    click.echo(json.dumps([k.public() for k in keys], indent=1))


@serve_keys.command("remove")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
@click.argument("key_id")
def serve_keys_remove(gallery, key_id):
    """Revoke the key KEY_ID of GALLERY (takes effect at once on a running server)."""
    if not _key_store(gallery).remove(key_id):
        _fail(f"no key {key_id!r} in {gallery}")
    click.echo(f"removed key {key_id}")
