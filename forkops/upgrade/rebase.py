"""Running ``git rebase`` and reading where it stands, including after a kill.

Every rebase runs with :data:`REBASE_CONFIG`, so the user's own settings cannot change what it
does. A stop is recorded (:class:`~forkops.upgrade.state.Stop`) the moment forkops sees it; a
stop git shows that forkops never recorded means forkops (or git) was killed mid-pick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forkops.errors import BadInput, GitError
from forkops.git import RebaseState, Repo
from forkops.upgrade.state import RepoState, Stop, save_state

# rebase.updateRefs would move other branches pointing into the stack (refs forkops never
# recorded, so --abort could not restore them); autoSquash/rebaseMerges reorder or keep commits
# `forkops check` does not predict; autoStash would hide a dirty worktree. rerere is on for the
# rebase only (no config change to undo) and never stages a remembered resolution unreviewed.
REBASE_CONFIG = ("-c", "rebase.updateRefs=false", "-c", "rebase.autoSquash=false",
                 "-c", "rebase.rebaseMerges=false", "-c", "rebase.autoStash=false",
                 "-c", "rerere.enabled=true", "-c", "rerere.autoUpdate=false")

_RERERE = re.compile(r"^(?:Resolved|Staged) '(.+)' using previous resolution\.$", re.M)


class RebaseRefused(Exception):
    """git refused to start the rebase and changed nothing (e.g. untracked files in the way)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def git_complaint(stderr: str) -> list[str]:
    """git's own reason from a refusal: its ``error:``/``fatal:`` lines with the paths listed
    under them, without the generic trailer ("could not detach HEAD")."""
    lines: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("\t") and lines:
            lines[-1] += ("" if lines[-1].endswith(":") else ",") + " " + line.strip()
        elif line.startswith(("error: ", "fatal: ")) and "could not detach HEAD" not in line:
            lines.append(line.split(": ", 1)[1].strip())
    return lines or [line for line in stderr.splitlines() if line.strip()][-1:] or ["no error output"]


def ours(repo: Repo, st: RepoState) -> RebaseState | None:
    """The rebase in progress when it is this run's (a rebase of another branch is refused)."""
    rs = repo.rebase_state()
    if rs is None:
        return None
    if rs.head_name not in ("", st.branch_ref):
        raise BadInput(f"{st.repo}: a rebase of {rs.head_name} is in progress in {repo.path} that forkops "
                       f"did not start; finish it or `git rebase --abort` first")
    return rs


def half_started(rs: RebaseState) -> bool:
    """git made its folder but was killed before it detached HEAD at onto: nothing was rebased.
    HEAD still on a branch says so; so does HEAD detached elsewhere than onto before the first
    pick (the person's HEAD was detached when the run began, and git had not moved it yet)."""
    return not rs.head_detached or not rs.head_name or (not rs.done and rs.head != rs.onto)


def half_finished(repo: Repo, rs: RebaseState) -> bool:
    """git picked everything and moved the branch to the result, then was killed before it put
    HEAD back on the branch (HEAD detached at the same commit) and removed its folder: every
    ``rebase --continue`` would fail ("cannot lock ref ... is at X but expected Y")."""
    return not rs.todo and rs.head_detached and bool(rs.head_name) and repo.rev_parse(rs.head_name) == rs.head


def finish_half_finished(repo: Repo, rs: RebaseState) -> None:
    """What git had left of finishing a :func:`half_finished` rebase: HEAD on the branch (which
    already holds HEAD's commit), the rebase's folder gone."""
    repo.set_head(rs.head_name, rs.head)
    repo.rebase_quit()


def skip_interrupted(st: RepoState, rs: RebaseState) -> str | None:
    """The commit the rebase still stands on when the person ran ``--skip`` on it (recorded
    before git ran): a kill came before git dropped it. None otherwise."""
    return next((c for c in st.skipped if rs.current and c.startswith(rs.current)), None)


def drop_half_started(repo: Repo, st: RepoState) -> list[str]:
    """Drop a rebase git was killed starting (:func:`half_started`) and what it had begun: a
    checkout of ``onto`` -- files written, new files untracked, the index moved -- without
    moving HEAD, which makes the worktree look modified so the rebase cannot start again. When
    HEAD is where the run found it, every file that differs from HEAD must hold HEAD's content
    or onto's (git's own writes; preflight saw a clean worktree): HEAD's index and files come
    back and onto's new files go. Otherwise nothing is done and those files are returned (the
    person's edits, never overwritten)."""
    tracked, untracked = repo.worktree_changes(untracked=True)
    changed = sorted(set(tracked) | set(untracked))
    ours = bool(changed) and repo.head() == st.head_sha
    foreign = repo.foreign_paths(changed, ("HEAD", st.onto_sha)) if ours else []
    if foreign:
        return foreign
    repo.rebase_quit()
    if ours:
        repo.reset_hard()
        _remove(repo, sorted(set(repo.worktree_changes(untracked=True)[1]) & set(changed)))  # onto's new files
    return []


def _remove(repo: Repo, paths: list[str]) -> None:
    """Delete the worktree files ``paths`` and the folders git made for them (left empty)."""
    for p in paths:
        path = repo.path / p
        path.unlink()
        for parent in path.parents:
            if parent == repo.path or any(parent.iterdir()):
                break
            parent.rmdir()


def redo_interrupted(repo: Repo, lost: Interrupted) -> None:
    """Have git pick ``lost`` again: what the killed git wrote goes (HEAD's index and files
    back, and the new files of the pick it had written into the worktree, which would make the
    pick fail again: "untracked working tree files would be overwritten"), then ``pick`` is put
    back at the front of the todo list. Nothing of the person's is there: no stop was shown."""
    repo.reset_hard()
    new_in_pick = set(repo.changed_paths([lost.commit])[lost.commit])
    added = [p for p in repo.worktree_changes(untracked=True)[1] if p in new_in_pick]
    foreign = set(repo.foreign_paths(added, (lost.commit,)))
    _remove(repo, [p for p in added if p not in foreign])
    repo.requeue_pick(lost.commit)


def run(repo: Repo, st: RepoState, args: list[str]) -> bool:
    """Run one ``git rebase`` command; True when the rebase finished, False when it stopped
    (the stop is recorded). Raises RebaseRefused when a starting rebase failed before it began."""
    from forkops.upgrade.machine import crash_point

    proc = repo.rebase(REBASE_CONFIG, *args)
    output = proc.stdout.decode("utf-8", "replace") + "\n" + proc.stderr.decode("utf-8", "replace")
    # git refuses with 1 or 128 (die); a signal (-N, or 128+N through a shell) killed it.
    killed = not 0 <= proc.returncode <= 128
    rs = repo.rebase_state()
    if rs is not None:
        # A killed git made no stop, unless it had merged the pick with conflicts: a pick it
        # died in is found as interrupted (interrupted_pick) and picked again, never taken for
        # a stop the person resolved by changing nothing.
        if not killed or repo.unmerged():
            record_stop(repo, st, rs, output)
        crash_point("after-rebase-stop")
        return False
    if proc.returncode != 0:
        starting = args[0] not in ("--continue", "--skip")
        # A kill is no refusal to report as bad input, and the branches stay for --continue.
        refused = not killed
        if starting and refused and repo.rev_parse(st.branch_ref) == st.start_sha:
            raise RebaseRefused(git_complaint(proc.stderr.decode("utf-8", "replace")))
        raise GitError(["rebase", *args], proc.returncode, output)
    return True


def record_stop(repo: Repo, st: RepoState, rs: RebaseState, output: str) -> None:
    """Record the stop git just made: its commit, unmerged paths, and those rerere resolved."""
    current = repo.full_sha(rs.current) if rs.current else None
    unmerged = sorted(repo.unmerged())
    # A stop without unmerged files (an empty commit, untracked files in the way): git's last
    # lines say why; with unmerged files, status lists them instead.
    st.notes = [] if unmerged else [ln for ln in output.splitlines() if ln.strip()][-3:]
    if current is not None:
        recorded = sorted(set(_RERERE.findall(output)) & set(unmerged))
        st.stops = [s for s in st.stops if s.commit != current] + [Stop(current, unmerged, recorded)]
    save_state(repo, st)


@dataclass(frozen=True)
class Interrupted:
    """A pick git recorded as done whose changes never reached the index (a kill mid-pick)."""

    commit: str


def interrupted_pick(repo: Repo, st: RepoState, rs: RebaseState) -> Interrupted | None:
    """Detect a pick that died: git lists it done, forkops never saw a stop there, nothing is
    unmerged, and either nothing is staged and HEAD is not already its result, or its changes
    are staged but git never wrote the stop's ``message`` (it died applying the pick; ``rebase
    --continue`` could not commit them: "could not read log file")."""
    if rs.current is None:
        return None
    current = repo.full_sha(rs.current)
    if current is None or repo.unmerged():
        return None
    if not repo.index_matches_head():
        # A stop always has its message (the person's resolution included); staged changes
        # without one are git's own, half-applied (a stop forkops recorded after git died too),
        # unless forkops showed unmerged files there: then they are the person's resolution of
        # a stop git was killed writing (the caller gives it its message back).
        stop = st.stop_for(current)
        return None if rs.has_message or (stop is not None and stop.paths) else Interrupted(current)
    if st.stop_for(current) is not None:
        return None
    head = repo.commit_infos(["HEAD", current])
    if len(head) == 2 and (head[0].ident, head[0].subject) == (head[1].ident, head[1].subject):
        return None  # killed after the commit: the pick is complete
    if not repo.changed_paths([current]).get(current):
        return None  # a commit without changes: nothing can be absent
    return Interrupted(current)


def position(repo: Repo, rs: RebaseState) -> tuple[str, str, int, int]:
    """(commit, subject, index, total) of where the rebase stands."""
    full = repo.full_sha(rs.current) if rs.current else None
    subject = repo.commit_infos([full])[0].subject if full else ""
    return full or (rs.current or ""), subject, rs.msgnum, rs.end
