"""Checks before anything moves: a repository forkops may work in, and git locks nobody holds.

A refusal here is bad input (exit 2) with one line saying what to do; it happens before any
ref, config value or file changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forkops.errors import BadInput
from forkops.git import Repo
from forkops.playbook import Playbook

Log = Callable[[str], None]

IDENTITY_HELP = ('git config --global user.name "Your Name"',
                 'git config --global user.email "you@example.com"')


@dataclass(frozen=True)
class Startable:
    """A repository forkops may start in: HEAD's commit, the full ref HEAD is on (None when
    detached), and the untracked files (listed only when asked for)."""

    head: str
    head_ref: str | None
    untracked: tuple[str, ...] = ()


def check_identity(repo: Repo, name: str) -> None:
    """Rebase commits need a committer identity; without one git fails mid-run."""
    if repo.ident_missing():
        raise BadInput(f"{name}: git has no identity to commit with in {repo.path}; run: "
                       f"{IDENTITY_HELP[0]} && {IDENTITY_HELP[1]}")


def dirty_paths(repo: Repo) -> list[str]:
    return repo.worktree_changes()[0]


def check_startable(repo: Repo, pb: Playbook, name: str, *, untracked: bool = False) -> Startable:
    """Refuse a repository forkops must not touch: an operation in progress (bisect, merge, am,
    cherry-pick, revert, rebase), no commits, a detached HEAD with commits no ref holds,
    uncommitted changes (key sites called out), git locks. ``untracked``: also list the
    untracked files (the same ``git status``)."""
    op = repo.operation_in_progress()
    if op is not None:
        raise BadInput(f"{name}: a {op} is in progress in {repo.path} that forkops did not start; "
                       f"finish or abort it first (git {op} --abort{' / git bisect reset' if op == 'bisect' else ''})")
    refuse_locks(repo, name)
    head, head_ref = repo.head_info()
    if head is None:
        raise BadInput(f"{name}: {repo.path} has no commits")
    if head_ref is None and repo.head_unreachable():
        raise BadInput(f"{name}: detached HEAD at {head[:12]} holds commits no branch has "
                       f"(create a branch for them first: git branch NAME)")
    dirty, new = repo.worktree_changes(untracked=untracked)
    if dirty:
        keys = sorted(set(dirty) & {p for site in pb.key_sites for p in site.paths})
        if keys:
            raise BadInput(f"{name}: key sites hold a key in the working tree ({', '.join(keys)}); "
                           f"run `forkops set-key --clear` first")
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise BadInput(f"{name}: uncommitted changes in {repo.path} ({shown}); commit or stash them first")
    return Startable(head, head_ref, tuple(new))


def untracked_in_the_way(repo: Repo, treeish: str, untracked: tuple[str, ...]) -> list[str]:
    """The ``untracked`` (not ignored) files that checking out ``treeish`` would overwrite: the
    same path, a file where the tree has a folder, or a file inside a folder the tree has as a
    file. git refuses the whole rebase for them; ignored files it overwrites silently."""
    if not untracked:
        return []
    files = repo.tree_paths(treeish)
    folders = {f[:i] for f in files for i, c in enumerate(f) if c == "/"}

    def parents(path: str) -> list[str]:
        return [path[:i] for i, c in enumerate(path) if c == "/"]

    return sorted(u for u in untracked if u in files or u in folders or any(d in files for d in parents(u)))


# ---------------------------------------------------------------------------------------
# git lock files
# ---------------------------------------------------------------------------------------
def lock_holders(paths: list[Path]) -> dict[Path, int]:
    """Which process has each file open (Linux: ``/proc/*/fd``). A lock file git created and
    no process holds is stale: the git that made it was killed."""
    wanted = {str(p) for p in paths}
    held: dict[Path, int] = {}
    proc = Path("/proc")
    if not wanted or not proc.is_dir():
        return held
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target in wanted:
                    held[Path(target)] = int(entry.name)
        except OSError:
            continue
    return held


def _describe_holder(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid}: {cmd[:120]}"


def refuse_locks(repo: Repo, name: str) -> None:
    """Before a run starts: name any git lock file (a running git, or one a kill left)."""
    locks = repo.stale_locks()
    if not locks:
        return
    held = lock_holders(locks)
    first = locks[0]
    if first in held:
        raise BadInput(f"{name}: git is working in {repo.path} ({first} held by {_describe_holder(held[first])}); "
                       f"wait for it to finish")
    raise BadInput(f"{name}: {first} is a stale git lock (no process holds it; a killed git left it); "
                   f"remove it (rm {first}) and run again")


def clear_stale_locks(repo: Repo, name: str, log: Log) -> None:
    """For --continue and --abort: remove git lock files no process holds (naming each), refuse
    (exit 2) when a live process holds one."""
    locks = repo.stale_locks()
    if not locks:
        return
    held = lock_holders(locks)
    for lock in locks:
        if lock in held:
            raise BadInput(f"{name}: {lock} is held by {_describe_holder(held[lock])}; wait for it to finish")
    for lock in locks:
        lock.unlink(missing_ok=True)
        log(f"{name}: removed stale git lock {lock} (no process held it)")
