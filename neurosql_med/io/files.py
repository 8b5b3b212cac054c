"""Atomic writes and content hashes: a failed run never leaves a half-written file."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from neurosql_med.errors import UserError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def umask() -> int:
    """The process umask, read once.

    Linux reports it in /proc/self/status; elsewhere it can only be read by setting it and
    putting it back, which is safe once, before writers run, but not on every write.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: Path, exc: OSError) -> UserError:
    """One line naming ``path`` for an operating-system failure to write it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on device while writing {path}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path}: permission denied")
    if exc.errno == errno.EROFS:
        return UserError(f"cannot write {path}: read-only file system")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return UserError(f"cannot write {path}: a file stands where a folder is needed")
    return UserError(f"cannot write {path}: {(exc.strerror or str(exc)).lower()}")


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` whose failures (under /proc, read-only, a file in the way) are one clear line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def check_output_file(path: Path, suffix: str, option: str) -> Path:
    """Refuse an output file name before any work: wrong suffix, or an existing folder."""
    if path.suffix.lower() != suffix:
        raise UserError(f"{option} must name a {suffix} file, got {path}")
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name a {suffix} file")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The temporary name keeps the final suffix (``.nii.gz``) so writers that infer the
    format from the name still work, and starts with a dot so it is never mistaken
    for a finished output. mkstemp creates it 0600; it gets the mode a plain write would
    give (0666 less the umask) so colleagues can read models and cohorts.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        tmp_path.chmod(0o666 & ~umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
            raise write_error(path, exc) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())
