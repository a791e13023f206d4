"""The one atomic file writer and the one ``.gitignore`` editor.

:func:`atomic_writer` is how forkops replaces a file (state, reports, key sites, encrypted models,
hooks): a crash at any point leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644, infix: str = ".") -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` when the block succeeds; on any exception
    ``path`` is left as it was and the partial file is removed.

    Invariants: the file is created private (0600) and set to ``mode`` before its first byte
    (a key is never readable by others, even half-written); it is written in ``path``'s folder
    (the rename is atomic) and fsynced before the rename. Where the system has ``O_TMPFILE`` it
    has no name until it is complete, so even SIGKILL leaves nothing behind and a large file
    (an encrypted model) streams through it; elsewhere it is ``.NAME{infix}XXXXXXXX.tmp``, which
    only a SIGKILL can leave (callers writing secrets remove such leftovers).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _unnamed_file(path.parent)
    tmp: str | None = None
    if fd is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{infix}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if tmp is None:  # name the finished file (a hidden name, for an instant)
                tmp = str(path.parent / f".{path.name}{infix}{secrets.token_hex(4)}.tmp")
                _link_fd(fh.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, infix: str = ".") -> None:
    """:func:`atomic_writer` with the whole content at once (``str`` is written as UTF-8)."""
    with atomic_writer(path, mode=mode, infix=infix) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def _unnamed_file(folder: Path) -> int | None:
    """A private unnamed file in ``folder`` (``O_TMPFILE``), or None where the system lacks it."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        return None  # e.g. a file system without O_TMPFILE support


def _link_fd(fd: int, name: str) -> None:
    """Give the unnamed file behind ``fd`` a name: ``linkat`` of /proc/self/fd/N, following it.

    The explicit ``src_dir_fd`` matters: without one, Python calls plain ``link()``, which does
    not follow the /proc symlink (EXDEV).
    """
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def ensure_ignored(folder: Path, pattern: str, *, comment: str | None = None) -> Path:
    """Make ``folder/.gitignore`` list ``pattern`` and return its path.

    A line that already says it (with or without a leading ``/``, trailing blanks aside, as git
    reads them) leaves the file untouched; otherwise ``pattern`` (after ``# comment``) is
    appended, every existing byte kept, the file replaced atomically.
    """
    path = folder / ".gitignore"
    text = path.read_text() if path.exists() else ""
    bare = pattern.removeprefix("/")
    if any(line.rstrip() in (bare, f"/{bare}") for line in text.splitlines()):
        return path
    if text and not text.endswith("\n"):
        text += "\n"
    added = ([f"# {comment}"] if comment else []) + [pattern]
    write_atomic(path, text + "".join(f"{line}\n" for line in added))
    return path
