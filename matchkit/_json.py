"""Reading back the JSON a gallery stores, fast where it is read in bulk.

An incremental run reads every stored pair's evidence and verification
again (53,000 pairs at 5,000 images): with the standard library that was
1.4 s of the run, with orjson 0.5 s (same texts, this machine). orjson gives
the same Python values for every document ``json.dumps`` writes here, except
``NaN`` and ``Infinity``, which it refuses: those fall back to ``json``.
Writing stays ``json.dumps``: stored evidence is compared as text
(``incremental.evidence_json``), and orjson formats differently.
"""

from __future__ import annotations

import json
from typing import Any

try:  # (a dependency; the fallback keeps a broken install working)
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


def loads(text: str | bytes) -> Any:
    """``json.loads``, by orjson where it can parse the text."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)
