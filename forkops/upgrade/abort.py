"""``forkops upgrade --abort``: every ref, HEAD, tag, config value and the worktree as before.

Per repository, idempotent (a kill midway is finished by ``--abort`` again): the phase becomes
``aborting``; git's rebase state is dropped without a checkout (``rebase --quit``); every ref the
run may have moved gets its recorded value back, or is deleted, together with the backups, in
one transaction; HEAD points where it pointed; the worktree is rewritten once (``reset --hard``);
the config file gets its bytes from before the run back; the state file goes last.
"""

from __future__ import annotations

from collections.abc import Callable

from forkops.git import Repo
from forkops.lock import workspace_lock
from forkops.upgrade import rebase
from forkops.upgrade.machine import Outcome, crash_point
from forkops.upgrade.preflight import clear_stale_locks
from forkops.upgrade.state import (
    BACKUP_PREFIX,
    Phase,
    RepoState,
    decode_bytes,
    load_run,
    load_state,
    run_path,
    save_state,
    state_path,
)
from forkops.upgrade.status import status
from forkops.workspace import Workspace

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def abort(ws: Workspace, *, log: Log = _quiet) -> Outcome:
    """Undo the run in every repository it touched."""
    with workspace_lock(ws, "forkops upgrade --abort"):
        run = load_run(ws)
        if run is not None and run.phase == "done":
            log(f"nothing to abort: the upgrade to {run.version} finished")
            return Outcome(status(ws))
        restored = 0
        for rc in ws.repos:
            repo = Repo(rc.path)
            if not repo.is_repo():
                continue
            # Locks a killed forkops (or its git) left, also before any state was written.
            clear_stale_locks(repo, rc.name, log)
            st = load_state(repo)
            if st is None or st.phase is Phase.DONE or (run is not None and st.run != run.id):
                continue
            abort_repo(repo, st, log)
            restored += 1
        if run is not None:
            run_path(ws).unlink(missing_ok=True)
        if not restored and run is None:
            log("nothing to abort: no upgrade in progress")
        return Outcome(status(ws))


def abort_repo(repo: Repo, st: RepoState, log: Log) -> None:
    st.phase = Phase.ABORTING
    save_state(repo, st)
    rs = repo.rebase_state()
    if rs is not None and rs.head_name in ("", st.branch_ref):
        # --quit, not --abort: --abort checks out orig-head, a worktree rewrite the reset below
        # makes anyway (once). A start git was killed in can have left onto's new files: they
        # go with it (unless the person edited files since: then the reset below is all).
        dropped = rebase.half_started(rs) and not rebase.drop_half_started(repo, st)
        if not dropped:
            repo.rebase_quit()
    crash_point("abort-after-rebase")
    changes: dict[str, str | None] = {}
    for ref, sha in st.refs.items():
        if sha is not None and repo.rev_parse(ref) != sha:
            changes[ref] = sha
        elif sha is None and repo.rev_parse(ref) is not None:
            changes[ref] = None
    for info in repo.refs(f"{BACKUP_PREFIX}/{st.run}"):
        changes[info.name] = None
    # HEAD first (detached at its old commit when it was on a ref being deleted), refs second.
    if st.head_ref is None or repo.full_head_ref() in changes:
        repo.set_head(None, st.head_sha)
    repo.update_refs(changes)
    crash_point("abort-after-refs")
    repo.set_head(st.head_ref, st.head_sha)
    repo.reset_hard()
    repo.restore_config(decode_bytes(st.config_before), decode_bytes(st.config_after), [f"remote.{st.remote}"])
    state_path(repo).unlink(missing_ok=True)
    where = st.head_ref.removeprefix("refs/heads/") if st.head_ref else st.head_sha[:12]
    log(f"{st.repo}: aborted; refs, tags and config restored, HEAD back on {where}")
