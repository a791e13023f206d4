"""``forkops status``: what the run is doing and waiting for, read from git's state.

Two builders are the places to extend: :func:`stop_report` (a rebase stopped on a commit: what
stopped, which files, which git's rerere resolved from a recorded resolution, what to do next)
and :func:`completion_report` (a repository finished: ``git range-diff`` of the old stack
against the new one, what was dropped and why). Everything here only reads.

``state`` is ``idle``, ``conflict``, ``anchor-failed`` (an anchor or pin), ``commit-missing`` (a
stack commit left without an accepted reason), ``key-found`` (a commit of the run holds the key)
or ``done``; "done" is said only while the stack is fully accounted for.

With no run recorded, :func:`status` reads two files per repository and starts no git process;
what only a recorded run needs (accounting, rebase, conflict context) is imported then, so
that ``forkops status`` stays within two ``git status`` plus interpreter start
(benchmarks/bench_help.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from forkops.git import Repo
from forkops.upgrade.state import Failure, FailureKind, Phase, RepoState, RunState, load_run, load_state

if TYPE_CHECKING:
    from forkops.git import RangeDiffLine, RebaseState
    from forkops.workspace import Workspace

State = Literal["idle", "conflict", "anchor-failed", "commit-missing", "key-found", "done"]
NEEDS_PERSON: frozenset[str] = frozenset({"conflict", "anchor-failed", "commit-missing", "key-found"})
RECORDED_HINT = "resolved from a recorded resolution: review, then --continue"


@dataclass(frozen=True)
class ConflictEntry:
    """One unmerged file of a stop."""

    path: str
    kind: str  # forkops.git.conflict_kind
    recorded: bool = False  # git's rerere resolved it from a recorded resolution
    moved_from: str | None = None  # the stopping commit's path when git followed upstream's move
    # upstream commits of base..tag behind the conflict (forkops.predict.conflict_context)
    context: tuple[tuple[str, str], ...] = ()  # (sha, subject), newest first

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "kind": self.kind, "recorded": self.recorded, "moved_from": self.moved_from,
                "context": [{"sha": sha, "subject": subject} for sha, subject in self.context]}


@dataclass(frozen=True)
class StoppedAt:
    """The stack commit a rebase stopped on: ``index`` of ``total`` (git's msgnum and end)."""

    commit: str
    subject: str
    index: int
    total: int

    def as_json(self) -> dict[str, object]:
        return {"commit": self.commit, "subject": self.subject, "index": self.index, "total": self.total}


@dataclass(frozen=True)
class RepoStatus:
    """One repository of the run (the docs/SPEC.md section 5 shape, more fields allowed)."""

    repo: str
    version: str
    state: State
    branch: str
    onto: str
    base: str
    start: str
    phase: str
    path: str
    tag: str
    patches: int
    stopped_at: StoppedAt | None = None
    conflicts: tuple[ConflictEntry, ...] = ()
    dropped: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    emptied: tuple[str, ...] = ()
    reapplied: tuple[dict[str, str], ...] = ()
    pinned: tuple[dict[str, str], ...] = ()
    failure: Failure | None = None
    pushed: bool = False
    notes: tuple[str, ...] = ()
    next: tuple[str, ...] = ()
    interrupted: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "repo": self.repo, "version": self.version, "state": self.state, "branch": self.branch,
            "onto": self.onto, "base": self.base, "start": self.start,
            "stopped_at": self.stopped_at.as_json() if self.stopped_at else None,
            "conflicts": [c.as_json() for c in self.conflicts], "phase": self.phase, "path": self.path,
            "tag": self.tag, "patches": self.patches, "dropped": list(self.dropped),
            "skipped": list(self.skipped), "emptied": list(self.emptied), "reapplied": list(self.reapplied),
            "pinned": list(self.pinned), "failure": _failure_json(self.failure), "pushed": self.pushed,
            "notes": list(self.notes), "next": list(self.next), "interrupted": self.interrupted,
        }


def _failure_json(failure: Failure | None) -> dict[str, object] | None:
    if failure is None:
        return None
    data = asdict(failure)
    data["kind"] = str(failure.kind)
    return data


@dataclass(frozen=True)
class RunRepo:
    """One repository in a run's list: its status state (``pending`` before it starts) and phase."""

    repo: str
    state: str
    phase: str


@dataclass(frozen=True)
class RunInfo:
    """The run as a whole (``.forkops/run.json``), repositories in upgrade order."""

    id: str
    version: str
    phase: str
    push: bool
    branch: str | None
    repos: tuple[RunRepo, ...]

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "version": self.version, "phase": self.phase, "push": self.push,
                "branch": self.branch, "repos": [asdict(r) for r in self.repos]}


@dataclass(frozen=True)
class Status:
    """The run (None: no run) and the repository it is on (None: none started)."""

    current: RepoStatus | None
    run: RunInfo | None
    pending_repo: str | None = None  # the first repository of a run none of whose repos started
    # Another forkops process holding the workspace now ("pid N: command"): the run is moving,
    # and what git's files say is a moment of it (a lock git holds is no kill's leftover).
    running: str | None = None

    @property
    def state(self) -> str:
        return self.current.state if self.current is not None else "idle"

    @property
    def needs_person(self) -> bool:
        return self.state in NEEDS_PERSON

    def as_json(self) -> dict[str, object]:
        if self.current is not None:
            data = self.current.as_json()
        else:
            data = {"repo": self.pending_repo, "version": self.run.version if self.run else None, "state": "idle",
                    "branch": None, "onto": None, "base": None, "start": None, "stopped_at": None,
                    "conflicts": [], "next": []}
            if self.run is not None:
                data["interrupted"] = True
                data["next"] = ["forkops upgrade --continue", "(or: forkops upgrade --abort)"]
        data["run"] = self.run.as_json() if self.run else None
        data["running"] = self.running
        return data


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------
@dataclass
class _Draft:
    """Mutable while one repository's status is assembled."""

    state: State = "idle"
    stopped_at: StoppedAt | None = None
    conflicts: tuple[ConflictEntry, ...] = ()
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)
    next: list[str] = field(default_factory=list)
    interrupted: bool = False


def _with_context(repo: Repo, st: RepoState, commit: str,
                  conflicts: tuple[ConflictEntry, ...]) -> tuple[ConflictEntry, ...]:
    """The moves git followed and the upstream commits behind each conflict, as ``check``
    predicts them (reads only)."""
    from dataclasses import replace

    from forkops.predict import Conflict, conflict_context

    found = conflict_context(repo, base=st.base_sha, onto=st.onto_sha, commit=commit,
                             conflicts=[Conflict(c.path, c.kind) for c in conflicts])
    return tuple(replace(c, moved_from=f.moved_from, context=tuple((x.sha, x.subject) for x in f.context))
                 for c, f in zip(conflicts, found, strict=True))


def stop_report(repo: Repo, st: RepoState, rs: RebaseState, stages: dict[str, frozenset[int]]) -> _Draft:
    """A rebase stopped on a commit: where, the unmerged files (``stages``, from
    :meth:`Repo.unmerged`; rerere-resolved ones marked), and what the person does next."""
    from forkops.git import conflict_kind
    from forkops.upgrade import rebase

    commit, subject, index, total = rebase.position(repo, rs)
    stop = st.stop_for(commit)
    recorded = set(stop.recorded) if stop else set()
    conflicts = _with_context(repo, st, commit, tuple(
        ConflictEntry(p, conflict_kind(s), p in recorded) for p, s in sorted(stages.items())))
    draft = _Draft("conflict", StoppedAt(commit, subject, index, total), conflicts, notes=list(st.notes))
    if any(c.recorded for c in conflicts):
        names = ", ".join(c.path for c in conflicts if c.recorded)
        draft.notes.append(f"{names}: {RECORDED_HINT}")
    if stages:
        draft.next = [f"resolve each file listed (edit it, or `git mergetool`) in {repo.path}"
                      + (" (files marked recorded: review git's resolution)" if recorded & set(stages) else ""),
                      "`git add <file>` (or `git rm <file>`) for each resolved file",
                      "forkops upgrade --continue",
                      "(or: forkops upgrade --skip to drop this commit, --abort to undo the run)"]
    else:
        draft.next = ["all conflicts are resolved: forkops upgrade --continue",
                      "(or: forkops upgrade --skip to drop this commit, --abort to undo the run)"]
    return draft


@dataclass(frozen=True)
class Completion:
    """What a finished repository's new stack is, against the old one."""

    repo: str
    branch: str
    onto: str
    total: int
    carried: int
    unchanged: tuple[str, ...]
    changed: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]  # upstream has them
    skipped: tuple[str, ...]
    emptied: tuple[str, ...]

    def lines(self) -> list[str]:
        out = [f"{self.branch} is ready ({self.carried} of {self.total} patches on {self.onto})"]
        parts = [f"{len(self.unchanged)} unchanged"]
        if self.changed:
            parts.append(f"{len(self.changed)} changed ({'; '.join(self.changed)})")
        if self.added:
            parts.append(f"{len(self.added)} added by forkops ({'; '.join(self.added)})")
        out.append("range-diff old stack -> new: " + ", ".join(parts))
        out += [f"dropped {s!r} (already upstream)" for s in self.dropped]
        out += [f"emptied {s!r} (your resolution left nothing to commit)" for s in self.emptied]
        out += [f"skipped {s!r} (--skip)" for s in self.skipped]
        return out

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def completion_report(repo: Repo, st: RepoState) -> Completion:
    """``git range-diff base..start onto..branch`` summarised, with the accounted drops."""
    rows = repo.range_diff(f"{st.base_sha}..{st.start_sha}", f"{st.onto_sha}..{st.branch_ref}")
    skipped = tuple(i.subject for i in repo.commit_infos(st.skipped))
    carried = len(st.picked) - len(st.dropped) - len(st.emptied) - len(st.skipped)
    ours = [c["commit"] for c in (*st.reapplied, *st.pinned)]

    def by_forkops(row: RangeDiffLine) -> bool:
        return any(sha.startswith(row.new) for sha in ours)

    # A fork commit whose resolution changed it beyond what range-diff pairs shows up as "only
    # in the new range": it is a changed patch, not one forkops added.
    return Completion(
        st.repo, st.branch, st.onto, len(st.picked), carried,
        unchanged=tuple(r.subject for r in rows if r.mark == "="),
        changed=tuple(r.subject for r in rows if r.mark == "!" or (r.mark == ">" and not by_forkops(r))),
        added=tuple(r.subject for r in rows if r.mark == ">" and by_forkops(r)),
        dropped=tuple(st.dropped), skipped=skipped, emptied=tuple(st.emptied))


_FAILED_STATE: dict[FailureKind, State] = {
    FailureKind.ANCHOR: "anchor-failed", FailureKind.PIN: "anchor-failed", FailureKind.GATE: "anchor-failed",
    FailureKind.MISSING: "commit-missing", FailureKind.KEY: "key-found",
}


def _failure_next(st: RepoState, failure: Failure, repo: Repo) -> list[str]:
    if failure.kind is FailureKind.MISSING:
        return [*failure.lines, "(or: forkops upgrade --abort to undo the run)"]
    if failure.kind is FailureKind.KEY:
        return [f"rewrite the commit named on {st.branch} in {repo.path} without the key "
                f"(key sites hold placeholders in commits; `forkops set-key` writes the worktree only)",
                "forkops upgrade --continue  (checks again)", "(or: forkops upgrade --abort to undo the run)"]
    steps = [f"fix it by hand on {st.branch} in {repo.path} and commit", "forkops upgrade --continue  (checks again)"]
    if failure.kind is FailureKind.PIN:
        steps.append("(or: forkops upgrade --skip to finish without this pin, --abort to undo the run)")
    else:
        steps.append("(or: forkops upgrade --abort to undo the run)")
    return steps


def _draft(repo: Repo, st: RepoState, run: RunState | None) -> _Draft:
    from forkops.upgrade import accounting, rebase

    locks = repo.stale_locks()
    lock_notes = [f"git lock {p} is left over (a killed git?): --continue or --abort removes it when no "
                  f"process holds it" for p in locks]
    if st.phase is Phase.DONE or (run is not None and run.phase == "done") or st.phase is Phase.FINISHED:
        acc = accounting.account(repo, st)
        if not acc.ok:
            return _Draft("commit-missing", notes=lock_notes, next=[
                *(accounting.restore_command(st, e) for e in acc.missing),
                "(or: forkops upgrade --abort while the run is in progress)"],
                failure=Failure(FailureKind.MISSING, "commits of the fork's stack are missing from "
                                                     f"{st.branch}: " + "; ".join(
                                                         f"{e.sha[:12]} {e.subject!r}" for e in acc.missing)))
        if st.phase is Phase.FINISHED and not (run is not None and run.phase == "done"):
            return _Draft(notes=list(st.notes) + lock_notes,
                          next=["forkops upgrade --continue  (the next repository of the run)"])
        return _Draft("done", notes=list(st.notes) + lock_notes)
    if st.phase is Phase.ABORTING:
        return _Draft(notes=lock_notes, next=["forkops upgrade --abort  (an abort was interrupted; run it again)"])
    rs = repo.rebase_state()
    if st.phase is Phase.REBASING and rs is not None and rs.head_name in ("", st.branch_ref):
        if rebase.half_started(rs):
            return _Draft(interrupted=True, notes=[f"git was killed as the rebase of {st.branch} began; nothing "
                                                   f"was rebased", *lock_notes],
                          next=["forkops upgrade --continue  (starts the rebase again)",
                                "(or: forkops upgrade --abort to undo the run)"])
        if rebase.half_finished(repo, rs):
            return _Draft(interrupted=True, notes=[f"git was killed as it finished the rebase of {st.branch} (the "
                                                   f"branch is already moved)", *lock_notes],
                          next=["forkops upgrade --continue  (finishes it)",
                                "(or: forkops upgrade --abort to undo the run)"])
        if (skipped := rebase.skip_interrupted(st, rs)) is not None:
            return _Draft(interrupted=True, notes=[f"dropping {skipped[:12]} (your --skip) was interrupted (a kill)",
                                                   *lock_notes],
                          next=["forkops upgrade --continue  (finishes dropping it)",
                                "(or: forkops upgrade --abort to undo the run)"])
        stages = repo.unmerged()
        if not stages:  # a pick with unmerged files did not die unseen
            lost = rebase.interrupted_pick(repo, st, rs)
            if lost is not None:
                return _Draft(interrupted=True, notes=[
                    f"the pick of {lost.commit[:12]} was interrupted (a kill): its changes are not in the index",
                    *lock_notes],
                    next=["forkops upgrade --continue  (picks it again)",
                          "(or: forkops upgrade --abort to undo the run)"])
        draft = stop_report(repo, st, rs, stages)
        draft.notes += lock_notes
        return draft
    if st.failure is not None:
        return _Draft(_FAILED_STATE[st.failure.kind], failure=st.failure, notes=list(st.notes) + lock_notes,
                      next=_failure_next(st, st.failure, repo))
    return _Draft(interrupted=True, notes=list(st.notes) + lock_notes,
                  next=["forkops upgrade --continue  (the run was interrupted; it picks up from here)",
                        "(or: forkops upgrade --abort to undo the run)"])


def repo_status(repo: Repo, st: RepoState, run: RunState | None) -> RepoStatus:
    """One repository's status, derived from git's files and the state."""
    d = _draft(repo, st, run)
    return RepoStatus(
        repo=st.repo, version=st.version, state=d.state, branch=st.branch, onto=st.onto, base=st.base,
        start=st.start, phase=str(st.phase), path=str(repo.path), tag=st.tag, patches=len(st.picked),
        stopped_at=d.stopped_at, conflicts=d.conflicts, dropped=tuple(st.dropped), skipped=tuple(st.skipped),
        emptied=tuple(st.emptied), reapplied=tuple(st.reapplied), pinned=tuple(st.pinned), failure=d.failure,
        pushed=st.pushed, notes=tuple(d.notes), next=tuple(d.next), interrupted=d.interrupted)


def status(ws: Workspace) -> Status:
    """What the current (or last) run is doing and waiting for."""
    from forkops.lock import holder

    running = holder(ws)
    run = load_run(ws)
    entries: dict[str, RepoStatus] = {}
    for rc in ws.repos if run is None else [ws.repo(n) for n in run.repos]:
        repo = Repo(rc.path)
        st = load_state(repo)
        if st is None or (run is not None and st.run != run.id):
            continue
        entries[rc.name] = repo_status(repo, st, run)
    if run is None and not entries:
        return Status(None, None, running=running)
    order = run.repos if run is not None else list(entries)
    current = next((entries[n] for n in order if n in entries and entries[n].state != "done"
                    and entries[n].phase != "finished"), None)
    if current is None:
        current = next((entries[n] for n in order if n in entries and entries[n].phase == "finished"), None)
    if current is None and order and order[-1] in entries:
        current = entries[order[-1]]

    def waiting(n: str) -> bool:  # not started yet: no state, or prepared behind the current one
        return n not in entries or (entries[n] is not current and entries[n].phase == "prepared")

    info = None
    if run is not None:
        info = RunInfo(run.id, run.version, run.phase, run.push, run.branch, tuple(
            RunRepo(n, "pending" if waiting(n) else entries[n].state,
                    entries[n].phase if n in entries else "pending") for n in order))
    return Status(current, info, pending_repo=order[0] if order else None, running=running)
