"""``forkops upgrade`` / ``status`` on real generated repositories (forkops.sandbox).

Every outcome is checked against git itself: the stop point and unmerged set against a plain
``git rebase --onto`` in a scratch clone, ``--abort`` against a snapshot of every ref.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forkops import sandbox as sandbox_mod
from forkops.sandbox import Sandbox
from tests.clihelp import Result, run_cli
from tests.gitutil import git, git_run, resolve_all

TF_XLA_TSL = sandbox_mod.TF_XLA_TSL
TF_TSL = sandbox_mod.TF_TSL
TF_CORE = sandbox_mod.TF_CORE
ROOT = Path(__file__).resolve().parents[1]


def cli(sb: Sandbox, *args: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.chdir(sb.workspace)
    return run_cli(*args)


def status_json(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    res = cli(sb, "status", "--json", monkeypatch=monkeypatch)
    assert res.code == 0, res.err
    data: dict[str, Any] = json.loads(res.out)
    return data


def snapshot(repo: Path) -> tuple[str, str, str]:
    """Every ref, HEAD (symbolic and commit), and the worktree status."""
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    head = git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip() + " " + git(repo, "rev-parse", "HEAD").strip()
    return refs, head, git(repo, "status", "--porcelain=v1")


def plain_rebase(sb: Sandbox, name: str, tag: str, base: str, tmp: Path) -> tuple[str, str, set[str]]:
    """What plain git does: (msgnum/end, stopped subject, unmerged paths) in a scratch clone."""
    scratch = tmp / f"plain-{name}-{tag}"
    git(tmp, "clone", "--quiet", str(sb.origin[name]), str(scratch))
    git(scratch, "fetch", "--quiet", "--no-tags", sb.upstream_url(name),
        f"refs/tags/{tag}:refs/tags/{tag}", f"refs/tags/{base}:refs/tags/{base}")
    git(scratch, "branch", "target", "origin/b2.4.0")
    git_run(scratch, "rebase", "--onto", f"refs/tags/{tag}", f"refs/tags/{base}", "target")
    rm = scratch / ".git" / "rebase-merge"
    if not rm.is_dir():
        return "clean", "", set()
    msgnum, end = (rm / "msgnum").read_text().strip(), (rm / "end").read_text().strip()
    subject = git(scratch, "log", "-1", "--format=%s", (rm / "stopped-sha").read_text().strip()).strip()
    unmerged = {line.split("\t", 1)[1] for line in git(scratch, "ls-files", "-u").splitlines()}
    return f"{msgnum}/{end}", subject, unmerged


def forkops_child(sb: Sandbox, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FORKOPS_TEST_CRASH_AT", None)
    if crash_at:
        env["FORKOPS_TEST_CRASH_AT"] = crash_at
    # The child must run this checkout's forkops, not whatever copy site-packages holds.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "forkops", *args], cwd=sb.workspace, env=env,
                          capture_output=True, text=True, check=False)


def pk(conflicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Path and kind of each conflict (status adds "recorded" and "moved_from")."""
    return [{"path": c["path"], "kind": c["kind"]} for c in conflicts]


def subjects(repo: Path, rng: str) -> list[str]:
    return git(repo, "log", "--reverse", "--format=%s", rng).splitlines()


# ---------------------------------------------------------------------------------------
def test_clean_run_tensorflow_2_5_0(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    before_head = git(tf, "rev-parse", "HEAD").strip()
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    tag = git(tf, "rev-parse", "refs/tags/v2.5.0^{commit}").strip()
    assert git(tf, "rev-parse", "tf2.5.0").strip() == tag
    assert git(tf, "merge-base", "--is-ancestor", tag, "b2.5.0", check=False) == ""
    assert subjects(tf, "tf2.5.0..b2.5.0") == subjects(tf, "v2.4.0..b2.4.0")  # the 5 patches, nothing else
    assert git(tf, "symbolic-ref", "--short", "HEAD").strip() == "b2.5.0"
    assert git(tf, "status", "--porcelain") == ""
    assert git(tf, "rev-parse", "b2.4.0").strip() == before_head  # the start branch never moves
    # rerere is on for forkops' own rebase commands only: the run changes no rerere config
    assert git(tf, "config", "--get-regexp", "^rerere", check=False) == ""
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "done" and data["repo"] == "tensorflow" and data["version"] == "2.5.0"
    assert (data["branch"], data["onto"], data["base"], data["start"]) == ("b2.5.0", "tf2.5.0", "v2.4.0", "b2.4.0")
    # the run state never reaches git: its folder ignores itself
    assert (sandbox.workspace / ".forkops" / ".gitignore").read_text().strip().endswith("*")


def test_tf_2_18_stops_at_3_of_5_then_continue_reapplies_anchor(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tf = sandbox.clone("tensorflow")
    res = cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    assert "3/5" in res.out and ".bazelrc" in res.out and "forkops upgrade --continue" in res.out
    data = status_json(sandbox, monkeypatch)
    assert set(data) >= {"repo", "version", "state", "branch", "onto", "base", "start", "stopped_at", "conflicts"}
    assert data["state"] == "conflict"
    stop = data["stopped_at"]
    assert (stop["index"], stop["total"], stop["subject"]) == (3, 5, "Link Crypto++ and define the model key")
    assert git(tf, "log", "-1", "--format=%s", stop["commit"]).strip() == stop["subject"]
    assert pk(data["conflicts"]) == [{"path": ".bazelrc", "kind": "content"}]
    # the same stop as plain git
    where, subject, paths = plain_rebase(sandbox, "tensorflow", "v2.18.0", "v2.4.0", tmp_path)
    assert where == f"{stop['index']}/{stop['total']}" and subject == stop["subject"]
    assert paths == {c["path"] for c in data["conflicts"]}

    # --continue refuses while a file is unmerged, naming it
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 1 and ".bazelrc" in res.err
    # a second start is refused while the run is in progress
    res = cli(sandbox, "upgrade", "2.18.0", monkeypatch=monkeypatch)
    assert res.code == 2 and "in progress" in res.err

    resolve_all(tf)
    assert status_json(sandbox, monkeypatch)["conflicts"] == []
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    log = subjects(tf, "tf2.18.0..b2.18.0")
    assert log[-1] == f"Re-apply decrypt-in-ReadBinaryProto patch to {TF_XLA_TSL} (moved from {TF_CORE})"
    assert "Fix missing <cstring> include in env_time.cc" not in log
    live = git(tf, "show", f"b2.18.0:{TF_XLA_TSL}")
    assert "decryptCBC(encrypted" in live and "absl::Status ReadBinaryProto" in live
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "done"
    assert data["dropped"] == ["Fix missing <cstring> include in env_time.cc"]
    assert data["reapplied"][0]["to"] == TF_XLA_TSL


def test_tf_2_11_drops_upstreamed_patch_and_reapplies_to_tsl(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    res = cli(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert "dropped 'Fix missing <cstring> include in env_time.cc'" in res.out
    log = subjects(tf, "tf2.11.0..b2.11.0")
    assert log == ["Decrypt models in ReadBinaryProto", "Add cryptfile tool to encrypt models",
                   "Link Crypto++ and define the model key", "docs: how this fork differs from upstream",
                   f"Re-apply decrypt-in-ReadBinaryProto patch to {TF_TSL} (moved from {TF_CORE})"]
    # the re-apply commit touches only the live file, and the anchor holds there now
    assert git(tf, "show", "--name-only", "--format=", "b2.11.0").split() == [TF_TSL]
    assert "decryptCBC(encrypted" in git(tf, "show", f"b2.11.0:{TF_TSL}")
    from forkops import anchors, playbook
    from forkops.git import Repo
    from forkops.version import Version

    pb = playbook.load("tensorflow")
    result = anchors.check_all(Repo(tf), "b2.11.0", pb.anchors, Version.parse("2.11.0"))
    assert [r.ok for r in result] == [True] and result[0].path == TF_TSL


def test_serving_two_stops_abort_after_one_and_after_two(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sv = sandbox.clone("serving")
    before = snapshot(sv)
    for stops in (1, 2):
        res = cli(sandbox, "upgrade", "2.18.0", "--repo", "serving", monkeypatch=monkeypatch)
        assert res.code == 1, res.out + res.err
        data = status_json(sandbox, monkeypatch)
        assert (data["stopped_at"]["index"], data["stopped_at"]["total"]) == (2, 5)
        assert pk(data["conflicts"]) == [{"path": "WORKSPACE", "kind": "content"}]
        if stops == 1:
            where, subject, paths = plain_rebase(sandbox, "serving", "2.18.0", "2.4.0", tmp_path)
            assert (where, subject, paths) == ("2/5", data["stopped_at"]["subject"], {"WORKSPACE"})
        if stops == 2:
            resolve_all(sv)
            res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
            assert res.code == 1
            data = status_json(sandbox, monkeypatch)
            assert (data["stopped_at"]["index"], data["stopped_at"]["subject"]) == (
                3, "Build images from the local source tree")
            assert {c["path"] for c in data["conflicts"]} == {
                f"{sandbox_mod.SERVING_DOCKER}/Dockerfile.devel", f"{sandbox_mod.SERVING_DOCKER}/Dockerfile.devel-gpu"}
        res = cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch)
        assert res.code == 0, res.err
        assert snapshot(sv) == before  # every ref (tags fetched, branches made, backups) and HEAD
        assert not (sv / ".git" / "rebase-merge").exists()
        assert status_json(sandbox, monkeypatch)["state"] == "idle"
    res = cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch)  # idempotent
    assert res.code == 0 and "nothing to abort" in res.out
    assert snapshot(sv) == before


@pytest.mark.parametrize("way_out", ["fix-by-hand", "skip"])
def test_skip_then_pin_not_found_stops_like_an_anchor(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, way_out: str) -> None:
    sv = sandbox.clone("serving")
    assert cli(sandbox, "upgrade", "2.18.0", "--repo", "serving", monkeypatch=monkeypatch).code == 1
    res = cli(sandbox, "upgrade", "--skip", monkeypatch=monkeypatch)  # drops "Build against the TF fork"
    assert res.code == 1
    assert status_json(sandbox, monkeypatch)["stopped_at"]["index"] == 3
    resolve_all(sv)
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    # Without the WORKSPACE commit org_tensorflow is upstream's http archive again: the pin has
    # nothing to move, a stop that needs a person.
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "anchor-failed"
    assert data["failure"]["kind"] == "pin" and "WORKSPACE has no match" in data["failure"]["message"]
    assert "tensorflow_http_archive" in data["failure"]["message"]
    assert "Build against the TensorFlow fork" not in subjects(sv, "tf2.18.0..b2.18.0")
    assert data["skipped"] and git(sv, "log", "-1", "--format=%s", data["skipped"][0]).strip() == (
        "Build against the TensorFlow fork")
    # --continue without a fix checks again and says how to get out (no endless loop)
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 1 and "forkops upgrade --skip" in res.out
    assert any("--skip" in step for step in status_json(sandbox, monkeypatch)["next"])
    if way_out == "skip":
        res = cli(sandbox, "upgrade", "--skip", monkeypatch=monkeypatch)
        assert res.code == 0, res.out + res.err
        data = status_json(sandbox, monkeypatch)
        assert data["state"] == "done" and data["pinned"] == []
        assert any("pin org_tensorflow skipped (--skip)" in n for n in data["notes"])
        assert git(sv, "show", "b2.18.0:WORKSPACE") == git(sv, "show", "tf2.18.0:WORKSPACE")
        return
    # the person fixes the pin by hand and continues
    ws = (sv / "WORKSPACE").read_text()
    upstream_pin = ws.index("tensorflow_http_archive(\n")
    fixed = ws[:upstream_pin] + ('git_repository(\n    name = "org_tensorflow",\n    remote = "x",\n'
                                 '    branch = "b2.4.0",\n)\n\n') + ws[upstream_pin:]
    (sv / "WORKSPACE").write_text(fixed)
    git(sv, "commit", "--quiet", "-am", "Point org_tensorflow at the fork")
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert 'branch = "b2.18.0"' in git(sv, "show", "b2.18.0:WORKSPACE")


def test_skip_refused_at_a_failed_anchor(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    _anchor_fails_on_2_11(tf)
    assert cli(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    res = cli(sandbox, "upgrade", "--skip", monkeypatch=monkeypatch)
    assert res.code == 2 and "failed anchor" in res.err
    assert status_json(sandbox, monkeypatch)["state"] == "anchor-failed"


def test_both_repos_one_run_with_push(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    res = cli(sandbox, "upgrade", "2.18.0", "--push", monkeypatch=monkeypatch)
    assert res.code == 1
    data = status_json(sandbox, monkeypatch)
    assert data["repo"] == "tensorflow" and [r["repo"] for r in data["run"]["repos"]] == ["tensorflow", "serving"]
    assert data["run"]["repos"][1]["state"] == "pending"
    assert git(sv, "branch", "--list", "b2.18.0") == ""  # Serving starts only after TensorFlow
    resolve_all(tf)
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["repo"] == "serving" and data["stopped_at"]["index"] == 2
    assert data["run"]["repos"][0]["phase"] == "finished"
    # nothing pushed before the whole run completes
    assert git(sandbox.origin["tensorflow"], "branch", "--list", "b2.18.0") == ""
    for _ in range(2):
        resolve_all(sv)
        res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    log = subjects(sv, "tf2.18.0..b2.18.0")
    assert log[-1] == "Pin org_tensorflow to b2.18.0 (was b2.4.0)"
    assert git(sv, "show", "--name-only", "--format=", "b2.18.0").split() == ["WORKSPACE"]
    assert 'branch = "b2.18.0"' in git(sv, "show", "b2.18.0:WORKSPACE")
    for repo, name in ((tf, "tensorflow"), (sv, "serving")):
        assert git(repo, "rev-parse", "--abbrev-ref", "b2.18.0@{upstream}").strip() == "origin/b2.18.0"
        assert git(sandbox.origin[name], "rev-parse", "b2.18.0").strip() == git(repo, "rev-parse", "b2.18.0").strip()
    assert status_json(sandbox, monkeypatch)["state"] == "done"


def test_clean_2_4_1_both_repos_and_pin(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli(sandbox, "upgrade", "2.4.1", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    sv = sandbox.clone("serving")
    assert 'branch = "b2.4.1"' in git(sv, "show", "b2.4.1:WORKSPACE")
    assert len(subjects(sv, "tf2.4.1..b2.4.1")) == 6  # five patches + the pin commit
    assert git(sandbox.origin["serving"], "branch", "--list", "b2.4.1") == ""  # no --push: nothing pushed


@pytest.mark.parametrize("crash_at", ["after-backup", "after-branches", "after-rebase-stop"])
def test_kill_9_mid_run_then_status_continue_abort(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
    tf = sandbox.clone("tensorflow")
    before = snapshot(tf)
    proc = forkops_child(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", crash_at=crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    data = status_json(sandbox, monkeypatch)
    assert data["repo"] == "tensorflow" and data["run"]["version"] == "2.18.0"
    assert data["state"] == ("conflict" if crash_at == "after-rebase-stop" else "idle")
    assert any("--continue" in step for step in data["next"])
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "conflict" and data["stopped_at"]["index"] == 3
    assert pk(data["conflicts"]) == [{"path": ".bazelrc", "kind": "content"}]
    assert cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch).code == 0
    assert snapshot(tf) == before


def test_kill_9_during_abort_then_abort_again(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sv = sandbox.clone("serving")
    before = snapshot(sv)
    assert forkops_child(sandbox, "upgrade", "2.18.0", "--repo", "serving").returncode == 1
    proc = forkops_child(sandbox, "upgrade", "--abort", crash_at="abort-after-refs")
    assert proc.returncode == -signal.SIGKILL
    data = status_json(sandbox, monkeypatch)
    assert data["phase"] == "aborting" and "--abort" in data["next"][0]
    assert cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch).code == 0
    assert snapshot(sv) == before


def test_kill_9_after_reapply_commit_continue_does_not_repeat_it(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    proc = forkops_child(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", crash_at="after-reapply")
    assert proc.returncode == -signal.SIGKILL
    assert status_json(sandbox, monkeypatch)["state"] == "idle"
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    log = subjects(tf, "tf2.11.0..b2.11.0")
    assert sum(s.startswith("Re-apply") for s in log) == 1 and len(log) == 5


def _upstream_release(sb: Sandbox, name: str, tag: str, changes: dict[str, str | None], message: str) -> None:
    """A new upstream patch release on r2.4 (real commits through sandbox.Generator)."""
    up = sb.upstream[name]
    gen = sandbox_mod.Generator(up, start_time=sandbox_mod.T0 + 900 * 86400)
    gen.load_branch("r2.4", git(up, "rev-parse", "r2.4").strip(), {})
    gen.commit("r2.4", message, changes)
    gen.tag(tag, "r2.4", f"TensorFlow {tag}")
    gen.flush()


def test_modify_delete_conflict(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _upstream_release(sandbox, "tensorflow", "v2.4.2", {"README.md": None}, "Remove the README")
    res = cli(sandbox, "upgrade", "2.4.2", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    # upstream deleted it, the fork modifies it: named by forkops.git.conflict_kind, as `check` does
    assert pk(data["conflicts"]) == [{"path": "README.md", "kind": "delete/modify"}]
    assert "delete/modify" in res.out
    where, subject, paths = plain_rebase(sandbox, "tensorflow", "v2.4.2", "v2.4.0", tmp_path)
    assert (where, subject, paths) == ("5/5", data["stopped_at"]["subject"], {"README.md"})


def test_rename_conflict(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # upstream moves a file one way, the fork (a new local patch) another way: rename/rename
    tf = sandbox.clone("tensorflow")
    old = "tensorflow/core/kernels/generated/kernel_00000.cc"
    content = git(tf, "show", f"b2.4.0:{old}")
    _upstream_release(sandbox, "tensorflow", "v2.4.2",
                      {old: None, "tensorflow/core/kernels/kernel_00000.cc": content}, "Move kernel_00000")
    git(tf, "mv", old, "tensorflow/core/kernels/fork_kernel.cc")
    git(tf, "commit", "--quiet", "-m", "Move kernel_00000 for the fork")
    res = cli(sandbox, "upgrade", "2.4.2", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["stopped_at"]["subject"] == "Move kernel_00000 for the fork"
    assert pk(data["conflicts"]) == [{"path": p, "kind": "rename"} for p in (
        "tensorflow/core/kernels/fork_kernel.cc", old, "tensorflow/core/kernels/kernel_00000.cc")]
    assert cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch).code == 0


def test_existing_target_branches(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    git(tf, "branch", "b2.5.0", "b2.4.0~1")
    before = snapshot(tf)
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "branch b2.5.0 already exists" in res.err and "--force" in res.err
    assert len(res.err.strip().splitlines()) <= 2
    assert snapshot(tf)[1:] == before[1:] and not (sandbox.workspace / ".forkops" / "run.json").exists()
    assert not (tf / ".git" / "forkops" / "upgrade.json").exists()
    git(tf, "checkout", "--quiet", "b2.5.0")  # even the checked-out branch is replaced
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", "--force", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert subjects(tf, "tf2.5.0..b2.5.0") == subjects(tf, "v2.4.0..b2.4.0")
    assert git(tf, "status", "--porcelain") == ""
    # the same branch on origin but different: refused even with --force
    git(sandbox.origin["tensorflow"], "branch", "b2.11.0", "master")
    res = cli(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", "--force", monkeypatch=monkeypatch)
    assert res.code == 2 and "origin already has branch b2.11.0" in res.err


def test_existing_branch_equal_to_start_is_fine(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    git(tf, "branch", "b2.5.0", "b2.4.0")
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err


def test_tag_name_shared_with_a_branch(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sv = sandbox.clone("serving")
    # local branches named like the tags (as upstream Serving's 2.18.0 branch), pointing elsewhere
    git(sv, "branch", "2.18.0", "origin/master")
    git(sv, "branch", "2.4.0", "origin/master")
    res = cli(sandbox, "upgrade", "2.18.0", "--repo", "serving", monkeypatch=monkeypatch)
    assert res.code == 1
    data = status_json(sandbox, monkeypatch)
    assert data["base"] == "2.4.0"
    assert git(sv, "rev-parse", "tf2.18.0").strip() == git(sandbox.upstream["serving"], "rev-parse",
                                                           "refs/tags/2.18.0").strip()
    assert data["stopped_at"]["total"] == 5  # base resolved as the tag, not the branch


def test_bad_input_refused_before_anything_moves(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    before = snapshot(tf), snapshot(sv)
    res = cli(sandbox, "upgrade", "2.5", monkeypatch=monkeypatch)
    assert res.code == 2 and "malformed version" in res.err
    res = cli(sandbox, "upgrade", "2.5.0", monkeypatch=monkeypatch)  # Serving has no 2.5.0 tag
    assert res.code == 2 and "nearest versions" in res.err and "2.5.1" in res.err
    assert (snapshot(tf), snapshot(sv)) == before  # TensorFlow did not move either
    (tf / "README.md").write_text("edited\n")
    res = cli(sandbox, "upgrade", "2.5.1", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "uncommitted changes" in res.err
    git(tf, "checkout", "--quiet", "--", "README.md")
    text = (tf / TF_CORE).read_text().replace("0x43, 0x48", "0x11, 0x22", 1)
    (tf / TF_CORE).write_text(text)
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "forkops set-key --clear" in res.err
    git(tf, "checkout", "--quiet", "--", TF_CORE)
    git(tf, "cherry-pick", "--no-commit", "origin/master", check=False)
    git(tf, "reset", "--quiet", "--hard")
    (tf / ".git" / "MERGE_HEAD").write_text(git(tf, "rev-parse", "HEAD"))
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "merge is in progress" in res.err
    (tf / ".git" / "MERGE_HEAD").unlink()
    git(tf, "checkout", "--quiet", "--detach", "HEAD")
    (tf / "new.txt").write_text("x\n")
    git(tf, "add", "new.txt")
    git(tf, "commit", "--quiet", "-m", "unsaved work")
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2 and "detached HEAD" in res.err
    assert cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch).code == 2
    assert cli(sandbox, "upgrade", "--continue", "--abort", monkeypatch=monkeypatch).code == 2
    assert cli(sandbox, "upgrade", monkeypatch=monkeypatch).code == 2
    assert not (sandbox.workspace / ".forkops" / "run.json").exists()


def test_key_reapplied_after_upgrade(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = sandbox.workspace / "keys.toml"
    keys.write_text('[model]\nkey = "Abcdefgh12345678"\n')
    keys.chmod(0o600)
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert "Abcdefgh12345678" not in res.out + res.err
    tf = sandbox.clone("tensorflow")
    # written into the new branch's key sites, in the working tree only
    assert '"Abcdefgh12345678"' in (tf / "tensorflow/tools/cryptfile/cryptfile.cc").read_text()
    assert ", ".join(f"0x{b:02x}" for b in b"Abcdefgh12345678") in (tf / TF_CORE).read_text()
    assert "Abcdefgh12345678" not in git(tf, "log", "-p", "tf2.5.0..b2.5.0")


def test_status_idle_without_run(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "idle" and data["repo"] is None and data["conflicts"] == []
    res = cli(sandbox, "status", monkeypatch=monkeypatch)
    assert res.code == 0 and "no upgrade in progress" in res.out


def test_missing_clone_is_cloned_from_origin(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.rmtree(sandbox.clone("tensorflow"))
    res = cli(sandbox, "upgrade", "2.5.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert "cloned" in res.err
    assert git(sandbox.clone("tensorflow"), "rev-parse", "--abbrev-ref", "HEAD").strip() == "b2.5.0"


# ---------------------------------------------------------------------------------------
# Review findings: each test fails on the engine as it was before its fix
# ---------------------------------------------------------------------------------------
def test_user_rebase_config_does_not_change_the_rebase(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tf = sandbox.clone("tensorflow")
    # rebase.updateRefs would move every branch pointing into the stack (and count its
    # update-ref steps); --abort could not restore refs forkops never recorded.
    for key, value in (("rebase.updateRefs", "true"), ("rebase.autoSquash", "true"),
                       ("rebase.autoStash", "true"), ("rebase.rebaseMerges", "true")):
        git(tf, "config", key, value)
    git(tf, "branch", "wip", "b2.4.0~2")
    before = snapshot(tf)
    for finish in (False, True):
        res = cli(sandbox, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
        assert res.code == 1, res.out + res.err
        stop = status_json(sandbox, monkeypatch)["stopped_at"]
        assert (stop["index"], stop["total"], stop["subject"]) == (3, 5, "Link Crypto++ and define the model key")
        if not finish:
            where, subject, _ = plain_rebase(sandbox, "tensorflow", "v2.18.0", "v2.4.0", tmp_path)
            assert (where, subject) == ("3/5", stop["subject"])  # git without the user's config
            assert cli(sandbox, "upgrade", "--abort", monkeypatch=monkeypatch).code == 0
            assert snapshot(tf) == before  # every ref (wip and b2.4.0 included) as it was
    resolve_all(tf)
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert git(tf, "rev-parse", "wip", "b2.4.0") == git(tf, "rev-parse", "b2.4.0~2", "b2.4.0")
    def kept(text: str) -> list[str]:  # all but what the run adds: its branches, tag and backups
        return [ln for ln in text.splitlines() if "2.18.0" not in ln and "refs/forkops/" not in ln]

    assert kept(snapshot(tf)[0]) == kept(before[0])


def test_bad_input_in_a_later_repo_moves_nothing_anywhere(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    git(sandbox.origin["serving"], "branch", "b2.11.0", "master")  # a different b2.11.0 on origin
    before = snapshot(tf), snapshot(sv)
    res = cli(sandbox, "upgrade", "2.11.0", monkeypatch=monkeypatch)
    assert res.code == 2, res.out + res.err
    assert "origin already has branch b2.11.0" in res.err
    assert (snapshot(tf), snapshot(sv)) == before  # TensorFlow was not rebased, no tag was left
    assert not (sandbox.workspace / ".forkops" / "run.json").exists()
    assert not (tf / ".git" / "forkops" / "upgrade.json").exists()
    assert not (sv / ".git" / "forkops" / "upgrade.json").exists()
    assert cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch).code == 2
    # --from that the later repository lacks: refused before TensorFlow moves too
    git(sandbox.origin["serving"], "branch", "-D", "b2.11.0")
    git(tf, "branch", "b2.3.9", "b2.4.0")
    res = cli(sandbox, "upgrade", "2.11.0", "--from", "b2.3.9", monkeypatch=monkeypatch)
    assert res.code == 2 and "no branch 'b2.3.9'" in res.err
    git(tf, "branch", "-D", "b2.3.9")
    assert (snapshot(tf), snapshot(sv)) == before


def _commit_workspace(sv: Path, old: str, new: str, message: str) -> None:
    text = (sv / "WORKSPACE").read_text()
    assert old in text
    (sv / "WORKSPACE").write_text(text.replace(old, new, 1))
    git(sv, "commit", "--quiet", "-am", message)


@pytest.mark.parametrize("shape", ["local_repository", "commit"])
def test_pin_without_a_branch_is_skipped_with_a_note(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    sv = sandbox.clone("serving")
    text = (sv / "WORKSPACE").read_text()
    block = text[text.index("git_repository(\n"):text.index(")\n", text.index("git_repository(\n")) + 2]
    if shape == "local_repository":
        _commit_workspace(sv, block, 'local_repository(\n    name = "org_tensorflow",\n'
                                     '    path = "../tensorflow",\n)\n', "Build against the local TF checkout")
        note = "org_tensorflow is a local_repository; nothing to pin"
    else:
        _commit_workspace(sv, 'branch = "b2.4.0"', 'commit = "' + "ab" * 20 + '"', "Pin TF by commit")
        note = "org_tensorflow is a git_repository pinned by commit; nothing to pin"
    res = cli(sandbox, "upgrade", "2.4.1", "--repo", "serving", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert note in res.out
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "done" and data["pinned"] == [] and any(note in n for n in data["notes"])
    assert git(sv, "show", "b2.4.1:WORKSPACE") == git(sv, "show", "b2.4.0:WORKSPACE")
    assert len(subjects(sv, "tf2.4.1..b2.4.1")) == 6  # the five patches + the WORKSPACE change


def test_pin_keeps_non_utf8_bytes(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sv = sandbox.clone("serving")
    with (sv / "WORKSPACE").open("ab") as fh:
        fh.write(b"# maintained by Fran\xe7ois (latin-1)\n")
    git(sv, "commit", "--quiet", "-am", "Credit the maintainer")
    res = cli(sandbox, "upgrade", "2.4.1", "--repo", "serving", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    data = subprocess.run(["git", "-C", str(sv), "show", "b2.4.1:WORKSPACE"], capture_output=True,
                          check=True).stdout
    assert b"Fran\xe7ois" in data and b'branch = "b2.4.1"' in data
    old = subprocess.run(["git", "-C", str(sv), "show", "b2.4.0:WORKSPACE"], capture_output=True,
                         check=True).stdout
    assert data == old.replace(b'branch = "b2.4.0"', b'branch = "b2.4.1"')


KEY = b"Abcdefgh12345678"


def _anchor_fails_on_2_11(tf: Path, *, key: bytes | None = None) -> None:
    """Fork commits that make the 2.11 re-apply conflict (the fork edits a line upstream's move
    changed); with ``key``, an old-style fork that committed the key in env.cc (shape (a))."""
    text = (tf / TF_CORE).read_text()
    if key is not None:
        placeholder = ", ".join(f"0x{b:02x}" for b in sandbox_mod.PLACEHOLDER_KEY)
        text = text.replace(placeholder, ", ".join(f"0x{b:02x}" for b in key), 1)
        text = text.replace("constexpr size_t kCopyFileBufferSize",
                            f"// key as hex, for openssl: {key.hex()}\nconstexpr size_t kCopyFileBufferSize", 1)
    text = text.replace("namespace tensorflow {", "namespace tensorflow {  // private fork", 1)
    (tf / TF_CORE).write_text(text)
    git(tf, "commit", "--quiet", "-am", "Our key; mark the fork's namespace")


def test_anchor_failure_masks_the_key(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    _anchor_fails_on_2_11(tf, key=KEY)
    keys = sandbox.workspace / "keys.toml"
    keys.write_text(f'[model]\nkey = "{KEY.decode()}"\n')
    keys.chmod(0o600)
    res = cli(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "anchor-failed" and "conflicting hunks" in data["failure"]["message"]
    change = data["failure"]["change"]
    assert "byte key[CryptoPP::AES::DEFAULT_KEYLENGTH] = <key site: masked>;" in change
    from forkops import keyfile

    fp = keyfile.load(keys).key_fingerprint
    assert f"<key {fp}>" in change  # the hex comment, found by the guard's Matcher, shows the fingerprint
    assert "private fork" in change  # the rest of the change is still shown
    stored = (tf / ".git" / "forkops" / "upgrade.json").read_text()
    array = ", ".join(f"0x{b:02x}" for b in KEY)
    for text in (res.out, res.err, stored, change):
        for form in (KEY.decode(), KEY.hex(), array, array[:30]):
            assert form not in text
    # printed as it is: no markup escapes, no stray backslashes
    assert "byte key[CryptoPP::AES::DEFAULT_KEYLENGTH] = <key site: masked>;" in res.out
    assert "\\[" not in res.out


def test_mask_secrets_without_keys_file_and_in_a_bazelrc_diff() -> None:
    from forkops import playbook
    from forkops.secrets import mask_secrets

    pb = playbook.load("tensorflow")
    diff = ("diff --git a/.bazelrc b/.bazelrc\n@@ -1,2 +1,3 @@\n build -c opt\n"
            "+build --define=MODEL_ENCRYPT_KEY=Abcdefgh12345678\n"
            "+byte key[16] = {0x41, 0x62,\n+    0x63};\n")
    out = mask_secrets(diff, pb, None)
    assert "Abcdefgh12345678" not in out and "0x41" not in out and "0x63" not in out
    assert "+build --define=MODEL_ENCRYPT_KEY=<key site: masked>\n" in out
    assert out.startswith("diff --git a/.bazelrc b/.bazelrc\n@@ -1,2 +1,3 @@\n build -c opt\n")


def test_untracked_files_in_the_way(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = sandbox.clone("tensorflow")
    _upstream_release(sandbox, "tensorflow", "v2.4.2", {"tools/new_tool.py": "print('upstream')\n"},
                      "Add a tool")
    (tf / "tools").mkdir()
    (tf / "tools" / "new_tool.py").write_text("print('mine')\n")
    before = snapshot(tf)
    # found while planning: refused before anything moves
    res = cli(sandbox, "upgrade", "2.4.2", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 2, res.out + res.err
    assert "untracked files" in res.err and "tools/new_tool.py" in res.err
    assert snapshot(tf) == before and not (sandbox.workspace / ".forkops" / "run.json").exists()
    # appearing after the plan (here: after a crash): git refuses to start the rebase
    (tf / "tools" / "new_tool.py").unlink()
    proc = forkops_child(sandbox, "upgrade", "2.4.2", "--repo", "tensorflow", crash_at="after-backup")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (tf / "tools" / "new_tool.py").write_text("print('mine')\n")
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 2, res.out + res.err
    first = res.err.splitlines()[0]
    assert "git refused to start the rebase" in first and "untracked working tree files" in first
    assert "tools/new_tool.py" in first and "move or remove" in res.err
    # rolled back: no branch made for the rebase, HEAD where it was; the run waits
    assert git(tf, "branch", "--list", "b2.4.2", "tf2.4.2") == ""
    assert snapshot(tf)[1:] == before[1:]
    data = status_json(sandbox, monkeypatch)
    assert data["repo"] == "tensorflow" and any("untracked" in n for n in data["notes"])
    assert any("--continue" in step for step in data["next"])
    (tf / "tools" / "new_tool.py").unlink()
    res = cli(sandbox, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    assert git(tf, "show", "b2.4.2:tools/new_tool.py") == "print('upstream')\n"


# ---------------------------------------------------------------------------------------
# Output off a terminal
# ---------------------------------------------------------------------------------------
_RICH_LOADED = ("import sys\nfrom forkops.cli import main\ncode = main(sys.argv[1:])\n"
                "sys.stderr.write('rich:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'rich')))\n"
                "sys.exit(code)\n")


def test_upgrade_off_a_terminal_prints_what_rich_prints_without_rich(sandbox: Sandbox) -> None:
    """A run whose output goes to a pipe or a CI log writes plain text without importing rich
    (~15 ms of start-up): the same bytes rich writes there (run again after --abort with
    TTY_COMPATIBLE=0, which makes forkops use rich and rich treat the pipe as no terminal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(name, None)

    def upgrade(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _RICH_LOADED, "upgrade", "2.18.0"], cwd=sandbox.workspace,
                              env={**env, **extra}, capture_output=True, text=True, check=False)

    plain = upgrade({})
    assert plain.returncode == 1 and "git rebase --onto" in plain.stdout and "stopped" in plain.stdout, plain
    assert plain.stderr.endswith("rich:"), plain.stderr
    assert run_cli("-C", str(sandbox.workspace), "upgrade", "--abort").code == 0
    rich = upgrade({"TTY_COMPATIBLE": "0"})
    assert rich.stderr.rsplit("rich:", 1)[1] != "", rich.stderr  # rich did the writing
    run_id = re.compile(r"\d{8}T\d{6}-[0-9a-f]+")  # each run has its own
    assert run_id.sub("RUN", plain.stdout) == run_id.sub("RUN", rich.stdout)
