"""The file format of a saved IVF index (``index/ivf.py``): a magic line, a JSON
header (after its length in 4 bytes), then the postings' arrays, each
aligned to 8 bytes so that a file can be memory-mapped and its arrays read
in place.

Separate from the index: only ``IVFIndex.to_bytes`` and ``IVFIndex.load``
use it, and it knows nothing of words or searches.
"""

from __future__ import annotations

import json

import numpy as np

_MAGIC = b"MKIVF1\n"


def _pack(header: dict, arrays: list[np.ndarray]) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    out = bytearray(_MAGIC)
    out += len(head).to_bytes(4, "little") + head
    for a in arrays:
        out += b"\0" * (-len(out) % 8)
        out += np.ascontiguousarray(a).tobytes()
    return bytes(out)


def _unpack(buf: memoryview) -> tuple[dict, list[np.ndarray]]:
    try:
        if bytes(buf[: len(_MAGIC)]) != _MAGIC:
            raise ValueError("not an IVF index file")
        pos = len(_MAGIC)
        size = int.from_bytes(bytes(buf[pos:pos + 4]), "little")
        header = json.loads(bytes(buf[pos + 4:pos + 4 + size]))
        pos += 4 + size
        arrays = []
        for dtype, count in header["arrays"]:
            pos += -pos % 8
            dt = np.dtype(dtype)
            if dt.str not in ("<i8", "<u4", "<u8") or int(count) < 0:
                raise ValueError("bad array type")
            end = pos + dt.itemsize * int(count)
            if end > len(buf):
                raise ValueError("truncated index file")
            arrays.append(np.frombuffer(buf[pos:end], dtype=dt))
            pos = end
        if len(arrays) != 3:
            raise ValueError("bad array count")
        return header, arrays
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not an IVF index file ({e})") from None
