"""The crash sweep (issue 10): kill forkops, or git itself, at its git calls across a whole
two-fork upgrade (``upgrade 2.18.0``: TensorFlow stops on ``.bazelrc``, Serving twice; each stop
resolved, ``--continue`` to the end), then check for every kill point:

(a) ``forkops status`` (text and ``--json``) exits without a traceback and tells the truth (the
    unmerged files it lists are git's; "done" only when the branches are what an unkilled run makes);
(b) ``forkops upgrade --abort`` restores refs, HEAD, tags, local git config, the worktree and
    git's operation files byte-identically to before the run;
(c) on a copy, resolve-and-``--continue`` reaches the same branches, trees and subjects as the
    unkilled run, or stops with exit 1 naming each missing commit (sha and subject).

Kill points come from one unkilled, traced reference run (tests/crashkit.py): ``before`` each git
call where the state differs from the previous call's, ``during`` and ``killgit`` at every git
call that changes a repository, ``rename`` at every rename git makes (strace). Each mode has a
fixed number of slots; slot i takes the i-th point of a round-robin over phases (forkops command
x repository x git subcommand), so every phase is covered first. ``CRASHKIT_SLOTS=N`` raises the
slots per mode (``CRASHKIT_SLOTS=999`` tries every point). The outcomes are counted at the end of
the run (``crash sweep:`` line in the terminal summary).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forkops.sandbox import Sandbox
from tests import crashkit

DEFAULT_SLOTS = {"before": 9, "during": 9, "killgit": 6, "rename": 9}
_ASKED = os.environ.get("CRASHKIT_SLOTS")
SLOTS = {mode: int(_ASKED) if _ASKED else n for mode, n in DEFAULT_SLOTS.items()}


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> crashkit.Reference:
    # Under pytest-xdist the parent of a worker's base folder is this run's and shared by its
    # workers: one builds the reference, the others wait for it.
    base = tmp_path_factory.getbasetemp()
    return crashkit.load_reference((base if worker_id == "master" else base.parent) / "crash-reference")


# Kill points the engine still fails at (crash-findings.md); the slot -> point mapping is fixed
# for a given engine, so a fix turns these into XPASS (strict): then remove the entry.
KNOWN: dict[tuple[str, int], str] = {}  # (mode, slot) -> the finding, e.g. ("killgit", 4): "..."
# Points that failed intermittently and could not be reproduced at will: they still run and count in
# the sweep's summary line, but a pass is not required (xfail, not strict). Each is an open finding.
INTERMITTENT: dict[tuple[str, int], str] = {}  # (mode, slot) -> the finding


def _params() -> list[object]:
    out: list[object] = []
    for m in crashkit.MODES:
        for i in range(SLOTS[m]):
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[(m, i)])] if (m, i) in KNOWN else []
            if (m, i) in INTERMITTENT:
                marks = [pytest.mark.xfail(strict=False, reason=INTERMITTENT[(m, i)])]
            out.append(pytest.param(m, i, id=f"{m}-{i:03d}", marks=marks))
    return out


@pytest.mark.parametrize(("mode", "slot"), _params())
def test_kill_point(reference: crashkit.Reference, mode: str, slot: int, tmp_path: Path,
                    record_property: Callable[[str, object], None]) -> None:
    if mode == "rename" and not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    points = reference.ordered(mode)
    if slot >= len(points):
        pytest.skip(f"{mode}: only {len(points)} distinct kill points")
    call, rename = points[slot]
    outcome = crashkit.evaluate(reference, mode, call, rename, tmp_path)
    record_property("crash", json.dumps(dataclasses.asdict(outcome)))
    argv = " ".join(reference.calls[call - 1])
    where = f"a {mode} kill at git call {call}" + (f" (rename {rename})" if rename else "")
    if not outcome.fired and mode in ("killgit", "rename"):
        pytest.skip(f"{where} did not happen this time (git finished first, or made fewer renames)")
    assert outcome.fired, f"{where} never happened"
    assert outcome.acceptable, (f"{', '.join(outcome.kinds)} after {where}, {outcome.phase}: git {argv}\n"
                                + "\n".join(f"{k}: {d}" for k, d in outcome.findings))


# git 2.39's `rebase --merge --onto` begins: [index refresh], mkdir rebase-merge, its state files
# (head-name, onto, orig-head, ...), git-rebase-todo and its backup (lock + rename each), the
# checkout of onto (worktree files, then index.lock -> index), ORIG_HEAD, and last HEAD detached
# at onto. git killed anywhere before that last step leaves HEAD on the old branch, b2.18.0 at
# the start commit and possibly half of onto in the worktree/index. Each case kills git at one
# of those steps, found by path (strace -P), so the state is the same on every run, however
# loaded the machine (the sweep's killgit-002 reached these states only under heavy load).
START_STATES = {
    # rebase-merge half written (no todo); worktree untouched
    "todo": ("rename", "{git}/rebase-merge/git-rebase-todo.lock", "rebase-merge/git-rebase-todo.lock"),
    # the checkout of onto half done: some files onto's, its new files untracked, index.lock left
    "checkout": ("openat", "{last_new}", "index.lock"),
    # index and worktree are onto's, HEAD still on the old branch
    "orig-head": ("rename", "{git}/ORIG_HEAD.lock", "ORIG_HEAD.lock"),
    # ... and ORIG_HEAD written: killed as it detaches HEAD
    "head": ("rename", "{git}/HEAD.lock", "HEAD.lock"),
}


@pytest.mark.parametrize(("repo", "state"), [
    *(("tensorflow", s) for s in START_STATES), ("serving", "orig-head"), ("serving", "checkout")])
def test_git_killed_as_the_rebase_begins(reference: crashkit.Reference, tmp_path: Path, repo: str,
                                         state: str) -> None:
    """The command that met the kill never exits 0 (TensorFlow not rebased, Serving not even
    started: the old killgit-002 exited 0 with b2.18.0 = b2.4.0); status, --abort and
    resolve-and-continue then pass every check of the sweep."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, 0), tmp_path / "killed")
    clone = sb.clone(repo)
    tag = "v2.18.0" if repo == "tensorflow" else "2.18.0"
    new = set(crashkit.git(sb.upstream[repo], "ls-tree", "-r", "--name-only", tag).splitlines())
    new -= set(crashkit.git(clone, "ls-tree", "-r", "--name-only", "b2.4.0").splitlines())
    syscall, path, left = START_STATES[state]
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=crashkit.REPOS.index(repo) + 1, k=1,
                             match="* rebase *--onto *", syscall=syscall,
                             path=path.format(git=clone / ".git", last_new=max(new)))
    runs = crashkit.run_flow(killer, sb, ["upgrade", crashkit.VERSION])
    assert killer.fired, runs
    # the state this case is about (else the test proves nothing)
    git_dir = clone / ".git"
    assert (git_dir / "rebase-merge").is_dir() and (git_dir / left).exists(), (state, runs[-1])
    assert (git_dir / "HEAD").read_text() == "ref: refs/heads/b2.4.0\n"
    assert crashkit.git(clone, "rev-parse", "b2.18.0") == crashkit.git(clone, "rev-parse", "b2.4.0")
    assert runs[-1].code != 0, f"exit 0 while {repo}'s b2.18.0 is still b2.4.0:\n{runs[-1]}"
    how, findings = crashkit.judge(reference, sb, runs, tmp_path)
    assert not findings, "\n".join(f"{k}: {d}" for k, d in findings)
    assert how == "done", how



@pytest.mark.parametrize("state", START_STATES)
def test_git_killed_as_the_rebase_begins_on_a_detached_head(reference: crashkit.Reference, tmp_path: Path,
                                                            state: str) -> None:
    """The same kills when the person's HEAD was detached as the run began: git leaves HEAD
    detached where it was, which says no less that nothing was rebased. (It was taken for a
    rebase in progress: --continue had git "finish" a rebase that never checked out onto.)
    The command never exits 0; status says git was killed as the rebase began; --abort
    restores the clone byte for byte; resolve-and-continue ends as the unkilled run does."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, 0), tmp_path / "killed")
    clone = sb.clone("tensorflow")
    crashkit.git(clone, "checkout", "--quiet", "--detach", "b2.4.0")
    start = crashkit.git(clone, "rev-parse", "b2.4.0").strip()
    before = crashkit.normalise(crashkit.snapshot(clone), sb.root)
    new = set(crashkit.git(sb.upstream["tensorflow"], "ls-tree", "-r", "--name-only", "v2.18.0").splitlines())
    new -= set(crashkit.git(clone, "ls-tree", "-r", "--name-only", "b2.4.0").splitlines())
    syscall, path, left = START_STATES[state]
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=1, match="* rebase *--onto *",
                             syscall=syscall, path=path.format(git=clone / ".git", last_new=max(new)))
    runs = crashkit.run_flow(killer, sb, ["upgrade", crashkit.VERSION])
    assert killer.fired, runs
    git_dir = clone / ".git"
    assert (git_dir / "rebase-merge").is_dir() and (git_dir / left).exists(), (state, runs[-1])
    assert (git_dir / "HEAD").read_text().strip() == start
    assert runs[-1].code != 0, runs[-1]
    said = crashkit.forkops(sb.workspace, "status")
    assert said.code == 0 and "git was killed as the rebase of b2.18.0 began" in said.out, said
    resumed = crashkit.copy_sandbox(sb, tmp_path / "resumed")
    aborted = crashkit.forkops(sb.workspace, "upgrade", "--abort")
    assert aborted.code == 0, aborted
    after = crashkit.normalise(crashkit.snapshot(clone), sb.root)
    assert isinstance(before, dict) and isinstance(after, dict)
    assert crashkit.snapshot_diff(before, after) == []
    how, runs = crashkit.finish(resumed)
    assert how == "done", runs
    assert {n: crashkit.normalise(crashkit.result_of(resumed.clone(n)), resumed.root)
            for n in crashkit.REPOS} == reference.result


# Inside a rebase that picks several commits, git 2.39 renames per pick: the todo list, the
# pick's author-script, the index (after writing the pick's files into the worktree), MERGE_MSG,
# CHERRY_PICK_HEAD, HEAD (the commit); at the end the branch's ref, then HEAD onto the branch.
# Each case kills git at one of those renames, found in a traced run of the same command.
INSIDE_PICKS = {
    # pick 2 ("Add cryptfile tool": new files) listed done, nothing applied: it was taken for a
    # stop the person resolved by changing nothing, and lost
    "author-script": (0, "rebase --merge", "rebase-merge/author-script.lock", 2),
    # its files written into the worktree, not into the index: every re-pick failed on them
    # ("untracked working tree files would be overwritten")
    "index": (0, "rebase --merge", "index.lock", 2),
    # every pick done and the branch moved, HEAD not yet back on it: every --continue failed
    # ("cannot lock ref ... is at X but expected Y")
    "finish": (1, "rebase --continue", "HEAD.lock", 0),
}


def _renamed(kit: Path, call: int) -> list[tuple[str, str]]:
    """(process, lock name) of each file git call ``call`` of a traced flow renamed, in order
    (``rebase --continue`` commits a resolved stop in a child ``git commit``)."""
    return re.findall(r'^(\d+) +rename\("([^"]+)"', (kit / f"renames.{call}").read_text(), re.M)


@pytest.mark.parametrize("where", INSIDE_PICKS)
def test_git_killed_inside_the_picks(reference: crashkit.Reference, tmp_path: Path, where: str) -> None:
    """TensorFlow's rebase, git killed between the steps of a pick or of finishing (the
    every-point sweep's silent losses and stuck runs of round 4): the command exits 3, not 1 (no
    stop for a person); status, --abort and resolve-and-continue pass every check of the sweep."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    step, command, lock, pick = INSIDE_PICKS[where]
    traced = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / "traced")
    tracer = crashkit.Killer(tmp_path / "trace", mode="trace")
    tracer.forkops(traced.workspace, *reference.steps[step])
    call = next(n for n, argv in enumerate(tracer.calls(), 1) if command in " ".join(argv))
    renamed = _renamed(tmp_path / "trace", call)
    if pick:  # the pick's own rename: after its author-script
        picks = [i for i, (_pid, p) in enumerate(renamed) if p.endswith("rebase-merge/author-script.lock")]
        at = next(i for i in range(picks[pick - 1], len(renamed)) if renamed[i][1].endswith("/" + lock))
    else:  # the last one
        at = max(i for i, (_pid, p) in enumerate(renamed) if p.endswith("/" + lock))
    k = renamed[:at + 1].count(renamed[at])  # strace counts each process's calls apart
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / "killed")
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=k, match=f"* {command} *",
                             path=renamed[at][1].replace(str(traced.root), str(sb.root)))
    runs = crashkit.run_flow(killer, sb, reference.steps[step])
    assert killer.fired, runs
    assert runs[-1].code == 3, runs[-1]
    how, findings = crashkit.judge(reference, sb, runs, tmp_path)
    assert not findings, "\n".join(f"{k}: {d}" for k, d in findings)
    assert how == "done", how


def test_an_edit_after_a_killed_start_is_never_overwritten(reference: crashkit.Reference, tmp_path: Path) -> None:
    """git killed as TensorFlow's rebase began (index and worktree onto's, HEAD on b2.4.0), then
    the person edits a file onto changed: --continue must not undo git's checkout over that
    edit. It stops (exit 1) naming the file, the edit intact; stashed away, the run resumes."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, 0), tmp_path / "killed")
    tf = sb.clone("tensorflow")
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=1, match="* rebase *--onto *",
                             path=str(tf / ".git" / "ORIG_HEAD.lock"))
    first = killer.forkops(sb.workspace, "upgrade", crashkit.VERSION)
    assert killer.fired and first.code not in (0, 1), first
    readme = tf / "README.md"
    assert readme.read_bytes() != crashkit.git(tf, "show", "b2.4.0:README.md").encode()  # onto's now
    edited = readme.read_text() + "the person's note, written after the kill\n"
    readme.write_text(edited)
    res = crashkit.forkops(sb.workspace, "upgrade", "--continue")
    assert res.code == 1 and "README.md" in res.text and not crashkit.traceback_in(res.text), res
    assert readme.read_text() == edited
    crashkit.git(tf, "stash", "--include-untracked")  # what the person is told to do
    how, runs = crashkit.finish(sb)
    assert how == "done", runs
    assert {n: crashkit.normalise(crashkit.result_of(sb.clone(n)), sb.root) for n in crashkit.REPOS} == reference.result


@pytest.mark.parametrize("repo", crashkit.REPOS)
def test_git_killed_writing_the_stop_message(reference: crashkit.Reference, tmp_path: Path, repo: str) -> None:
    """git killed at the rename of ``rebase-merge/message.lock`` as it stops on the first conflict
    (conflicted index written, message not): forkops shows the stop, the person resolves it; the
    resolution is committed (never thrown away for a re-pick, never a loop of re-picks that git's
    left-over message.lock keeps failing; the sweep's rename points 18 and 19 with
    CRASHKIT_SLOTS=23, finding A of round 2)."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    step = 0 if repo == "tensorflow" else 1  # the command whose rebase --onto stops first
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / "killed")
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=1, match="* rebase *--onto *",
                             path=str(sb.clone(repo) / ".git" / "rebase-merge" / "message.lock"))
    runs = crashkit.run_flow(killer, sb, reference.steps[step])
    assert killer.fired, runs
    how, findings = crashkit.judge(reference, sb, runs, tmp_path)
    assert not findings, "\n".join(f"{k}: {d}" for k, d in findings)
    assert how == "done", how


@pytest.mark.parametrize("repo", crashkit.REPOS)
def test_git_killed_checking_out_forkops_own_commit(reference: crashkit.Reference, tmp_path: Path,
                                                    repo: str) -> None:
    """git killed at the one rename of the ``read-tree -m -u`` that checks out forkops' own
    commit (TensorFlow's re-applied anchor, Serving's pin): the new file is in the worktree, the
    index still has the old entry. ``--continue`` finishes that checkout instead of failing
    "Entry ... not uptodate. Cannot merge." (exit 3) on every run (finding B of round 2)."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    call = next(n for n, argv in enumerate(reference.calls, 1)
                if reference.phase(n)[1] == repo and argv[argv.index("-C") + 2:][:3] == ["read-tree", "-m", "-u"])
    outcome = crashkit.evaluate(reference, "rename", call, 1, tmp_path)
    assert outcome.fired, outcome
    assert outcome.acceptable, "\n".join(f"{k}: {d}" for k, d in outcome.findings)


def test_reference_covers_the_whole_flow(reference: crashkit.Reference) -> None:
    """The sweep's reference is the whole flow: both forks, three stops, both rebases."""
    if crashkit.RECORDED:
        pytest.skip("CRASHKIT_RECORDED: recorded resolutions take the flow past two of its stops")
    assert len(reference.steps) == 4, reference.steps
    phases = {reference.phase(n)[1:] for n in range(1, len(reference.calls) + 1)}
    assert {("tensorflow", "rebase"), ("serving", "rebase")} <= phases
    serving = reference.result["serving"]
    assert isinstance(serving, dict)
    assert serving["stack"][-1] == "Pin org_tensorflow to b2.18.0 (was b2.4.0)"
    for mode in ("before", "during", "killgit"):
        assert reference.candidates(mode), mode


# ---------------------------------------------------------------------------------------------
# Kills during --abort itself
# ---------------------------------------------------------------------------------------------
ABORT_SLOTS = 3 if not _ASKED else int(_ASKED)  # kill points per mode; CRASHKIT_SLOTS=999: all


def _kill_points(tracer: crashkit.Killer, calls: list[list[str]], slots: int,
                 modes: tuple[str, ...] = crashkit.MODES) -> list[tuple[str, int, int]]:
    """(mode, call, rename) of a traced command: ``slots`` per mode, spread over the command."""
    points = {
        "before": [(n, 0) for n in range(1, len(calls) + 1)],
        "during": [(n, 0) for n, argv in enumerate(calls, 1) if crashkit.mutates(argv)],
        "killgit": [(n, 0) for n, argv in enumerate(calls, 1) if crashkit.mutates(argv)],
        "rename": [(n, k) for n in range(1, len(calls) + 1) for k in range(1, tracer.renames(n) + 1)]
        if crashkit.strace_works() else [],
    }
    return [(mode, call, k) for mode, found in points.items() if mode in modes
            for call, k in crashkit.spread(found)[:slots]]


def _killed_runs(reference: crashkit.Reference, step: int, tmp_path: Path, *args: str,
                 modes: tuple[str, ...] = crashkit.MODES) -> Iterator[tuple[str, Sandbox, crashkit.Run]]:
    """Trace ``forkops ARGS`` from checkpoint ``step``, then run it again killed at each of its
    kill points (:func:`_kill_points`, ABORT_SLOTS per mode): (where, the killed sandbox, the
    killed command) for each kill that happened."""
    traced = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / "traced")
    tracer = crashkit.Killer(tmp_path / "trace", mode="trace")
    assert tracer.forkops(traced.workspace, *args).code in (0, 1)
    calls = tracer.calls()
    for mode, call, k in _kill_points(tracer, calls, ABORT_SLOTS, modes):
        name = f"{mode}-{call}-{k}"
        sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / name)
        killer = crashkit.Killer(tmp_path / f"kit-{name}", mode=mode, at=call, k=k)
        first = killer.forkops(sb.workspace, *args)
        if killer.fired:
            yield (f"{mode} at {' '.join(args[1:])}'s git call {call} ({crashkit.subcommand(calls[call - 1])})"
                   + (f", rename {k}" if k else ""), sb, first)


def _not_restored(reference: crashkit.Reference, sb: Sandbox) -> list[str]:
    """What differs in the clones from before the run (refs, HEAD, tags, config, worktree,
    git's operation and lock files)."""
    out = []
    for name in crashkit.REPOS:
        before, after = reference.before[name], crashkit.normalise(crashkit.snapshot(sb.clone(name)), sb.root)
        assert isinstance(before, dict) and isinstance(after, dict)
        out += [f"{name}: {d}" for d in crashkit.snapshot_diff(before, after)]
    return out


def test_kill_during_abort_then_abort_again(reference: crashkit.Reference, tmp_path: Path) -> None:
    """``--abort`` of the flow's last stop (TensorFlow finished with its re-applied anchor,
    Serving stopped), killed at its git calls: forkops before or while each call, git itself
    during one, git at its renames. Then ``status`` explains without a traceback and the next
    ``--abort`` restores both clones byte for byte to before the run. ABORT_SLOTS points per
    mode, spread over the command; ``CRASHKIT_SLOTS=999`` tries every one (45)."""
    tried, failures = 0, []
    for where, sb, first in _killed_runs(reference, len(reference.steps) - 1, tmp_path, "upgrade", "--abort"):
        tried += 1
        said = crashkit.forkops(sb.workspace, "status")
        again = crashkit.forkops(sb.workspace, "upgrade", "--abort")
        if crashkit.traceback_in(first.err if first.code != -9 else "") or crashkit.traceback_in(said.text):
            failures.append(f"{where}: a traceback: {first} {said}")
        if again.code != 0 or crashkit.traceback_in(again.text):
            failures.append(f"{where}: the next --abort failed: {again}")
        failures += [f"{where}: not restored: {d}" for d in _not_restored(reference, sb)]
    assert tried >= 4, tried
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Kills during --skip
# ---------------------------------------------------------------------------------------------
def test_an_interrupted_skip_is_finished_past_unreadable_rerere_state(reference: crashkit.Reference,
                                                                     tmp_path: Path) -> None:
    """``--skip`` killed before git dropped the commit, and rerere's record of that stop left
    unreadable (written here by hand: ``MERGE_RR`` cut short, which makes every ``git rebase
    --skip`` die "corrupt MERGE_RR" -- the state CI once met after a killed --skip): the next
    ``--continue`` drops rerere's record of the skipped stop and finishes the skip."""
    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    sb = crashkit.copy_sandbox(crashkit.checkpoint(reference, 1), tmp_path / "killed")
    tf = sb.clone("tensorflow")
    merge_rr = tf / ".git" / "MERGE_RR"
    recorded = merge_rr.read_bytes()  # rerere's record of the .bazelrc conflict at this stop
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=1, match="* rebase --skip*",
                             path=str(tf / ".git" / "index.lock"))
    first = killer.forkops(sb.workspace, "upgrade", "--skip")
    assert killer.fired and first.code == 3, first
    merge_rr.write_bytes(recorded[:12])
    how, runs = crashkit.finish(sb)
    assert how == "done", runs
    assert "Link Crypto++ and define the model key" not in crashkit.current_stack(tf)


def test_kill_during_skip(reference: crashkit.Reference, tmp_path: Path) -> None:
    """``--skip`` at TensorFlow's stop (the person drops "Link Crypto++"), killed at its git
    calls (``CRASHKIT_SLOTS=999``: every one, 135). Then ``status`` explains without a traceback
    and names a next step; ``--abort`` restores both clones byte for byte; and on a copy,
    driving the run to its end as a person would (from what status says) loses no commit: the
    result is the unkilled skip's, or, killed before forkops recorded the skip, it keeps that
    commit (the person's --continue commits their resolution).

    ``killgit`` (git killed at a moment that depends on the machine's load) runs only with
    CRASHKIT_SLOTS: once in CI it left rerere's state such that every later ``git rebase
    --skip`` failed, leaving MERGE_RR.lock. A corrupt MERGE_RR does that; forkops now drops
    rerere's record of a skipped stop before finishing the skip (the test above), but the
    killed state itself was not reproduced in 11 tries."""
    step = 1  # TensorFlow stopped on .bazelrc, resolved: --skip drops it anyway
    unkilled = crashkit.copy_sandbox(crashkit.checkpoint(reference, step), tmp_path / "unkilled")
    assert crashkit.forkops(unkilled.workspace, "upgrade", "--skip").code in (0, 1)
    how, runs = crashkit.finish(unkilled)
    assert how == "done", runs
    want = {n: crashkit.normalise(crashkit.result_of(unkilled.clone(n)), unkilled.root) for n in crashkit.REPOS}
    tried, failures = 0, []
    modes = crashkit.MODES if _ASKED else ("before", "during", "rename")
    for where, sb, first in _killed_runs(reference, step, tmp_path, "upgrade", "--skip", modes=modes):
        tried += 1
        if first.code != -9 and crashkit.traceback_in(first.text):
            failures.append(f"{where}: a traceback: {first}")
        said, data = crashkit.status_json(sb)
        text = crashkit.forkops(sb.workspace, "status")
        if data is None or crashkit.traceback_in(text.text) or (data.get("run") and not data.get("next")):
            failures.append(f"{where}: status: {said} {text}")
        resumed = crashkit.copy_sandbox(sb, tmp_path / f"resumed-{len(failures)}-{tried}")
        aborted = crashkit.forkops(sb.workspace, "upgrade", "--abort")
        if aborted.code != 0:
            failures.append(f"{where}: --abort failed: {aborted}")
        failures += [f"{where}: --abort did not restore: {d}" for d in _not_restored(reference, sb)]
        how, runs = crashkit.finish(resumed)
        got = {n: crashkit.normalise(crashkit.result_of(resumed.clone(n)), resumed.root) for n in crashkit.REPOS}
        if how != "done":
            failures.append(f"{where}: resumed: {how}: {runs[-1:]}")
        failures += [f"{where}: {name} lost {sorted(lost)}" for name in crashkit.REPOS
                     if (lost := set(crashkit.stack_of(want[name])) - set(crashkit.stack_of(got[name])))]
    assert tried >= 4, tried
    assert not failures, "\n".join(failures)
