"""``matchkit models``: the embedding models known by name and whether each
is usable here.

Separate because it reads only the model registry, no gallery or image.
"""

from __future__ import annotations

import json
import sys

import click

from matchkit.cli.common import cli


@cli.command()
@click.option("--json", "fmt", flag_value="json",
              help="JSON list (the default when stdout is not a terminal).")
@click.option("--table", "fmt", flag_value="table",
              help="A text table (the default on a terminal).")
def models(fmt):
    """List the embedding models known by name, and whether each is usable here.

    On a terminal: a table, with how to get each model that is missing.
    With --json (or when piped): a JSON list with every field.

    \b
    Example:
      matchkit models
      matchkit models --json | jq -r '.[] | select(.available) | .name'
    """
    from dataclasses import asdict

    from matchkit.embed import list_models
    found = list_models()
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "json"
    if fmt == "json":
        click.echo(json.dumps([asdict(m) for m in found], indent=2, default=str))
    else:
        click.echo(_models_table(found))


def _models_table(found) -> str:
    """One row per model, then how to get the missing ones (each instruction once)."""
    rows = [("name", "usable", "text", "description")]
    rows += [(m.name, "yes" if m.available else "no", "yes" if m.has_text else "no",
              m.description) for m in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows]
    how: dict[str, list[str]] = {}
    for m in found:
        if not m.available and m.how_to_get:
            how.setdefault(m.how_to_get, []).append(m.name)
    for text, names in how.items():
        lines.append(f"to get {', '.join(names)}: {text}")
    if not found:
        lines.append("no models registered")
    return "\n".join(lines)
