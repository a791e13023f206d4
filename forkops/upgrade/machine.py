"""The phase table and what drives it: ``upgrade X.Y.Z``, ``--continue``, ``--skip``.

:data:`STEPS` maps each phase to its step; :func:`advance` runs one repository's steps from its
recorded phase until it finishes or a step stops for a person; :func:`drive` runs the
repositories of the run in order (TensorFlow, then Serving). Each command holds the workspace
lock (:mod:`forkops.lock`) for its whole duration.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from forkops.errors import BadInput, ExternalError, NeedsPerson
from forkops.git import Progress, Repo
from forkops.init import ensure_clone
from forkops.lock import workspace_lock
from forkops.upgrade import accounting, gates, planning, rebase, steps
from forkops.upgrade.preflight import check_startable, clear_stale_locks
from forkops.upgrade.state import (
    FailureKind,
    Phase,
    RepoState,
    RunState,
    Stop,
    active_run,
    backup_ref,
    encode_bytes,
    load_state,
    save_run,
    save_state,
)
from forkops.upgrade.status import Status, completion_report, status
from forkops.version import Version
from forkops.workspace import RepoConfig, Workspace

CRASH_ENV = "FORKOPS_TEST_CRASH_AT"  # test hook: SIGKILL ourselves at a named step

Log = Callable[[str], None]


def crash_point(name: str) -> None:
    """Test hook: die like ``kill -9`` at step ``name`` (FORKOPS_TEST_CRASH_AT=name)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Options:
    """What ``forkops upgrade X.Y.Z`` was asked to do."""

    version: Version
    repo: str | None = None
    start: str | None = None
    base: str | None = None
    branch: str | None = None
    push: bool = False
    force: bool = False
    force_with_lease: bool = False
    accept_recorded: bool = False  # no confirmation at stops recorded resolutions resolve


@dataclass(frozen=True)
class Outcome:
    """How a command left the run: ``state`` as in ``forkops status``."""

    report: Status

    @property
    def state(self) -> str:
        return self.report.state

    @property
    def stopped(self) -> bool:
        return self.report.needs_person


def _outcome(ws: Workspace) -> Outcome:
    return Outcome(status(ws))


# ---------------------------------------------------------------------------------------
# Recording: before anything moves
# ---------------------------------------------------------------------------------------
def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _record(repo: Repo, rc: RepoConfig, remote: str, p: planning.RepoPlan, run: RunState, log: Log) -> RepoState:
    """The state file, before anything moves: every ref the run may move with its value now,
    the tags it will create, the config file's bytes."""
    st = RepoState(
        run=run.id, repo=rc.name, version=run.version, phase=Phase.PREPARED, branch=p.branch, onto=p.onto,
        tag=str(p.tag), onto_sha=p.onto_sha, base=str(p.base), base_sha=p.base_sha, start=p.start,
        start_sha=p.start_sha, head_ref=p.head_ref, head_sha=p.head_sha, refs=dict(p.touched),
        picked=list(p.picked), new_tags=dict(p.new_tags), remote=remote, remote_url=rc.upstream,
        config_before=encode_bytes(repo.config_bytes()))
    save_state(repo, st)
    log(f"{st.repo}: upgrading to {st.version}: {st.branch} from {st.start} ({len(st.picked)} patches "
        f"on {st.base}), onto {st.onto} ({st.tag})")
    crash_point("after-backup")
    return st


def _plan_and_record(ws: Workspace, rc: RepoConfig, run: RunState, log: Log) -> RepoState:
    """Plan and record one repository (a run whose preparation was interrupted by a kill)."""
    repo = ensure_clone(rc)
    pb = ws.playbook(rc)
    p = planning.plan_repo(repo, rc, pb, _request(run))
    return _record(repo, rc, pb.upstream_remote, p, run, log)


def _request(run: RunState) -> planning.Request:
    return planning.Request(Version.parse(run.version), start=run.start, base=run.base, branch=run.branch,
                            force=run.force)


# ---------------------------------------------------------------------------------------
# The steps up to the end of the rebase (the later ones are in forkops.upgrade.steps)
# ---------------------------------------------------------------------------------------
def make_branches(ctx: steps.Ctx) -> Phase | None:
    repo, st = ctx.repo, ctx.st
    if not ctx.fresh:
        check_startable(repo, ctx.pb, st.repo)
    head = st.head_ref if ctx.fresh else repo.full_head_ref()
    if head in (st.onto_ref, st.branch_ref):
        # --force replaces a branch that is checked out: leave it first, so moving the ref
        # does not leave the worktree looking modified.
        repo.detach()
    # One transaction: the backups, the fetched tags and both branches move together or not at all.
    changes: dict[str, str | None] = {backup_ref(st.run, "HEAD"): st.head_sha}
    changes.update({backup_ref(st.run, ref): sha for ref, sha in st.refs.items() if sha})
    changes.update(st.new_tags)
    changes.update({st.onto_ref: st.onto_sha, st.branch_ref: st.start_sha})
    repo.update_refs(changes)
    # The documented flow's `git remote add tf`; its old values are in config_before.
    if repo.set_remote(st.remote, st.remote_url):
        st.config_after = encode_bytes(repo.config_bytes())
    crash_point("after-branches")
    return Phase.REBASING


def _back_to_prepared(ctx: steps.Ctx) -> None:
    """Undo the ``prepared`` -> ``rebasing`` step after git refused to start: the branches it
    made get their values from before the run back (or go), HEAD returns to where it was."""
    repo, st = ctx.repo, ctx.st
    repo.detach(st.head_sha)
    repo.update_refs({ref: sha for ref, sha in st.refs.items()
                      if ref.startswith("refs/heads/") and (sha is not None or repo.rev_parse(ref) is not None)})
    if st.head_ref is not None:
        repo.set_head(st.head_ref, st.head_sha)
    st.phase = Phase.PREPARED
    ctx.save()


def rebasing(ctx: steps.Ctx) -> Phase | None:
    repo, st = ctx.repo, ctx.st
    rs = rebase.ours(repo, st)
    if rs is not None and rebase.half_started(rs):
        # git died after making its folder, before it detached HEAD: nothing was rebased.
        foreign = rebase.drop_half_started(repo, st)
        if foreign:
            raise NeedsPerson(f"{st.repo}: git was killed as it began the rebase (checking out {st.onto}); "
                              f"{', '.join(foreign[:5])} hold neither {st.start}'s nor {st.onto}'s content",
                              hint=f"move those changes out of {repo.path} (e.g. `git stash -u`), then "
                                   f"`forkops upgrade --continue` starts the rebase again")
        ctx.log(f"{st.repo}: git was killed as the rebase began (nothing was rebased); starting it again")
        rs = None
    elif rs is not None and rebase.half_finished(repo, rs):
        rebase.finish_half_finished(repo, rs)
        ctx.log(f"{st.repo}: git was killed as it finished the rebase ({st.branch} was already moved); finished it")
        rs = None
    if rs is not None:
        action = ctx.take()
        if action is None:
            return None
        current = repo.full_sha(rs.current) if rs.current else None
        if (interrupted := rebase.skip_interrupted(st, rs)) is not None:
            # A kill came before git dropped it (its half-done reset makes `rebase --continue`
            # refuse): the skip is finished, past rerere's record of the stop it may have broken.
            ctx.log(f"{st.repo}: dropping {interrupted[:12]} (your --skip was interrupted)")
            repo.forget_rerere_stop()
            args = ["--skip"]
        elif action == "skip":
            if current and current not in st.skipped:
                st.skipped.append(current)
                ctx.save()
            args = ["--skip"]
        else:
            stop = st.stop_for(current) if current else None
            recorded = set(stop.recorded) if stop else set()
            left = sorted(p for p in repo.unmerged() if p not in recorded)
            if left:
                raise NeedsPerson(f"{st.repo}: unmerged files remain: {', '.join(left)}",
                                  hint=f"resolve them in {repo.path}, `git add` each, then "
                                       f"`forkops upgrade --continue`")
            # --continue is the person's word on the files marked recorded (resolved from a
            # recorded resolution, or by git's rerere): they are staged as they are now.
            confirmed = sorted(recorded & set(repo.unmerged()))
            if confirmed:
                repo.run("add", "--", *confirmed)
            lost = rebase.interrupted_pick(repo, st, rs)
            if lost is not None:
                # Its changes never reached the index: have git pick it again (a kill can have
                # left half-written files; nothing of the person's is there, no stop was shown).
                rebase.redo_interrupted(repo, lost)
                ctx.log(f"{st.repo}: the pick of {lost.commit[:12]} was interrupted; picking it again")
            else:
                problems = gates.staged_problems(repo, current)
                hits = gates.staged_key_hits(repo, gates.key_material(ctx.ws), [f"{st.base_sha}..{st.start_sha}"])
                if problems or hits:
                    what = "the key" if hits else "conflict markers or whitespace errors"
                    raise NeedsPerson(f"{st.repo}: the staged resolution holds {what}: "
                                      + "; ".join((hits + problems)[:10]),
                                      hint=f"fix the files in {repo.path}, `git add` them, then "
                                           f"`forkops upgrade --continue`")
                if current is not None and not rs.has_message and not repo.index_matches_head():
                    repo.restore_rebase_message(current)  # git was killed writing it at the stop
                if current is not None:
                    stop = st.stop_for(current)
                    if stop is None:
                        st.stops.append(Stop(current, [], [], resolved=True))
                    else:
                        stop.resolved = True
                    ctx.save()
                _record_resolutions(ctx)
            args = ["--continue"]
        ctx.log(f"{st.repo}: git rebase {args[0]}")
        if not rebase.run(repo, st, args):
            return _at_stop(ctx)
    elif (tip := st.start_sha if ctx.fresh else repo.rev_parse(st.branch_ref)) == st.start_sha:
        if ctx.action == "skip":
            raise BadInput(f"{st.repo}: nothing to skip: the rebase is not stopped on a commit")
        if not ctx.fresh:
            check_startable(repo, ctx.pb, st.repo)
        ctx.log(f"{st.repo}: git rebase --onto {st.onto} {st.base} {st.branch}")
        try:
            finished = rebase.run(repo, st, ["--merge", "--no-rerere-autoupdate", "--onto",
                                             st.onto_sha, st.base_sha, st.branch_ref.removeprefix("refs/heads/")])
        except rebase.RebaseRefused as exc:
            # Nothing was rebased: undo the branches made for it, so the refusal leaves the
            # repository as it was; the run waits in `prepared` for --continue or --abort.
            st.notes = [f"git refused to start the rebase: {'; '.join(exc.lines)}"]
            _back_to_prepared(ctx)
            untracked = any("untracked" in line for line in exc.lines)
            raise BadInput(
                f"{st.repo}: git refused to start the rebase: {'; '.join(exc.lines)}",
                hint=("move or remove those untracked files" if untracked else "fix what git names")
                + f" in {repo.path}, then `forkops upgrade --continue` (or `--abort`); "
                  f"{st.branch} and {st.onto} were not created") from None
        if not finished:
            return _at_stop(ctx)
    elif tip is None or not repo.is_ancestor(st.onto_sha, tip):
        raise NeedsPerson(f"{st.repo}: {st.branch} is at {str(tip)[:12]}, neither {st.start} nor rebased "
                          f"onto {st.tag}; it was moved outside forkops",
                          hint="`forkops upgrade --abort` restores every ref")
    elif ctx.action == "skip":
        raise BadInput(f"{st.repo}: nothing to skip: the rebase is not stopped on a commit")
    crash_point("after-rebase")
    return Phase.VERIFY


def _at_stop(ctx: steps.Ctx) -> Phase | None:
    """The rebase stopped: write the recorded resolutions (forkops.resolutions) of every file
    they fully resolve and mark those files recorded. With --accept-recorded and nothing else
    left, go on as --continue would; otherwise wait for the person (None)."""
    from forkops import resolutions

    repo, st = ctx.repo, ctx.st
    applied = resolutions.apply(ctx.ws, st.repo, repo)
    rs = repo.rebase_state()
    current = repo.commit_of(rs.current) if rs is not None and rs.current else None
    stop = st.stop_for(current) if current else None
    if stop is None:
        return None
    if applied:
        stop.recorded = sorted(set(stop.recorded) | {a.path for a in applied})
        ctx.save()
        for a in applied:
            where = ", ".join(f"{resolutions.DIRNAME}/{st.repo}/{i}.txt" for i in a.records)
            ctx.log(f"{st.repo}: {a.path}: resolved (recorded) from {where}")
    # Only forkops' own records (reviewed, committed data) go through unconfirmed; what git's
    # rerere resolved from this clone's private cache still waits for the person.
    if ctx.accept_recorded and applied and set(repo.unmerged()) <= {a.path for a in applied}:
        ctx.log(f"{st.repo}: every conflict at {current[:12] if current else '?'} is resolved (recorded); "
                "continuing (--accept-recorded)")
        ctx.action = "continue"
        return Phase.REBASING
    return None


def _record_resolutions(ctx: steps.Ctx) -> None:
    """At --continue: keep how the person resolved this stop in the workspace's resolutions/."""
    from forkops import resolutions

    repo, st = ctx.repo, ctx.st
    for r in resolutions.record(ctx.ws, st.repo, repo, onto=st.tag, pb=ctx.pb, material=gates.key_material(ctx.ws)):
        if r.status == "recorded":
            ctx.log(f"{st.repo}: {r.path}: resolution recorded in {resolutions.DIRNAME}/{st.repo}/{r.id}.txt "
                    "(commit it with forkops.toml)")
        elif r.status == "skipped":
            ctx.log(f"{st.repo}: {r.path}: resolution not recorded: {r.reason}")


# The phase table: each phase's step returns the next phase, or None when a person must act.
STEPS: dict[Phase, Callable[[steps.Ctx], Phase | None]] = {
    Phase.PREPARED: make_branches,
    Phase.REBASING: rebasing,
    Phase.VERIFY: steps.verify,
    Phase.ANCHORS: steps.check_anchors,
    Phase.PIN: steps.apply_pins,
    Phase.KEYS: steps.finish,
}


def _take_failure(ctx: steps.Ctx) -> bool:
    """A repository stopped after its rebase: --continue checks again, --skip drops what may be
    dropped (a pin, missing commits), on record. False: still waiting."""
    st = ctx.st
    assert st.failure is not None
    action = ctx.take()
    if action is None:
        return False
    if action == "skip":
        if st.failure.kind is FailureKind.PIN:
            name = str(st.failure.pin)
            st.pins_skipped.append(name)
            st.notes.append(f"pin {name} skipped (--skip): {st.failure.path} does not name "
                            f"{st.branch}; point it there by hand if the build needs it")
            ctx.log(f"{st.repo}: {st.notes[-1]}")
        elif st.failure.kind is FailureKind.MISSING and st.failure.missing and st.phase is not Phase.REBASING:
            steps.missing_accepted(ctx)
        else:
            raise BadInput(f"{st.repo}: nothing to skip: the upgrade stopped on a failed "
                           f"{'anchor' if st.failure.kind is FailureKind.ANCHOR else 'check'}, not on a "
                           f"commit; fix it on {st.branch} and commit, or --abort")
    st.failure = None
    ctx.save()
    return True


def advance(ctx: steps.Ctx) -> bool:
    """Move one repository forward from its recorded phase; True when it finished."""
    st = ctx.st
    if st.failure is not None and not _take_failure(ctx):
        return False
    while st.phase in STEPS:
        nxt = STEPS[st.phase](ctx)
        if nxt is None:
            ctx.save()
            return False
        st.phase = nxt
        ctx.save()
    return st.phase in (Phase.FINISHED, Phase.DONE)


def _died_under_us(outcome: Outcome) -> ExternalError:
    """A step waits, yet status has nothing for a person to do: git died under forkops (killed
    as a rebase began, or mid-pick). That is an external tool failing (exit 3), never success:
    exit 0 here once left a run with b2.18.0 still at b2.4.0 and Serving not started."""
    cur = outcome.report.current
    if cur is None:
        return ExternalError("git stopped without a conflict", hint="see `forkops status`")
    what = "; ".join(cur.notes) or f"git stopped the rebase of {cur.branch} without a conflict"
    return ExternalError(f"{cur.repo}: {what}", hint="; ".join(cur.next) or None)


def drive(ws: Workspace, run: RunState, action: str | None, log: Log, *,
          fresh: dict[str, RepoState] | None = None) -> Outcome:
    """Advance the run's repositories in order; stop at the first that needs a person.
    ``fresh``: the states this process planned and recorded just now."""
    fresh = dict(fresh or {})
    for name in run.repos:
        rc = ws.repo(name)
        repo = Repo(rc.path)
        st = fresh.get(name) or load_state(repo)
        if st is None or st.run != run.id:
            st = _plan_and_record(ws, rc, run, log)
            fresh[name] = st
            action = None
        elif st.phase in (Phase.FINISHED, Phase.DONE):
            continue  # the action (--continue/--skip) is for the repository that stopped
        ctx = steps.Ctx(ws, rc, repo, ws.playbook(rc), st, log, action, fresh=name in fresh,
                        accept_recorded=run.accept_recorded)
        if not advance(ctx):
            outcome = _outcome(ws)
            if not outcome.stopped:
                raise _died_under_us(outcome)
            return outcome
        action = None
        report = completion_report(repo, st)
        for line in [*report.lines(), *steps.completion_notes(ctx)]:
            log(f"{st.repo}: {line}")
    if run.push:
        from forkops.upgrade import publish  # only a run asked to push needs it

        crash_point("before-push")
        publish.push(ws, force_with_lease=run.force_with_lease, log=log, run=run)
    for name in run.repos:
        repo = Repo(ws.repo(name).path)
        st = load_state(repo)
        assert st is not None
        # The report below accounts for every branch of the run: do it before the run is marked
        # done, so that no git runs after the mark (a kill there could not be undone by --abort).
        accounting.account(repo, st)
        st.phase = Phase.DONE
        save_state(repo, st)
    run.phase = "done"
    save_run(ws, run)
    return _outcome(ws)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def start(ws: Workspace, opts: Options, *, log: Log = _quiet, progress: Progress | None = None) -> Outcome:
    """``forkops upgrade X.Y.Z``: plan every repository (all input checked, nothing written),
    record them all, then run them in order. Bad input for any repository moves nothing."""
    with workspace_lock(ws, f"forkops upgrade {opts.version}"):
        active = active_run(ws)
        if active is not None:
            raise BadInput(f"an upgrade to {active.version} is in progress; run `forkops upgrade --continue`, "
                           f"`--skip` or `--abort` (see `forkops status`)")
        configs = ws.select(opts.repo)
        run = RunState(id=_new_run_id(), version=str(opts.version), repos=[rc.name for rc in configs],
                       start=opts.start, base=opts.base, branch=opts.branch, push=opts.push, force=opts.force,
                       force_with_lease=opts.force_with_lease, accept_recorded=opts.accept_recorded)
        plans = []
        for rc in configs:
            repo = ensure_clone(rc, progress)
            pb = ws.playbook(rc)
            plans.append((rc, repo, pb.upstream_remote,
                          planning.plan_repo(repo, rc, pb, _request(run), progress=progress)))
        # The run file first, so a kill while recording leaves a run --continue and --abort know.
        save_run(ws, run)
        recorded = {rc.name: _record(repo, rc, remote, p, run, log) for rc, repo, remote, p in plans}
        return drive(ws, run, None, log, fresh=recorded)


def resume(ws: Workspace, *, skip: bool = False, push: bool = False, force_with_lease: bool = False,
           log: Log = _quiet) -> Outcome:
    """``--continue`` / ``--skip``: pick the run up wherever it stopped (or was killed)."""
    with workspace_lock(ws, f"forkops upgrade {'--skip' if skip else '--continue'}"):
        run = active_run(ws)
        if run is None:
            raise BadInput("no upgrade in progress (start one with `forkops upgrade X.Y.Z`)")
        for name in run.repos:
            repo = Repo(ws.repo(name).path)
            if repo.is_repo():
                clear_stale_locks(repo, name, log)
        if push or force_with_lease:
            run.push = run.push or push or force_with_lease
            run.force_with_lease = run.force_with_lease or force_with_lease
            save_run(ws, run)
        return drive(ws, run, "skip" if skip else "continue", log)


