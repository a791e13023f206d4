"""Issue 10, one test per case listed at its top: each drives the real CLI (``python -m forkops``
in the sandbox workspace, tests/crashkit.py) over a generated sandbox, with real git killed or
held where the case says. All of them failed on the main of issue 10 (``CRASHKIT_CODE=/work/main``
runs them against another checkout).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from forkops import sandbox as sandbox_mod
from forkops.sandbox import Sandbox
from tests import crashkit
from tests.crashkit import forkops, git
from tests.gitutil import resolve_all

SERVING_2_18 = ["docs: about this fork", "Build against the TensorFlow fork", "Build images from the local source tree",
                "use encrypted model", "docs: building the fork", "Pin org_tensorflow to b2.18.0 (was b2.4.0)"]
TF_2_18 = ["Decrypt models in ReadBinaryProto", "Add cryptfile tool to encrypt models",
           "Link Crypto++ and define the model key", "docs: how this fork differs from upstream",
           f"Re-apply decrypt-in-ReadBinaryProto patch to {sandbox_mod.TF_XLA_TSL} (moved from {sandbox_mod.TF_CORE})"]
TF_2_11 = [*TF_2_18[:4],
    f"Re-apply decrypt-in-ReadBinaryProto patch to {sandbox_mod.TF_TSL} (moved from {sandbox_mod.TF_CORE})"]
KEY = "Kq7Zr2mW9xPb4TnL"  # 16 bytes: AES-128
needs_strace = pytest.mark.skipif(not crashkit.strace_works(), reason="strace missing or not allowed (CI installs it)")


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return crashkit.new_sandbox(tmp_path / "sb")


def snapshots(sb: Sandbox) -> dict[str, dict[str, object]]:
    """Each clone's snapshot with the sandbox root written ``<root>`` (copies compare equal)."""
    return {name: crashkit.normalise(crashkit.snapshot(sb.clone(name)), sb.root)  # type: ignore[misc]
            for name in crashkit.REPOS}


def assert_restored(sb: Sandbox, before: dict[str, dict[str, object]]) -> None:
    now = snapshots(sb)
    for name in crashkit.REPOS:
        diff = crashkit.snapshot_diff(before[name], now[name])
        assert not diff, f"{name} not restored: {diff}"


def stack(repo: Path, branch: str = "b2.18.0", onto: str = "tf2.18.0") -> list[str]:
    return git(repo, "log", "--reverse", "--format=%s", f"refs/heads/{onto}..refs/heads/{branch}").splitlines()


def contains(repo: Path, ancestor: str, descendant: str) -> bool:
    return subprocess.run([crashkit.REAL_GIT, "-C", str(repo), "merge-base", "--is-ancestor", ancestor, descendant],
                          check=False).returncode == 0


def assert_no_traceback(*runs: crashkit.Run) -> None:
    for run in runs:
        assert not crashkit.traceback_in(run.text), str(run)


def assert_whole_or_named(sb: Sandbox, repo_name: str, want: list[str]) -> None:
    """Resolve-and-continue as a person would: it ends with exactly ``want`` on b2.18.0 (on top
    of the tag), or stops with exit 1 naming every commit that is missing. Never a silent loss."""
    repo = sb.clone(repo_name)
    how, runs = crashkit.finish(sb)
    assert_no_traceback(*runs)
    if how == "done":
        assert contains(repo, "refs/tags/" + ("v2.18.0" if repo_name == "tensorflow" else "2.18.0"),
                        "refs/heads/b2.18.0"), "b2.18.0 does not contain the upstream tag"
        assert stack(repo) == want, "\n".join(map(str, runs))
        res, data = crashkit.status_json(sb)
        assert data is not None and data["state"] == "done", res
        return
    assert how == "stopped", "\n".join(map(str, runs))
    have = stack(repo)
    missing = [(sha, s) for sha, s in crashkit.fork_stack(repo) if s in want and s not in have]
    assert missing, f"stopped with nothing missing:\n{runs[-1]}"
    named = crashkit.names_a_commit(runs[-1].text, missing)
    assert named == missing, f"the stop does not name every missing commit {missing}:\n{runs[-1]}"


# ---------------------------------------------------------------------------------------------
# 1. kill -9 of forkops while `git rebase --onto` runs: git's `done` lists a pick whose
#    changes never reached the index; "done" must never follow with that commit missing.
# ---------------------------------------------------------------------------------------------
def test_kill_during_rebase_onto_never_loses_the_done_pick(sb: Sandbox, tmp_path: Path) -> None:
    before = snapshots(sb)
    killer = crashkit.Killer(tmp_path / "kit", mode="during", at=1, match="* rebase *--onto *")
    res = killer.forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "serving")
    assert killer.fired and res.code == -signal.SIGKILL, res
    status = forkops(sb.workspace, "status")
    assert_no_traceback(status)
    assert_whole_or_named(crashkit.copy_sandbox(sb, tmp_path / "resumed"), "serving", SERVING_2_18)
    res = forkops(sb.workspace, "upgrade", "--abort")
    assert res.code == 0, res
    assert_restored(sb, before)


# git killed right after it applied a pick (changes staged, the commit object written) but before
# HEAD moved or a stop's message was written: `rebase --continue` alone fails "could not read log
# file" forever. Made deterministic with a reference-transaction hook that SIGKILLs git at the
# first pick's HEAD update (the hook runs while git holds the prepared transaction).
_KILL_AT_PICK = """#!/bin/sh
refs=$(cat)
case "$1 $refs" in
  "prepared "*" HEAD") ;;
  *) exit 0 ;;
esac
n=$(( $(cat "$0.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$0.count"
[ "$n" -eq 2 ] && kill -9 "$PPID"
exit 0
"""


def test_git_killed_after_staging_a_pick_is_picked_again(sb: Sandbox) -> None:
    sv = sb.clone("serving")
    hook = sv / ".git" / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(_KILL_AT_PICK)
    hook.chmod(0o755)
    first = forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "serving")
    assert_no_traceback(first)
    hook.unlink()
    rebase_dir = sv / ".git" / "rebase-merge"
    done = (rebase_dir / "done").read_text()
    assert "docs: about this fork" in done, done  # git recorded the pick as done ...
    assert not (rebase_dir / "message").exists()  # ... and died before it could stop or commit
    assert git(sv, "diff", "--cached", "--name-only").strip(), "the pick's changes are staged"
    assert_whole_or_named(sb, "serving", SERVING_2_18)


# ---------------------------------------------------------------------------------------------
# 2. git itself killed right after it created .git/rebase-merge (at its first renames):
#    --continue must not report "ready" while b2.18.0 is still the start branch.
# ---------------------------------------------------------------------------------------------
@needs_strace
@pytest.mark.parametrize("rename", [1, 2])
def test_git_killed_right_after_creating_rebase_merge(sb: Sandbox, tmp_path: Path, rename: int) -> None:
    before = snapshots(sb)
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=rename, match="* rebase *--onto *")
    res = killer.forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "serving")
    assert killer.fired, res
    assert_no_traceback(res, forkops(sb.workspace, "status"))
    assert_whole_or_named(crashkit.copy_sandbox(sb, tmp_path / "resumed"), "serving", SERVING_2_18)
    res = forkops(sb.workspace, "upgrade", "--abort")
    assert res.code == 0, res
    assert_restored(sb, before)


# ---------------------------------------------------------------------------------------------
# 3. A stale index.lock (a `git add` killed at its rename): --abort and --continue clear it
#    (no process holds it) and go on, or name the exact file.
# ---------------------------------------------------------------------------------------------
@needs_strace
def test_stale_index_lock_is_cleared_or_named(sb: Sandbox, tmp_path: Path) -> None:
    sv = sb.clone("serving")
    before = snapshots(sb)
    assert forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "serving").code == 1
    ours, theirs = git(sv, "show", ":2:WORKSPACE"), git(sv, "show", ":3:WORKSPACE")
    (sv / "WORKSPACE").write_text(sandbox_mod.resolve("serving", "WORKSPACE", ours=ours, theirs=theirs) or "")
    killed = subprocess.run([crashkit.STRACE or "strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                             "-e", "inject=rename:signal=KILL:when=1", crashkit.REAL_GIT, "-C", str(sv), "add",
                             "WORKSPACE"], capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL and (sv / ".git" / "index.lock").exists()
    lock = str(sv / ".git" / "index.lock")

    aborted = crashkit.copy_sandbox(sb, tmp_path / "aborted")
    res = forkops(aborted.workspace, "upgrade", "--abort")
    assert_no_traceback(res)
    assert res.code == 0, f"--abort did not clear the stale lock and restore: {res}"
    assert_restored(aborted, before)

    res = forkops(sb.workspace, "upgrade", "--continue")
    assert_no_traceback(res)
    if (sv / ".git" / "index.lock").exists():
        assert lock in res.text, f"--continue neither cleared nor named {lock}: {res}"
        (sv / ".git" / "index.lock").unlink()  # what the person is told to do
    else:
        # cleared and went on: the add never happened, so WORKSPACE is still unmerged, and said so
        assert res.code == 1 and "WORKSPACE" in res.text, res
    resolve_all(sv)
    res = forkops(sb.workspace, "upgrade", "--continue")
    assert res.code == 1 and "3/5" in res.out, res  # on to the Dockerfiles stop


# ---------------------------------------------------------------------------------------------
# 4. Conflict markers `git add`-ed, then --continue: refused with file:line, nothing committed.
# ---------------------------------------------------------------------------------------------
def test_staged_conflict_markers_are_refused_with_file_and_line(sb: Sandbox) -> None:
    sv = sb.clone("serving")
    assert forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "serving").code == 1
    head_before = git(sv, "rev-parse", "HEAD").strip()
    lines = (sv / "WORKSPACE").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines, 1) if line.startswith("<<<<<<<"))
    git(sv, "add", "-A")
    res = forkops(sb.workspace, "upgrade", "--continue")
    assert_no_traceback(res)
    assert res.code == 1, res
    assert f"WORKSPACE:{marker}" in res.text, f"no WORKSPACE:{marker} in: {res}"
    assert git(sv, "rev-parse", "HEAD").strip() == head_before, "a commit was made with the markers"
    assert git(sv, "grep", "-n", "-e", "^<<<<<<< ", "HEAD", check=False) == ""
    _, data = crashkit.status_json(sb)
    assert data is not None and data["state"] == "conflict" and data["stopped_at"]["index"] == 2


# ---------------------------------------------------------------------------------------------
# 5. No git identity (a fresh CI runner): exit 2 with the two `git config` lines, nothing
#    changed; `forkops demo` passes there.
# ---------------------------------------------------------------------------------------------
def test_no_git_identity(sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshots(sb)
    home = tmp_path / "home"
    home.mkdir()
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    res = forkops(sb.workspace, "upgrade", "2.18.0")
    assert_no_traceback(res)
    assert res.code == 2, res
    assert re.search(r"git config .*user\.name", res.err) and re.search(r"git config .*user\.email", res.err), res
    assert_restored(sb, before)
    demo = forkops(tmp_path, "demo", str(tmp_path / "demo"), timeout=300)
    assert demo.code == 0, demo


# ---------------------------------------------------------------------------------------------
# 6. Two upgrades at once: the second (and an --abort) exit 2 naming the holder's pid.
# ---------------------------------------------------------------------------------------------
def test_second_upgrade_at_once_names_the_holder(sb: Sandbox, tmp_path: Path) -> None:
    before = snapshots(sb)
    holder = crashkit.Killer(tmp_path / "kit", mode="pause", at=1, match="* fetch *")
    first = holder.spawn(sb.workspace, "upgrade", "2.18.0")
    try:
        holder.wait_fired()
        second = forkops(sb.workspace, "upgrade", "2.18.0")
        abort = forkops(sb.workspace, "upgrade", "--abort")
    finally:
        holder.release()
        out, err = first.communicate(timeout=crashkit.TIMEOUT)
    assert_no_traceback(second, abort)
    for res in (second, abort):
        assert res.code == 2 and str(holder.pid) in res.err, res
    assert first.returncode == 1, out + err  # the holder went on to its first stop
    assert forkops(sb.workspace, "upgrade", "--abort").code == 0
    assert_restored(sb, before)


def test_status_during_a_run_says_it_is_running(sb: Sandbox, tmp_path: Path) -> None:
    """``forkops status`` from another terminal while an upgrade works (here held just before its
    rebase): git's files are a moment of a moving run, so status names the run that holds the
    workspace instead of leaving "interrupted (the run was interrupted)" to be believed."""
    holder = crashkit.Killer(tmp_path / "kit", mode="pause", at=1, match="* rebase *--onto *")
    first = holder.spawn(sb.workspace, "upgrade", "2.18.0")
    try:
        holder.wait_fired()
        text = forkops(sb.workspace, "status")
        data = forkops(sb.workspace, "status", "--json")
    finally:
        holder.release()
        first.communicate(timeout=crashkit.TIMEOUT)
    assert_no_traceback(text, data)
    running = f"pid {holder.pid}: forkops upgrade 2.18.0"
    assert text.code == 0 and f"a forkops run is working in this workspace now ({running})" in text.out, text
    assert json.loads(data.out)["running"] == running
    assert json.loads(forkops(sb.workspace, "status", "--json").out)["running"] is None  # it stopped


# ---------------------------------------------------------------------------------------------
# 7. set-key while an upgrade is stopped is refused; the key never reaches a commit.
# ---------------------------------------------------------------------------------------------
def test_set_key_refused_while_upgrade_stopped(sb: Sandbox) -> None:
    tf = sb.clone("tensorflow")
    keys = sb.workspace / "keys.toml"
    keys.write_text(f'[model]\nkey = "{KEY}"\n')
    os.chmod(keys, 0o600)
    assert forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "tensorflow").code == 1
    worktree = crashkit.snapshot(tf)
    res = forkops(sb.workspace, "set-key")
    assert_no_traceback(res)
    assert res.code == 2 and "upgrade" in res.err, res
    assert KEY not in res.text
    assert crashkit.snapshot_diff(worktree, crashkit.snapshot(tf)) == []
    # build (its staging reads the fork branches) is refused too while the run is in progress
    built = forkops(sb.workspace, "build", "2.18.0", "--dry-run")
    assert_no_traceback(built)
    assert built.code == 2 and "upgrade" in built.err, built
    # the person stages everything and continues: still no key in any commit of the run
    resolve_all(tf)
    git(tf, "add", "-A")
    runs = [forkops(sb.workspace, "upgrade", "--continue")]
    assert runs[-1].code == 0, runs[-1]
    from forkops import keyfile
    from forkops.secrets import Matcher

    history = git(tf, "log", "-p", "refs/tags/v2.18.0..refs/heads/b2.18.0")
    assert Matcher(keyfile.load(keys)).find(history.encode()) == [], "the key was committed"


# ---------------------------------------------------------------------------------------------
# 8. A kill during anchor re-application (merged file written, not committed) is resumable.
# ---------------------------------------------------------------------------------------------
def test_kill_during_anchor_reapplication_is_resumable(sb: Sandbox, tmp_path: Path) -> None:
    tf = sb.clone("tensorflow")
    killer = crashkit.Killer(tmp_path / "kit", mode="before", file=tf / sandbox_mod.TF_TSL,
                             needle="decryptCBC(encrypted")
    res = killer.forkops(sb.workspace, "upgrade", "2.11.0", "--repo", "tensorflow")
    assert killer.fired and res.code == -signal.SIGKILL, res
    status = forkops(sb.workspace, "status")
    assert_no_traceback(status)
    assert "--continue" in status.out, status
    res = forkops(sb.workspace, "upgrade", "--continue")
    assert res.code == 0, res
    assert stack(tf, "b2.11.0", "tf2.11.0") == TF_2_11
    assert "decryptCBC(encrypted" in git(tf, "show", f"b2.11.0:{sandbox_mod.TF_TSL}")
    assert git(tf, "status", "--porcelain") == ""


# ---------------------------------------------------------------------------------------------
# 9. --abort after a kill during planning deletes the fetched tags and restores git config.
# ---------------------------------------------------------------------------------------------
def test_abort_after_kill_during_planning_restores_tags_and_config(sb: Sandbox, tmp_path: Path) -> None:
    before = snapshots(sb)
    killer = crashkit.Killer(tmp_path / "kit", mode="during", at=1, match="* fetch *")
    res = killer.forkops(sb.workspace, "upgrade", "2.18.0")
    assert killer.fired and res.code == -signal.SIGKILL, res
    res = forkops(sb.workspace, "upgrade", "--abort")
    assert_no_traceback(res)
    assert res.code == 0, res
    assert_restored(sb, before)


# ---------------------------------------------------------------------------------------------
# 10. A refused run changes no git config (no `tf` remote, no rerere settings).
# ---------------------------------------------------------------------------------------------
def test_refused_run_changes_no_git_config(sb: Sandbox) -> None:
    before = snapshots(sb)
    res = forkops(sb.workspace, "upgrade", "2.6.0")  # upstream has no such tag
    assert_no_traceback(res)
    assert res.code == 2, res
    assert_restored(sb, before)
    (sb.clone("serving") / "README.md").write_text("dirty\n")
    before = snapshots(sb)
    res = forkops(sb.workspace, "upgrade", "2.18.0")  # serving is dirty: refused before anything moves
    assert res.code == 2 and "uncommitted" in res.err, res
    assert_restored(sb, before)


# ---------------------------------------------------------------------------------------------
# 11. A local tag named like the fork branch (b2.18.0) does not make the run unresumable.
# ---------------------------------------------------------------------------------------------
def test_local_tag_named_like_the_branch(sb: Sandbox) -> None:
    tf = sb.clone("tensorflow")
    git(tf, "tag", "b2.18.0", "refs/heads/b2.4.0")
    tag_sha = git(tf, "rev-parse", "refs/tags/b2.18.0").strip()
    res = forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "tensorflow")
    assert res.code == 1, res
    resolve_all(tf)
    res = forkops(sb.workspace, "upgrade", "--continue")
    assert_no_traceback(res)
    assert res.code == 0, res
    assert stack(tf) == TF_2_18
    assert git(tf, "rev-parse", "refs/tags/b2.18.0").strip() == tag_sha
    assert git(tf, "symbolic-ref", "HEAD").strip() == "refs/heads/b2.18.0"
    _, data = crashkit.status_json(sb)
    assert data is not None and data["state"] == "done"


# ---------------------------------------------------------------------------------------------
# 12. `git bisect` in progress is refused before anything moves.
# ---------------------------------------------------------------------------------------------
def test_bisect_in_progress_is_refused(sb: Sandbox) -> None:
    tf = sb.clone("tensorflow")
    git(tf, "bisect", "start", "refs/heads/b2.4.0", "refs/tags/v2.4.0")
    before = snapshots(sb)
    res = forkops(sb.workspace, "upgrade", "2.18.0")
    assert_no_traceback(res)
    assert res.code == 2 and "bisect" in res.err, res
    assert_restored(sb, before)


# ---------------------------------------------------------------------------------------------
# 13. A published bX.Y.Z on origin: `upgrade X.Y.Z --branch NAME` writes the result to NAME.
# ---------------------------------------------------------------------------------------------
def test_published_branch_on_origin_then_branch_name(sb: Sandbox) -> None:
    tf, origin = sb.clone("tensorflow"), sb.origin["tensorflow"]
    git(origin, "branch", "b2.18.0", "refs/tags/v2.4.0^{commit}")  # someone published a b2.18.0
    published = git(origin, "rev-parse", "refs/heads/b2.18.0").strip()
    res = forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "tensorflow")
    assert res.code == 2 and "b2.18.0" in res.err, res
    res = forkops(sb.workspace, "upgrade", "2.18.0", "--repo", "tensorflow", "--branch", "forkops/b2.18.0")
    assert_no_traceback(res)
    assert res.code == 1, res
    resolve_all(tf)
    res = forkops(sb.workspace, "upgrade", "--continue")
    assert res.code == 0, res
    assert stack(tf, "forkops/b2.18.0") == TF_2_18
    assert contains(tf, "refs/tags/v2.18.0", "refs/heads/forkops/b2.18.0")
    assert git(tf, "rev-parse", "--verify", "--quiet", "refs/heads/b2.18.0", check=False) == ""
    assert git(origin, "rev-parse", "refs/heads/b2.18.0").strip() == published


# ---------------------------------------------------------------------------------------------
# 14. A finished run can be pushed later with `forkops push` (never forced).
# ---------------------------------------------------------------------------------------------
def test_finished_run_pushed_later(sb: Sandbox) -> None:
    res = forkops(sb.workspace, "upgrade", "2.4.1")
    assert res.code == 0, res
    for name in crashkit.REPOS:
        assert git(sb.origin[name], "branch", "--list", "b2.4.1") == ""
    res = forkops(sb.workspace, "push")
    assert_no_traceback(res)
    assert res.code == 0, res
    for name in crashkit.REPOS:
        repo = sb.clone(name)
        assert git(sb.origin[name], "rev-parse", "refs/heads/b2.4.1").strip() == git(
            repo, "rev-parse", "refs/heads/b2.4.1").strip()
        assert git(repo, "rev-parse", "--abbrev-ref", "b2.4.1@{upstream}").strip() == "origin/b2.4.1"
