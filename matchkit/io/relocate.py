"""Moving one file on disk without ever overwriting or losing it.

A hard link and an unlink within one filesystem; across filesystems a copy
to a partial name, fsync, a hash check and a no-overwrite link into place
before the source goes (point 2 of :mod:`matchkit.io.moves`). Used by both
directions, the move and its undo; apart from them because it knows
nothing of plans or manifests, only of one source, one destination and the
hash the content must have.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil

from matchkit.util.fs import DIGEST, file_stamp, fsync_dir

#: Suffix of a partial cross-filesystem copy (never under the final name).
PART_SUFFIX = ".matchkit-part"


def _identity(path: str) -> tuple[int, str]:
    """Size and content hash of a file ("link:<target>" for a symbolic link)."""
    if os.path.islink(path):
        target = os.readlink(path)
        return len(target), "link:" + target
    stamp = file_stamp(path)
    return stamp["size"], stamp[DIGEST]


def _same_filesystem(src: str, dst_dir: str) -> bool:
    try:
        return os.lstat(src).st_dev == os.stat(dst_dir).st_dev
    except OSError:
        return False


def _copy_file(src: str, tmp: str) -> str:
    """Copy ``src`` to the new file ``tmp`` (fsync'ed); returns the copy's SHA-256.

    ``tmp`` is created exclusively, never overwritten.
    """
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(tmp, "xb") as fo:
        while block := fi.read(1 << 20):
            fo.write(block)
            h.update(block)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def _place(tmp_or_src: str, dst: str, *, keep_source: bool) -> None:
    """Give ``tmp_or_src`` the name ``dst`` without ever overwriting ``dst``.

    A hard link fails if ``dst`` exists (atomically). Filesystems without hard
    links fall back to check-then-rename. With ``keep_source`` the old name
    stays (the caller removes it once the new one is durable).
    """
    try:
        os.link(tmp_or_src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                           errno.ENOSYS):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", dst) from None
        if keep_source:
            raise  # cannot have both names without links
        os.rename(tmp_or_src, dst)
        return
    if not keep_source:
        os.unlink(tmp_or_src)


def _cleanup(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _relocate(src: str, dst: str, expect: str, created: list[str]) -> None:
    """Move one file from ``src`` to a free ``dst`` whose content must hash to
    ``expect``. On any failure the file is left at ``src`` and ``OSError`` (or
    ``ValueError`` for a hash mismatch) says why."""
    parent = os.path.dirname(dst)
    _makedirs(parent, created)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination appeared after planning", dst)
    if _same_filesystem(src, parent):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EXDEV:  # bind mounts: same device number, still no link
                return _copy_then_remove(src, dst, expect)
            if e.errno == errno.EEXIST:
                raise
            # No hard links here (or not allowed): rename never duplicates a file.
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "destination exists", dst) from None
            os.rename(src, dst)
            fsync_dir(parent)
            fsync_dir(os.path.dirname(src))
            return
        fsync_dir(parent)
        try:
            os.unlink(src)
        except OSError:
            _cleanup(dst)  # the original stays where it was; drop the second name
            raise
        fsync_dir(os.path.dirname(src))
        return
    _copy_then_remove(src, dst, expect)


def _copy_then_remove(src: str, dst: str, expect: str) -> None:
    """Across filesystems: copy, fsync, verify hash, link into place, then unlink."""
    parent = os.path.dirname(dst)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}{PART_SUFFIX}")
    _cleanup(tmp)  # a partial copy of ours from a crashed run
    try:
        if os.path.islink(src):
            os.symlink(os.readlink(src), tmp)
            got = "link:" + os.readlink(tmp)
        else:
            _copy_file(src, tmp)
            got = _identity(tmp)[1]  # read back what reached the disk
        if got != expect:
            raise ValueError("copy does not match the original (hash differs)")
        if not os.path.islink(tmp):
            try:
                shutil.copystat(src, tmp)
            except OSError:
                pass  # times and mode are nice to keep, not worth failing a move for
        _place(tmp, dst, keep_source=False)
    except BaseException:
        _cleanup(tmp)
        raise
    fsync_dir(parent)
    try:
        os.unlink(src)
    except OSError:
        _cleanup(dst)  # original stays; the verified copy was ours to remove
        raise
    fsync_dir(os.path.dirname(src))


def _makedirs(folder: str, created: list[str]) -> None:
    missing = []
    p = folder
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
