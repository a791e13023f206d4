"""``forkops push`` (and ``upgrade --push``): publish a finished run's branches.

Gated like every commit: the stack accounted for, no conflict markers or whitespace errors the
old stack did not have, no commit of the run holding the key. Pushed with ``--set-upstream``,
never forced; ``--force-with-lease`` only when asked. A refusal by the pre-push guard hook is
reported as such, with the file it named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forkops.errors import BadInput, ExternalError, NeedsPerson
from forkops.git import Repo
from forkops.lock import workspace_lock
from forkops.upgrade import accounting, gates
from forkops.upgrade.state import Phase, RepoState, RunState, load_run, load_state, save_state
from forkops.workspace import Workspace

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Pushed:
    repo: str
    branch: str
    remote: str

    def as_json(self) -> dict[str, str]:
        return {"repo": self.repo, "branch": self.branch, "remote": self.remote}


def _gate(repo: Repo, st: RepoState, ws: Workspace) -> None:
    acc = accounting.account(repo, st)
    if not acc.ok:
        shown = "; ".join(f"{e.sha[:12]} {e.subject!r}" for e in acc.missing) or f"{st.branch} lacks {st.tag}"
        raise NeedsPerson(f"{st.repo}: not pushed: commits of the fork's stack are missing: {shown}")
    tip = acc.tip
    assert tip is not None
    problems = gates.stack_problems(repo, st.onto_sha, tip, st.base_sha, st.start_sha)
    if problems:
        raise NeedsPerson(f"{st.repo}: not pushed: {st.branch} has conflict markers or whitespace errors: "
                          + "; ".join(problems[:10]))
    hits = gates.commit_key_hits(repo, gates.key_material(ws), [f"^{st.start_sha}", f"^{st.onto_sha}", tip],
                                 [f"{st.base_sha}..{st.start_sha}"])
    if hits:
        raise NeedsPerson(f"{st.repo}: not pushed: a commit holds the key: {hits[0]}")


def _guard_lines(stderr: str) -> list[str]:
    """The pre-push guard's own lines (forkops' hook names file and commit, never the key)."""
    return [ln.strip() for ln in stderr.splitlines()
            if ln.strip() and not ln.startswith(("To ", "error: failed to push", "!", "hint:"))]


def push_repo(repo: Repo, st: RepoState, ws: Workspace, *, force_with_lease: bool, log: Log) -> Pushed:
    _gate(repo, st, ws)
    proc = repo.push("origin", f"{st.branch_ref}:{st.branch_ref}", force_with_lease=force_with_lease)
    stderr = proc.stderr.decode("utf-8", "replace")
    stdout = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "pre-push hook" in stderr or "hook declined" in stderr:
            raise NeedsPerson(f"{st.repo}: the push guard refused {st.branch}: "
                              + "; ".join(_guard_lines(stderr)[:5] or ["(no reason given)"]))
        if "[rejected]" in stdout or "stale info" in stdout or "non-fast-forward" in stderr:
            raise NeedsPerson(f"{st.repo}: origin refused {st.branch} (it has commits this one lacks); "
                              f"push with --force-with-lease to replace it, or upgrade with --branch NAME")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
        raise ExternalError(f"{st.repo}: git push of {st.branch} failed: {last}")
    st.pushed = True
    save_state(repo, st)
    log(f"{st.repo}: pushed {st.branch} to origin (tracking origin/{st.branch})")
    return Pushed(st.repo, st.branch, "origin")


def push(ws: Workspace, *, repo: str | None = None, force_with_lease: bool = False, log: Log = _quiet,
         run: RunState | None = None) -> list[Pushed]:
    """Push every finished repository of the last run (or ``repo`` only)."""
    with workspace_lock(ws, "forkops push"):
        run = run or load_run(ws)
        names = [repo] if repo else (run.repos if run else [rc.name for rc in ws.repos])
        done: list[Pushed] = []
        found = False
        for name in names:
            rc = ws.repo(name)
            r = Repo(rc.path)
            st = load_state(r) if r.is_repo() else None
            if st is None or (run is not None and st.run != run.id):
                if repo:
                    raise BadInput(f"{name}: nothing to push: no upgrade ran here")
                continue
            found = True
            if st.phase not in (Phase.FINISHED, Phase.DONE):
                raise BadInput(f"{name}: the upgrade to {st.version} is not finished ({st.phase}); "
                               f"finish it first (`forkops status`)")
            done.append(push_repo(r, st, ws, force_with_lease=force_with_lease, log=log))
        if not found:
            raise BadInput("nothing to push: no finished upgrade in this workspace")
        return done
