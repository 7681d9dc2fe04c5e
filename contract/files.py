"""Atomic file writes (temporary file in the target's folder, fsync, ``os.replace``) and checksums.

An interrupted or failed write never leaves a file under the final name that looks valid, and
never replaces a good file with a partial one. Standard library only: the on-device runner uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The caller writes the temporary file however it likes (a converter that takes a file name,
    for example). On an exception the temporary file is removed and ``path`` is untouched.
    ``mode`` (e.g. ``0o644``) is applied before the rename; ``mkstemp`` creates files 0600.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; return the final path."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the final path."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def publish(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a build output atomically, readable by others (0644): artifacts are copied and served."""
    return write_bytes(path, data, mode=0o644)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` + ``.lock`` (POSIX ``flock``; elsewhere no lock).

    For one writer at a time across processes: appending to a results file, building a binary or a
    cached artifact that other processes (pytest-xdist workers, two ``make`` runs) may build too.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer at a time is then the caller's affair
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_line(path: str | os.PathLike[str], line: str) -> Path:
    """Append one line to a text file atomically: existing lines survive a crash mid-write.

    The whole file is rewritten through a temporary copy, which is fine for result files of
    thousands of lines; a half-written line can never appear. Writers in other processes wait
    for each other (an exclusive lock on a ``.lock`` file beside it): two bench runs appending to
    one results file lost each other's lines when each read the file before the other renamed
    its copy into place.
    """
    final = Path(path)
    with exclusive(final):
        old = final.read_bytes() if final.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        return write_bytes(final, old + line.rstrip("\n").encode("utf-8") + b"\n")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
