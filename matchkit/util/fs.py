"""Crash-safe file replacement (write beside, fsync, rename, fsync the folder),
and fingerprints that let a cache file be checked before it is trusted."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *,
                 durable: bool = True) -> None:
    """Produce ``path`` by calling ``write(tmp_path)`` and renaming it into place.

    A process killed at any moment leaves either the old file or the new
    complete one, never a torn file: readers see ``path`` change in a single
    ``os.replace``. The temporary file is removed if ``write`` fails.
    ``durable=False`` skips the fsyncs, for files that can be made again
    (thumbnails): still never torn, but possibly absent after a power cut.
    """
    path = Path(path)
    # Thread id, then pid: the pid stays last for remove_stale_temps.
    tmp = path.with_name(f".{path.name}.tmp-{threading.get_ident()}-{os.getpid()}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete temp files that ``atomic_write`` left behind in dead processes."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: How cache files are fingerprinted in the gallery database.
DIGEST = "sha256"


def file_stamp(path: str | os.PathLike) -> dict:
    """Size and SHA-256 of a file's bytes, as recorded beside a cache file's stamp."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, DIGEST: h.hexdigest()}


@contextmanager
def verified_bytes(path: str | os.PathLike, stamp: dict | None) -> Iterator[memoryview | None]:
    """The bytes of ``path`` if they match ``stamp`` (see :func:`file_stamp`), else None.

    The file is memory-mapped once and the very bytes that were hashed are
    handed on, so a file replaced or damaged between the check and the use
    cannot slip through (a rename leaves the mapped old file intact).
    """
    if not stamp or not isinstance(stamp.get("size"), int) or not stamp.get(DIGEST):
        yield None
        return
    try:
        f = open(path, "rb")
    except OSError:
        yield None
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != stamp["size"] or size == 0:
            yield None
            return
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            yield None
            return
        try:
            view = memoryview(mm)
            try:
                ok = hashlib.sha256(view).hexdigest() == stamp[DIGEST]
                yield view if ok else None
            finally:
                view.release()
        finally:
            mm.close()


def read_json_file(path: str | os.PathLike, what: str, error: type[Exception]):
    """The JSON in ``path``, or ``error`` with one line naming ``what`` it was meant
    to be ("no such manifest: ...", "cannot read review ...: ...")."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"no such {what}: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"cannot read {what} {path}: {' '.join(str(e).split())}") from None
