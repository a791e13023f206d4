"""The upgrade's second round: --plan changes nothing, the workspace lock, `forkops push`,
--branch, exact --abort of config and tags, the stack invariant, the completion report, stops
resolved from a recorded resolution, the state format version, FORKOPS_DEBUG.

Real generated repositories throughout (forkops.sandbox); git is never mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkops import workspace
from forkops.lock import upgrade_stopped, workspace_lock
from forkops.sandbox import Sandbox
from tests.gitutil import git, resolve_all
from tests.test_upgrade import ROOT, cli, status_json


def repo_bytes(repo: Path) -> dict[str, bytes]:
    """Every file of the repository, .git included (objects too), byte for byte."""
    out = {}
    for path in sorted(repo.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(repo))] = path.read_bytes()
    return out


def child(sb: Sandbox, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "forkops", *args], cwd=sb.workspace, env=full,
                          capture_output=True, text=True, check=False)


# ---------------------------------------------------------------------------------------
def test_plan_changes_nothing_and_predicts_the_real_stop(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    before = {name: repo_bytes(path) for name, path in (("tf", tf), ("sv", sv))}
    res = cli(sandbox, "upgrade", "2.18.0", "--plan", "--json", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert {name: repo_bytes(path) for name, path in (("tf", tf), ("sv", sv))} == before
    assert not (sandbox.workspace / ".forkops" / "run.json").exists()
    plan = {r["repo"]: r for r in json.loads(res.out)["repos"]}
    tfp = plan["tensorflow"]
    res = cli(sandbox, "upgrade", "2.5.0", "--plan", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0 and "rebases cleanly" in res.out and "nothing was changed" in res.out
    assert (tfp["start"], tfp["base"], tfp["branch"], tfp["onto"]) == ("b2.4.0", "v2.4.0", "b2.18.0", "tf2.18.0")
    assert [c["subject"] for c in tfp["commits"]] == git(tf, "log", "--reverse", "--format=%s",
                                                         "v2.4.0..b2.4.0").splitlines()
    assert tfp["new_tags"] == ["refs/tags/v2.18.0"]
    assert tfp["status"] == "conflict" and tfp["conflicts"] == [".bazelrc"]
    # the prediction is the stop the real run makes
    res = cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1
    stop = status_json(sandbox, monkeypatch)["stopped_at"]
    assert (stop["index"], stop["total"], stop["subject"]) == (
        tfp["stopped_at"]["index"], tfp["stopped_at"]["total"], tfp["stopped_at"]["subject"])
    # while a run is in progress a plan is refused: it would describe another start
    res = cli(sandbox, "upgrade", "2.5.0", "--plan", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "in progress" in res.err


def test_plan_shows_a_refusal_per_repository(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli(sandbox, "upgrade", "2.99.0", "--plan", "--json", monkeypatch=monkeypatch)
    assert res.code == 0
    repos = json.loads(res.out)["repos"]
    assert all("upstream has no tag" in r["refused"] for r in repos)


# ---------------------------------------------------------------------------------------
def test_second_run_on_the_workspace_exits_2_naming_the_holder(sandbox: Sandbox) -> None:
    ws = workspace.load(sandbox.workspace)
    tf = sandbox.clone("tensorflow")
    before = repo_bytes(tf)
    with workspace_lock(ws, "forkops upgrade 2.18.0 (test holder)"):
        for args in (("upgrade", "2.18.0"), ("upgrade", "--abort"), ("push",)):
            proc = child(sandbox, *args)
            assert proc.returncode == 2, proc.stderr
            line = proc.stderr.strip()
            assert f"pid {os.getpid()}" in line and "forkops upgrade 2.18.0 (test holder)" in line, line
            assert "Traceback" not in proc.stderr
    assert repo_bytes(tf) == before
    # released: the kernel drops the flock with the descriptor, the next run goes ahead
    proc = child(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow")
    assert proc.returncode == 0, proc.stderr


def test_lock_released_when_the_holder_is_killed(sandbox: Sandbox) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from forkops import workspace; from forkops.lock import "
         "workspace_lock; ws = workspace.load(); cm = workspace_lock(ws, 'sleeper'); cm.__enter__(); "
         "print('held', flush=True); time.sleep(60)"],
        cwd=sandbox.workspace, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert child(sandbox, "upgrade", "--abort").returncode == 2
    holder.kill()
    holder.wait()
    proc = child(sandbox, "upgrade", "--abort")
    assert proc.returncode == 0, proc.stderr


def test_upgrade_stopped_tells_set_key_and_build(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace.load(sandbox.workspace)
    assert upgrade_stopped(ws) is None
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    assert upgrade_stopped(ws) == "2.18.0"
    assert cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch).code == 0
    assert upgrade_stopped(ws) is None


# ---------------------------------------------------------------------------------------
def test_push_after_completion_with_branch_name(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    origin = sandbox.origin["tensorflow"]
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", "--branch", "forkops/b2.5.0",
              monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert git(tf, "rev-parse", "--verify", "-q", "refs/heads/b2.5.0", check=False) == ""
    tip = git(tf, "rev-parse", "refs/heads/forkops/b2.5.0").strip()
    assert "forkops/b2.5.0 is ready (5 of 5 patches on tf2.5.0)" in res.out
    assert "range-diff old stack -> new: 5 unchanged" in res.out
    assert git(origin, "rev-parse", "-q", "--verify", "refs/heads/forkops/b2.5.0", check=False) == ""
    res = cli(sandbox, "push", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert git(origin, "rev-parse", "refs/heads/forkops/b2.5.0").strip() == tip
    assert git(tf, "rev-parse", "--abbrev-ref", "forkops/b2.5.0@{upstream}").strip() == "origin/forkops/b2.5.0"
    assert status_json(sandbox, monkeypatch)["pushed"] is True
    # the published name now blocks a second run to it, and says how to go on
    cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch)
    git(tf, "checkout", "-q", "b2.4.0")
    git(tf, "branch", "-q", "-D", "forkops/b2.5.0")
    git(origin, "update-ref", "refs/heads/forkops/b2.5.0", git(tf, "rev-parse", "b2.4.0").strip() + "~1")
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", "--branch", "forkops/b2.5.0",
              monkeypatch=monkeypatch)
    assert res.code == 2 and "origin already has branch forkops/b2.5.0" in res.err and "--branch" in res.err


def test_push_refuses_conflict_markers_with_file_and_line(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    assert cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 0
    (tf / "NOTES.md").write_text("one\n<<<<<<< HEAD\ntwo\n=======\nthree\n>>>>>>> fork\n")
    git(tf, "add", "NOTES.md")
    git(tf, "commit", "-q", "-m", "notes")
    res = cli(sandbox, "push", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    assert "NOTES.md:2: leftover conflict marker" in res.err
    assert git(sandbox.origin["tensorflow"], "rev-parse", "-q", "--verify", "refs/heads/b2.5.0", check=False) == ""


def test_push_before_the_run_finished_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(sandbox, "push", monkeypatch=monkeypatch).code == 2
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    res = cli(sandbox, "push", monkeypatch=monkeypatch)
    assert res.code == 2 and "not finished" in res.err


# ---------------------------------------------------------------------------------------
def test_abort_restores_config_and_tags_byte_for_byte(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    # a user's own `tf` remote pointing elsewhere: re-pointed for the run, restored by --abort
    git(tf, "remote", "add", "tf", "https://example.invalid/tensorflow")
    before = {p: ((p / ".git" / "config").read_bytes(), git(p, "for-each-ref"), git(p, "rev-parse", "HEAD"),
                  git(p, "symbolic-ref", "HEAD")) for p in (tf, sv)}
    assert cli(sandbox, "upgrade", "2.18.0", monkeypatch=monkeypatch).code == 1
    assert git(tf, "remote", "get-url", "tf").strip() == sandbox.upstream_url("tensorflow")
    assert "refs/tags/v2.18.0" in git(tf, "for-each-ref", "refs/tags")
    res = cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    after = {p: ((p / ".git" / "config").read_bytes(), git(p, "for-each-ref"), git(p, "rev-parse", "HEAD"),
                 git(p, "symbolic-ref", "HEAD")) for p in (tf, sv)}
    assert after == before
    assert git(tf, "status", "--porcelain") == "" and git(sv, "status", "--porcelain") == ""


def test_a_refused_run_changes_no_config(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    (sv / "README.md").write_text("dirty\n")  # the second repository refuses
    before = {p: repo_bytes(p / ".git") for p in (tf, sv)}
    res = cli(sandbox, "upgrade", "2.18.0", monkeypatch=monkeypatch)
    assert res.code == 2 and "uncommitted changes" in res.err
    after = {p: repo_bytes(p / ".git") for p in (tf, sv)}
    for p in (tf, sv):
        changed = {k for k in set(before[p]) | set(after[p]) if before[p].get(k) != after[p].get(k)}
        # only new objects (the fetched tag's), never a ref, the config or FETCH_HEAD
        assert all(k.startswith("objects/") for k in changed), sorted(changed)[:5]


# ---------------------------------------------------------------------------------------
def test_commit_lost_outside_forkops_is_named_and_never_done(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    stopped = status_json(sandbox, monkeypatch)["stopped_at"]
    # the person drops the commit with git itself: forkops has no record of a --skip
    subprocess.run(["git", "-C", str(tf), "rebase", "--skip"], capture_output=True, check=False)
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    assert stopped["commit"][:12] in res.out and stopped["subject"] in res.out
    assert "git cherry-pick" in res.out
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "commit-missing"
    assert data["failure"]["missing"] == [{"sha": stopped["commit"], "subject": stopped["subject"]}]
    assert any(stopped["commit"][:12] in step for step in data["next"])
    assert "done" not in res.out.lower().split("upgrade to")[-1]
    # --continue without a fix keeps saying it; --skip drops it on record
    assert cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch).code == 1
    res = cli(sandbox, "upgrade", "--skip", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "done" and stopped["commit"] in data["skipped"]
    assert f"skipped {stopped['subject']!r} (--skip)" in res.out


def test_stop_resolved_from_a_recorded_resolution(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    assert status_json(sandbox, monkeypatch)["conflicts"][0]["recorded"] is False
    resolve_all(tf)
    assert cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch).code == 0
    # the same upgrade once more (--force replaces the branches): rerere knows the resolution
    git(tf, "checkout", "-q", "b2.4.0")
    res = cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", "--force", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    assert "resolved from a recorded resolution: review, then --continue" in res.out
    data = status_json(sandbox, monkeypatch)
    (entry,) = data["conflicts"]
    assert {k: entry[k] for k in ("path", "kind", "recorded", "moved_from")} == {
        "path": ".bazelrc", "kind": "content", "recorded": True, "moved_from": None}
    assert [c["subject"] for c in entry["context"]] == ["Disable Bzlmod explicitly"]  # the upstream commit behind it
    # nothing was staged behind the person's back: the file is still unmerged until `git add`
    assert ".bazelrc" in git(tf, "diff", "--name-only", "--diff-filter=U")
    assert "<<<<<<<" not in (tf / ".bazelrc").read_text()


# ---------------------------------------------------------------------------------------
def test_state_from_another_forkops_version_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    path = tf / ".git" / "forkops" / "upgrade.json"
    data = json.loads(path.read_text())
    data["format"] = 1
    path.write_text(json.dumps(data))
    for args in (("status",), ("upgrade", "--continue"), ("upgrade", "--abort")):
        res = cli(sandbox, *args, monkeypatch=monkeypatch)
        assert res.code == 2, (args, res.out, res.err)
        assert "written by another forkops version" in res.err and len(res.err.strip().splitlines()) <= 2


def test_debug_traces_every_git_command(sandbox: Sandbox) -> None:
    proc = child(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", env={"FORKOPS_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    traced = [ln for ln in proc.stderr.splitlines() if ln.startswith("forkops: git ")]
    assert any(" rebase " in ln for ln in traced) and any("ls-remote" in ln for ln in traced)
    assert all(ln.rstrip().endswith("ms]") for ln in traced)
    quiet = child(sandbox, "status")
    assert "forkops: git " not in quiet.stderr


def test_demo_without_any_git_identity(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(tmp_path / "empty-gitconfig"), "COLUMNS": "200",
           "PYTHONPATH": str(ROOT)}
    (tmp_path / "home").mkdir()
    (tmp_path / "empty-gitconfig").write_text("")
    proc = subprocess.run([sys.executable, "-m", "forkops", "demo", str(tmp_path / "demo")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "empty-gitconfig").read_text() == ""


def test_no_identity_refused_before_anything_moves(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    tf = sandbox.clone("tensorflow")
    before = repo_bytes(tf / ".git")
    empty = tmp_path / "empty"
    empty.write_text("")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("EMAIL", "")
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2, res.out + res.err
    assert 'git config --global user.name "Your Name"' in res.err
    assert 'git config --global user.email "you@example.com"' in res.err
    changed = {k for k, v in repo_bytes(tf / ".git").items() if before.get(k) != v} | (set(before) - set(
        repo_bytes(tf / ".git")))
    assert all(k.startswith("objects/") for k in changed)


def test_completion_report_tells_resolved_patches_from_forkops_commits(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sv = sandbox.clone("serving")
    res = cli(sandbox, "upgrade", "2.18.0", "--repo", "serving", monkeypatch=monkeypatch)
    for _ in range(5):
        if res.code != 1:
            break
        resolve_all(sv)
        res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    line = next(ln for ln in res.out.splitlines() if "range-diff old stack -> new" in ln)
    added = line.split("added by forkops", 1)[1]
    assert "Pin org_tensorflow to b2.18.0" in added
    for subject in git(sv, "log", "--format=%s", "2.4.0..b2.4.0").splitlines():
        assert subject not in added  # resolved fork commits are changed patches, not forkops'


def test_tag_fetch_reports_progress(sandbox: Sandbox) -> None:
    from forkops import upgrade
    from forkops.version import Version

    seen: list[tuple[str, float | None]] = []
    ws = workspace.load(sandbox.workspace)
    out = upgrade.start(ws, upgrade.Options(Version.parse("2.5.0"), repo="tensorflow"),
                        progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert out.state == "done"
    stages = {stage for stage, _ in seen}
    assert "counting objects" in stages  # git's own progress lines, parsed (few objects: no receiving stage)
    assert stages <= {"counting objects", "compressing objects", "receiving objects", "resolving deltas"}
