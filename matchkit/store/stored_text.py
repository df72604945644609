"""The JSON texts of incremental matching, stored deflated.

A gallery keeps, per image, its candidate-search record and, per candidate
pair, the pair's evidence and what verifying it changed (``match/incremental.py``).
Stored as plain JSON those were 12.4 of a gallery's 47.4 KB per image on the
5,000-image scale set: about eleven short texts per image (310 and 155 bytes
on average) that repeat the same field names, and one record of 3.9 KB.

Each text is deflated on its own (rows are read and replaced one by one),
with a preset dictionary of the field names and the shapes the texts share
(``_DICTIONARY``): a 310-byte evidence text becomes about 70 bytes, where
plain deflate, with nothing to refer back to in so short a text, leaves 200.
A small window (``_SMALL_WBITS``) for short texts keeps the per-text set-up
cheap: about 10 us to deflate and 3 us to inflate one evidence text here.

The stored value is the bytes ``b"\\x01" + raw deflate``: the first byte
names the dictionary, which therefore never changes once shipped (a new one
takes a new tag). A value that is text (a row written before this module) is
read as it is. A text stored with bytes beside it (``pack_beside``: a
record's neighbour lists, which do not deflate) is ``b"\\x02"``, the packed
text's length (4 bytes), the packed text, then the bytes as they are.
"""

from __future__ import annotations

import zlib

#: The first byte of a stored value: raw deflate with ``_DICTIONARY``.
TAG = 1
#: ... a packed text with bytes beside it (``pack_beside``).
TAG_BESIDE = 2
_BESIDE_BYTE = bytes((TAG_BESIDE,))

#: Field names and shapes of the stored texts (``incremental_state.evidence_json``,
#: ``incremental_state.verification_json``, the candidate-search records), the most
#: frequent last (deflate reaches nearer strings with fewer bits). Never edit:
#: values stored under ``TAG`` are inflated with exactly these bytes.
_DICTIONARY = (
    b'{"crowd": 0, "fh": "", "fr": [], "fx": 1, "hits": [], "lreach": 0, '
    b'"memo": {"light": 0.0, "share": 1.0}, "nb": [4, "AQAAAAEAAAABAAAA", ""], '
    b'"near": [], "ph": [], "reach": null, "run": 1, "vo": []}'
    b'"x+": {"inner": 0.5, "min_correlation": 0.5, "padded": false, "perspective": 0.0, '
    b'"picture": {"agreement": 1.0, "contained": 1.0, "correlation": 0.99, '
    b'"coverage_a": 0.5, "coverage_b": 0.5, "enclosed": 0.0, "inverted": 0.0, '
    b'"lightness_shift": 0.0, "spread": 1.0}, "relation": "edited", "rephoto": null}}'
    b'{"oc": 0.99, "ov": {"agreement": 1.0, "contained": 1.0, "correlation": 0.99, '
    b'"coverage_a": 0.8, "coverage_b": 0.5, "enclosed": 0.0, "inverted": 0.0, '
    b'"lightness_shift": 0.0, "spread": 1.0}, "p": false, "r": "local", '
    b'"ver": {"homography": [], "inliers": 94, "matches": 95, "mirrored": false, '
    b'"points": [[153.8000030517578, 203.89999389648438, 167.60000610351562, 238.0], '
    b'[154.0, 203.0, 169.0, 238.0]], "transform": [[0.89464, 0.15626, 0.54856], '
    b'[-0.15801, 0.89583, 80.83338]]}, "x+": {"min_correlation": 0.5, '
    b'"padded": false, "perspective": 0.0, "relation": "edited", "rephoto": null}}'
    b'{"a": 6, "b": 2220, "c": 0.35, "cos": null, "d": 120, "oc": null, "ov": null, '
    b'"p": true, "r": "", "v": 0.0, "ver": null, "x": {"colour_agree": true, '
    b'"grey": [false, false], "hue_similarity": 0.79, "lightness_shift": 35.4, '
    b'"reflect": true, "second_hop": true, "relation": "edited"}}'
    b'{"p": false, "ver": {"homography": [], "inliers": 0, "matches": 6, "mirrored": false, '
    b'"points": [], "transform": []}, "x+": {"mirror_tried": true, "rephoto": null}}'
    b'{"a": 1, "b": 53, "c": 0.1438802083333333, "cos": null, "d": 120, "oc": null, '
    b'"ov": null, "p": true, "r": "", "v": 1.0, "ver": null, "x": {"colour_agree": true, '
    b'"dihedral": 3, "grey": [false, false], "hue_similarity": 0.6041690796357901, '
    b'"lightness_shift": 25.760579427083343, "reflect": true, "verifiable": true}}'
)
#: Window of texts up to ``_SMALL`` bytes (dictionary included in the reach):
#: a smaller window is cheaper to set up, and a short text needs no more.
_SMALL, _SMALL_WBITS = 2048, 12
#: Deflate level of short texts, and of longer ones (the 3.9 KB records, two
#: thirds base64 neighbour lists that deflate to only half: at level 6, 94 us
#: each and ratio 0.502; at level 1, 60 us and 0.526; an add rewrites the
#: records of the 3,900 images its 50 new ones come near).
_LEVEL, _LONG_LEVEL = 6, 1
_TAG_BYTE = bytes((TAG,))


def pack(text: str) -> bytes:
    """``text`` deflated for storing (``TAG`` first)."""
    data = text.encode()
    if len(data) <= _SMALL:
        z = zlib.compressobj(_LEVEL, zlib.DEFLATED, -_SMALL_WBITS, 4, zdict=_DICTIONARY)
    else:
        z = zlib.compressobj(_LONG_LEVEL, zlib.DEFLATED, -15, 8, zdict=_DICTIONARY)
    return _TAG_BYTE + z.compress(data) + z.flush()


def unpack(value: str | bytes | None) -> str | None:
    """The text ``pack`` stored (a text stored as text, and None, as they are)."""
    if value.__class__ is not bytes:  # (text, None: as they are; read in bulk, so no isinstance)
        return value
    if value[:1] != _TAG_BYTE:
        raise ValueError(f"not a stored text (first byte {value[:1]!r})")
    z = zlib.decompressobj(-15, zdict=_DICTIONARY)
    try:
        data = z.decompress(value[1:])
    except zlib.error as e:
        raise ValueError(f"damaged stored text: {e}") from None
    if not z.eof:
        raise ValueError("truncated stored text")
    return data.decode()  # (UnicodeDecodeError is a ValueError too)


def pack_beside(packed: bytes, extra: bytes | None) -> bytes:
    """A value ``pack`` made (``packed``) with ``extra`` bytes beside it, stored
    as they are (None: the packed text alone)."""
    if extra is None:
        return packed
    return _BESIDE_BYTE + len(packed).to_bytes(4, "little") + packed + extra


def unpack_beside(value: str | bytes) -> tuple[str, bytes | None]:
    """(text, bytes beside it or None) of a value ``pack_beside`` or ``pack``
    made (or a text stored as text)."""
    if value.__class__ is bytes and value[:1] == _BESIDE_BYTE:
        n = int.from_bytes(value[1:5], "little")
        if len(value) < 5 + n:
            raise ValueError("truncated stored text")
        return unpack(value[5:5 + n]), value[5 + n:]
    return unpack(value), None


#: Texts packed on one thread below this many (``pack_many``).
_THREADED_FROM = 1024


def pack_many(texts: list[str], threads: int = 1) -> list[bytes]:
    """``pack`` of each text, split over up to ``threads`` threads when there
    are many: zlib lets go of the GIL while it deflates, so two threads pack
    the 9,176 records a 1% add to 10,000 images rewrites in 0.34 s instead
    of 0.59 s."""
    n = min(threads, len(texts) // _THREADED_FROM)
    if n <= 1:
        return [pack(t) for t in texts]
    from concurrent.futures import ThreadPoolExecutor

    step = -(-len(texts) // n)
    with ThreadPoolExecutor(n) as pool:
        parts = pool.map(lambda a: [pack(t) for t in texts[a:a + step]],
                         range(0, len(texts), step))
        return [p for part in parts for p in part]
