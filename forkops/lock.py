"""One forkops run per workspace at a time (docs/SPEC.md section 6).

The lock is an ``flock`` on ``<workspace>/.forkops/lock``: the kernel releases it when the
holder exits, however it exits (``kill -9`` included), so a stale lock cannot exist. The holder
writes its pid and command into the file; a second run reads them to say who holds it.

Commands that move refs or write key sites (``upgrade``, ``push``, ``set-key``, ``build``) take
it with :func:`workspace_lock`; ``set-key`` and ``build`` also refuse while an upgrade is
stopped (:func:`upgrade_stopped`): a key written into a worktree mid-rebase would be committed
by ``git add -A`` + ``--continue`` (rebase commits run no pre-commit hook).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from forkops.errors import BadInput
from forkops.fsutil import ensure_ignored
from forkops.workspace import Workspace

RUN_DIR = ".forkops"
LOCK_FILE = "lock"


def run_dir(ws: Workspace) -> Path:
    """``<workspace>/.forkops``, created with a ``.gitignore`` that keeps it out of git."""
    folder = ws.root / RUN_DIR
    folder.mkdir(exist_ok=True)
    ensure_ignored(folder, "*", comment="forkops run state: never committed")
    return folder


class WorkspaceLocked(BadInput):
    """Another forkops process holds the workspace: exit 2 naming it."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another forkops run holds this workspace ({holder}); wait for it to finish")
        self.holder = holder


@contextmanager
def workspace_lock(ws: Workspace, command: str) -> Iterator[None]:
    """Hold the workspace for ``command`` (e.g. "forkops upgrade 2.18.0"); raise
    :class:`WorkspaceLocked` (exit 2) naming the holder's pid and command when another process
    holds it. Re-entrant within one process (a nested call is a no-op)."""
    path = run_dir(ws) / LOCK_FILE
    key = str(path)
    if key in _HELD:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that did not say"
            raise WorkspaceLocked(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


_HELD: set[str] = set()


def holder(ws: Workspace) -> str | None:
    """Who holds the workspace now when another process does ("pid N: command"), else None;
    read from the kernel's lock table (Linux ``/proc/locks``), never by taking the lock (a run
    starting at that moment would be refused). None where the table cannot be read."""
    path = ws.root / RUN_DIR / LOCK_FILE
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = [f for f in line.split() if f != "->"]  # "->": a process waiting for the lock
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4] != str(os.getpid()):
            try:
                said = path.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                said = ""
            return said or f"pid {fields[4]}"
    return None


def upgrade_stopped(ws: Workspace) -> str | None:
    """The version of an upgrade that is in progress (stopped for a person, or interrupted) in
    this workspace, or None. Commands that write into the forks' worktrees refuse while it is."""
    from forkops.upgrade.state import active_run

    run = active_run(ws)
    return None if run is None else run.version


def refuse_while_upgrading(ws: Workspace, command: str) -> None:
    """BadInput (exit 2) when an upgrade is in progress: for ``set-key`` and ``build``."""
    version = upgrade_stopped(ws)
    if version is not None:
        raise BadInput(f"{command} is refused while the upgrade to {version} is in progress; finish it "
                       f"(`forkops upgrade --continue`) or undo it (`forkops upgrade --abort`) first")
