"""``forkops gc``: remove what finished upgrade runs leave behind, keeping the newest N runs.

Every run records backup refs ``refs/forkops/backup/<run>/...`` in each repository, a state
file per repository and the run file in the workspace; after ``done`` they only serve to look
back. Run ids start with their UTC start time, so their order is the runs' order.

Invariants: a run that is not finished (in any repository, or in the run file) is never
touched, whatever ``keep`` says; refs are deleted with their expected value (a ref moved
meanwhile is left alone by git); nothing outside ``refs/forkops/backup/`` and forkops' own state
files is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forkops import lock
from forkops.errors import BadInput
from forkops.git import Repo
from forkops.upgrade import state as upgrade
from forkops.workspace import Workspace


@dataclass(frozen=True)
class RemovedRef:
    repo: str
    ref: str
    sha: str


@dataclass(frozen=True)
class GcResult:
    kept: tuple[str, ...]  # run ids kept, oldest first (unfinished runs included)
    removed_runs: tuple[str, ...]  # run ids whose refs and state went, oldest first
    refs: tuple[RemovedRef, ...]
    files: tuple[Path, ...]
    dry_run: bool

    def as_json(self) -> dict[str, object]:
        return {"kept": list(self.kept), "removed_runs": list(self.removed_runs), "dry_run": self.dry_run,
                "refs": [{"repo": r.repo, "ref": r.ref, "sha": r.sha} for r in self.refs],
                "files": [str(f) for f in self.files]}


def _run_of(ref: str) -> str:
    return ref.removeprefix(upgrade.BACKUP_PREFIX + "/").split("/", 1)[0]


def collect(ws: Workspace, *, keep: int, dry_run: bool = False) -> GcResult:
    """Remove the backup refs and finished state of every finished run but the newest ``keep``."""
    if keep < 0:
        raise BadInput(f"--keep {keep}: must be 0 or more")
    with lock.workspace_lock(ws, "gc"):  # no upgrade may start or move while runs are weighed
        return _collect(ws, keep=keep, dry_run=dry_run)


def _collect(ws: Workspace, *, keep: int, dry_run: bool) -> GcResult:
    repos = [(rc.name, Repo(rc.path)) for rc in ws.repos if Repo(rc.path).is_repo()]
    backups = {name: repo.refs(upgrade.BACKUP_PREFIX) for name, repo in repos}
    states = {name: upgrade.load_state(repo) for name, repo in repos}
    run = upgrade.load_run(ws)

    unfinished = {st.run for st in states.values() if st is not None and st.phase != "done"}
    if run is not None and run.phase != "done":
        unfinished.add(run.id)
    finished = sorted({_run_of(r.name) for refs in backups.values() for r in refs}
                      | {st.run for st in states.values() if st is not None}
                      | ({run.id} if run is not None else set()))
    finished = [r for r in finished if r not in unfinished]
    gone = set(finished[:max(len(finished) - keep, 0)])

    refs = tuple(RemovedRef(name, r.name, r.sha) for name, infos in backups.items() for r in infos
                 if _run_of(r.name) in gone)
    files = [upgrade.state_path(repo) for name, repo in repos
             if (st := states[name]) is not None and st.run in gone]
    if run is not None and run.id in gone:
        files.append(upgrade.run_path(ws))
    if not dry_run:
        for name, repo in repos:
            lines = "".join(f"delete {r.ref} {r.sha}\n" for r in refs if r.repo == name)
            if lines:
                repo.run("update-ref", "--stdin", input=lines)
        for path in files:
            path.unlink(missing_ok=True)
    kept = sorted(set(finished) - gone | unfinished)
    return GcResult(tuple(kept), tuple(sorted(gone)), refs, tuple(files), dry_run)
