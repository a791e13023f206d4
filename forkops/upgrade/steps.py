"""The phase steps after the rebase: verify, anchors, pins, keys.

Each step takes the :class:`Ctx` of one repository and returns the next phase, or None when it
stopped for a person (``ctx.st.failure`` then says why). Steps are idempotent: a step killed
halfway is run again by ``--continue``. forkops' own commits (re-applied anchors, pins) are made
without touching the worktree and then checked out (:meth:`Repo.move_checked_out`), with the
move written into the state first, so a kill between the two is finished, not refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forkops import anchors as anchors_mod
from forkops import pins as pins_mod
from forkops.errors import BadInput
from forkops.fsutil import write_atomic
from forkops.git import Repo
from forkops.playbook import Playbook
from forkops.upgrade import accounting, gates
from forkops.upgrade.preflight import dirty_paths
from forkops.upgrade.state import Failure, FailureKind, MissingCommit, Phase, RepoState, save_state
from forkops.workspace import RepoConfig, Workspace

Log = Callable[[str], None]


@dataclass
class Ctx:
    """One repository being driven: what a step needs."""

    ws: Workspace
    rc: RepoConfig
    repo: Repo
    pb: Playbook
    st: RepoState
    log: Log
    action: str | None = None  # "continue" | "skip" until a step consumes it
    accept_recorded: bool = False  # RunState.accept_recorded
    fresh: bool = False  # planned (all checked) by this very process: no need to check again
    # The branch tip this process verified (every stack commit accounted for, no key), until
    # forkops commits on the branch again: finish need not verify the same commits twice.
    verified: str | None = None

    def save(self) -> None:
        save_state(self.repo, self.st)

    def take(self) -> str | None:
        action, self.action = self.action, None
        return action


def on_branch_and_clean(ctx: Ctx) -> None:
    """The anchor and pin steps commit on the new branch: HEAD must be there, nothing pending."""
    st, repo = ctx.st, ctx.repo
    finish_pending_checkout(ctx)
    if ctx.fresh:
        return  # this process made the branch and the rebase left it clean and checked out
    if repo.full_head_ref() != st.branch_ref:
        raise BadInput(f"{st.repo}: HEAD is not on {st.branch}; check it out to continue "
                       f"(`git checkout {st.branch}`)")
    dirty = dirty_paths(repo)
    if dirty:
        raise BadInput(f"{st.repo}: uncommitted changes ({', '.join(dirty[:5])}); "
                       f"commit your fix on {st.branch}, then `forkops upgrade --continue`")


PENDING_NOTE = "pending checkout "


def finish_pending_checkout(ctx: Ctx) -> None:
    """A forkops commit whose checkout a kill interrupted (recorded in the notes) is finished."""
    st = ctx.st
    pending = [n for n in st.notes if n.startswith(PENDING_NOTE)]
    for note in pending:
        old, new = note.removeprefix(PENDING_NOTE).split("..")
        ctx.repo.move_checked_out(st.branch_ref, old, new)
        ctx.verified = None
        st.notes.remove(note)
        ctx.save()


def commit_file(ctx: Ctx, path: str, data: bytes, message: str) -> str:
    """Commit ``path`` = ``data`` on the new branch, gated: no conflict markers or whitespace
    errors the file did not have, no key."""
    repo, st = ctx.repo, ctx.st
    parent = repo.rev_parse("HEAD")
    assert parent is not None
    target = repo.path / path
    executable = target.exists() and bool(target.stat().st_mode & 0o100)
    new = repo.commit_file_change(parent, path, data, message, executable=executable)
    hits = gates.commit_key_hits(repo, gates.key_material(ctx.ws), [new, f"^{parent}"],
                                 [f"{st.base_sha}..{st.start_sha}"], by_path=False)
    if hits:
        raise _gate_failure(ctx, "the change forkops would commit holds the key; nothing was committed", hits)
    problems = gates.stack_problems(repo, parent, new, st.base_sha, st.start_sha)
    if problems:
        raise _gate_failure(ctx, f"{path}: forkops' own change has conflict markers or whitespace "
                                 f"errors; nothing was committed", problems)
    from forkops.upgrade.machine import crash_point

    st.notes.append(f"{PENDING_NOTE}{parent}..{new}")
    ctx.save()
    crash_point("before-own-commit")
    repo.move_checked_out(st.branch_ref, parent, new)
    ctx.verified = None
    st.notes.remove(f"{PENDING_NOTE}{parent}..{new}")
    ctx.save()
    return new


def _gate_failure(ctx: Ctx, message: str, lines: list[str]) -> Exception:
    from forkops.errors import NeedsPerson

    return NeedsPerson(f"{ctx.st.repo}: {message}: " + "; ".join(lines[:10]))


# ---------------------------------------------------------------------------------------
# verify: every stack commit accounted for; no commit of the run holds the key
# ---------------------------------------------------------------------------------------
def verify(ctx: Ctx) -> Phase | None:
    repo, st = ctx.repo, ctx.st
    acc = accounting.account(repo, st)
    st.dropped = [e.subject for e in acc.of(accounting.Fate.UPSTREAM)]
    st.emptied = [e.subject for e in acc.of(accounting.Fate.EMPTIED)]
    if not acc.contains_tag:
        st.failure = Failure(FailureKind.MISSING, f"{st.branch} does not contain {st.tag}: the rebase did not "
                                                  f"happen (a killed git?); `forkops upgrade --abort` and run again",
                             missing=[MissingCommit(e.sha, e.subject) for e in acc.entries])
        return None
    if acc.missing:
        shown = "; ".join(f"{e.sha[:12]} {e.subject!r}" for e in acc.missing)
        st.failure = Failure(FailureKind.MISSING,
                             f"{len(acc.missing)} commit(s) of the fork's stack are not on {st.branch} and "
                             f"were neither upstream, skipped nor emptied by a resolution: {shown}",
                             missing=[MissingCommit(e.sha, e.subject) for e in acc.missing],
                             lines=[accounting.restore_command(st, e) for e in acc.missing])
        return None
    hits = gates.commit_key_hits(repo, gates.key_material(ctx.ws),
                                 [f"^{st.start_sha}", f"^{st.onto_sha}", st.branch_ref],
                                 [f"{st.base_sha}..{st.start_sha}"])
    if hits:
        st.failure = Failure(FailureKind.KEY, f"a commit of this run holds the key: {hits[0]}", lines=hits)
        return None
    ctx.verified = acc.tip
    return Phase.ANCHORS


# ---------------------------------------------------------------------------------------
# anchors: check, and re-apply a patch left behind in a file upstream moved away from
# ---------------------------------------------------------------------------------------
def _reapply(ctx: Ctx, res: anchors_mod.AnchorResult) -> tuple[str | None, str]:
    """Merge the fork's change to the old file into the live one; (commit, detail). When the
    merge conflicts, its result with conflict markers is written into the live file in the
    worktree (nothing committed) for the person to resolve."""
    st = ctx.st
    assert res.path is not None
    done = anchors_mod.merge_into_live(ctx.repo, res, base=st.base_sha, start=st.start_sha, live="HEAD")
    if done.merged is None:
        return None, done.why
    if done.conflicts:
        write_atomic(ctx.repo.path / res.path, done.merged)
        return None, (f"{done.why}; the merge result with conflict markers is in {res.path}: resolve it there "
                      f"and commit (then `git rm {done.old}` if that copy is no longer compiled)")
    message = (f"Re-apply {res.name} patch to {res.path} (moved from {done.old})\n\n"
               f"Upstream moved the definition to {res.path}; the rebase left the fork's change in "
               f"{done.old}.\nforkops merged the change ({st.base}..{st.start}) into the new file.\n")
    return commit_file(ctx, res.path, done.merged, message), ""


def _anchor_failure(ctx: Ctx, res: anchors_mod.AnchorResult, detail: str) -> Failure:
    """The failure, with the fork commits whose change is missing and that change (masked:
    old-style forks commit the key in this very file; masked before it is shown or stored).
    The resolutions git recorded that dropped the patch are forgotten, so that rerere does not
    offer the same loss again."""
    st, pb = ctx.st, ctx.pb
    anchor = next(a for a in pb.anchors if a.name == res.name)
    changes = anchors_mod.fork_changes(ctx.repo, pb, anchor, base=st.base_sha, start=st.start_sha,
                                       version=pb.version_of_tag(st.base), material=gates.key_material(ctx.ws))
    forgotten = anchors_mod.forget_dropping_resolutions(ctx.repo, anchor)
    if forgotten:
        st.notes.append(f"forgot {len(forgotten)} recorded resolution(s) that dropped the {res.name} patch "
                        f"(git rerere would have offered them again)")
    commits = list({c.sha: MissingCommit(c.sha, c.subject) for c in changes}.values())
    change = "\n".join(f"# {c.sha[:12]} {c.subject} ({c.path})\n{c.diff}" for c in changes)[:8000]
    return Failure(FailureKind.ANCHOR, detail or res.detail, path=res.path, anchor=res.name,
                   defined_in=list(res.defined_in), patched_in=list(res.patched_in), change=change,
                   fork_commits=commits)


def check_anchors(ctx: Ctx) -> Phase | None:
    st, repo, pb = ctx.st, ctx.repo, ctx.pb
    on_branch_and_clean(ctx)
    version = st.parsed_version
    for res in anchors_mod.check_all(repo, "HEAD", pb.anchors, version):
        if res.ok:
            ctx.log(f"{st.repo}: anchor {res.name}: ok ({res.path})")
            _note_dead_copies(ctx, res)
            continue
        if not (res.left_behind and res.path):
            st.failure = _anchor_failure(ctx, res, "")
            return None
        commit, detail = _reapply(ctx, res)
        if commit is None:
            st.failure = _anchor_failure(ctx, res, detail)
            return None
        from forkops.upgrade.machine import crash_point

        crash_point("after-reapply")
        anchor = next(a for a in pb.anchors if a.name == res.name)
        again = anchors_mod.check(repo, "HEAD", anchor, version)
        if not again.ok or again.path != res.path:
            st.failure = _anchor_failure(ctx, again, f"re-applied to {res.path}, but: {again.detail}")
            return None
        st.reapplied.append({"anchor": res.name, "from": res.left_behind[0], "to": res.path, "commit": commit})
        ctx.log(f"{st.repo}: anchor {res.name}: re-applied the patch to {res.path} "
                f"(moved from {res.left_behind[0]}) in {commit[:12]}")
        _note_dead_copies(ctx, again)
    return Phase.PIN


DRIFT_NOTE = "api drift: "


def completion_notes(ctx: Ctx) -> list[str]:
    """What the finished branch still deserves a look for: the patched copies that are dead
    code (with the `git rm` command) and API drift (the fork's lines use names upstream's tag
    no longer has: the branch rebased cleanly but will not build). Kept in the notes, so
    ``forkops status`` shows them too."""
    from forkops import drift

    st = ctx.st
    found = [f"{DRIFT_NOTE}{d.describe()}; {st.tag} no longer has it"
             for d in drift.find(ctx.repo, ctx.pb, st.base_sha, st.branch_ref, st.tag_ref)]
    if new := [n for n in dict.fromkeys(found) if n not in st.notes]:
        st.notes.extend(new)
        ctx.save()  # nothing new: the state on disk already says all of it
    return [n for n in st.notes if n.startswith(DRIFT_NOTE) or DEAD_COPY_MARK in n]


DEAD_COPY_MARK = "a patched copy stays in "


def _note_dead_copies(ctx: Ctx, res: anchors_mod.AnchorResult) -> None:
    """A patched copy that is not the live definition is dead code: say so, with the command
    (the note is shown at completion and by `forkops status`)."""
    for dead in res.dead_copies:
        note = (f"{res.name}: {DEAD_COPY_MARK}{dead}, which is not the live definition ({res.path}); "
                f"if it is no longer compiled: git -C {ctx.repo.path} rm {dead} && git -C {ctx.repo.path} commit")
        if note not in ctx.st.notes:
            ctx.st.notes.append(note)
            ctx.save()


# ---------------------------------------------------------------------------------------
# pins: Serving's TensorFlow pin names the new branch
# ---------------------------------------------------------------------------------------
def apply_pins(ctx: Ctx) -> Phase | None:
    """Move every pin to the new branch (one commit each). Re-run by --continue: a pin already
    right is left alone, one fixed by hand is accepted."""
    st, repo, pb = ctx.st, ctx.repo, ctx.pb
    on_branch_and_clean(ctx)
    version = st.parsed_version
    for pin in pb.pins:
        if pin.name in st.pins_skipped:
            continue
        blob = repo.show_file("HEAD", pin.file)
        if blob is None:
            st.failure = Failure(FailureKind.PIN, f"pin {pin.name}: {pin.file} does not exist on {st.branch}; add "
                                                  f"it by hand and commit, or `forkops upgrade --skip` to finish "
                                                  f"without it", path=pin.file, pin=pin.name)
            return None
        # Any bytes round-trip: a WORKSPACE is not guaranteed to be UTF-8.
        edit = pins_mod.apply(pb, pin, version, blob.decode("utf-8", "surrogateescape"))
        if edit.skip is not None:
            if edit.skip not in st.notes:
                st.notes.append(edit.skip)
            ctx.log(f"{st.repo}: pin {pin.name}: {edit.skip}")
            continue
        # The pin names the fork branch by its bX.Y.Z name; with --branch NAME it names NAME.
        wanted = edit.wanted.replace(str(pb.fork_branch_name(version)), st.branch)
        if not edit.ok:
            what = (f"{pin.name} is a {edit.rule}, not pinned to a branch of the fork" if edit.rule
                    else f"no rule named {pin.name}")
            st.failure = Failure(FailureKind.PIN, f"pin {pin.name}: {pin.file} has no match for /{pin.pattern}/ "
                                                  f"({what}); point it at {wanted} by hand and commit, then "
                                                  f"--continue; or `forkops upgrade --skip` to finish without "
                                                  f"this pin", path=pin.file, pin=pin.name)
            return None
        if edit.found == wanted:
            ctx.log(f"{st.repo}: pin {pin.name} already names {wanted}")
            continue
        text = blob.decode("utf-8", "surrogateescape")
        m = pin.regex.search(text)
        assert m is not None
        new_text = text[:m.start("value")] + wanted + text[m.end("value"):]
        commit = commit_file(ctx, pin.file, new_text.encode("utf-8", "surrogateescape"),
                             f"Pin {pin.name} to {wanted} (was {edit.found})\n\n"
                             f"forkops upgrade {st.version}: {pin.file} now builds against {wanted}.\n")
        st.pinned.append({"pin": pin.name, "file": pin.file, "from": edit.found or "", "to": wanted,
                          "commit": commit})
        ctx.save()
        ctx.log(f"{st.repo}: pin {pin.name}: {edit.found} -> {wanted} in {commit[:12]}")
        from forkops.upgrade.machine import crash_point

        crash_point("after-pin")
    return Phase.KEYS


# ---------------------------------------------------------------------------------------
# keys: last look at the whole run, then the key into the worktree (never committed)
# ---------------------------------------------------------------------------------------
def finish(ctx: Ctx) -> Phase | None:
    st, repo, pb = ctx.st, ctx.repo, ctx.pb
    # The anchor and pin commits are the run's too: the invariant once more, unless this process
    # verified the branch and has not committed on it since.
    if ctx.verified is None and verify(ctx) is None:
        return None
    if pb.key_sites:
        material = gates.key_material(ctx.ws)
        if material is not None:
            from forkops.keys import write_sites

            sites = write_sites(repo.path, pb, material)
            ctx.log(f"{st.repo}: key {material.key_fingerprint} written to {len(sites)} key sites "
                    f"(working tree only)")
    return Phase.FINISHED


def missing_accepted(ctx: Ctx) -> None:
    """``--skip`` at a missing-commit stop: the person drops those commits, on record."""
    st = ctx.st
    assert st.failure is not None
    for m in st.failure.missing:
        if m.sha not in st.skipped:
            st.skipped.append(m.sha)
        st.notes.append(f"dropped {m.sha[:12]} {m.subject!r} (--skip after it went missing)")
