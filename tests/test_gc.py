"""``forkops gc``: old runs' backup refs and finished state go, the newest N stay, a run in
progress is never touched (``--abort`` still restores it exactly afterwards).

Runs are real upgrades in the sandbox; older runs are their backup refs recorded under the same
layout with older run ids (run ids start with the run's UTC start time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forkops.sandbox import Sandbox
from tests.clihelp import run_cli
from tests.gitutil import git

OLD_RUNS = ("20240101T000000-aaaaaa", "20240201T000000-bbbbbb", "20240301T000000-cccccc",
            "20240401T000000-dddddd")


def backup_runs(repo: Path) -> list[str]:
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/forkops/backup").split()
    return sorted({r.split("/")[3] for r in refs})


def record_old_runs(repo: Path) -> None:
    """Backup refs as earlier runs left them: HEAD and the start branch, per run."""
    head = git(repo, "rev-parse", "b2.4.0").strip()
    lines = "".join(f"create refs/forkops/backup/{run}/{ref} {head}\n"
                    for run in OLD_RUNS for ref in ("HEAD", "heads/b2.4.0"))
    git(repo, "update-ref", "--stdin", input=lines)


def gc(ws: Path, *args: str) -> dict[str, object]:
    res = run_cli("-C", str(ws), "gc", "--json", *args)
    assert res.code == 0, res.err
    data: dict[str, object] = json.loads(res.out)
    return data


@pytest.fixture
def finished(sandbox: Sandbox) -> tuple[Path, str]:
    """A workspace whose tensorflow fork has four old runs and one real finished upgrade."""
    tf = sandbox.clone("tensorflow")
    record_old_runs(tf)
    res = run_cli("-C", str(sandbox.workspace), "upgrade", "2.5.0", "--repo", "tensorflow")
    assert res.code == 0, res.err
    real = [r for r in backup_runs(tf) if r not in OLD_RUNS]
    assert len(real) == 1
    return sandbox.workspace, real[0]


def test_keeps_the_newest_three_by_default(finished: tuple[Path, str]) -> None:
    ws, real = finished
    tf = ws / "tensorflow"
    data = gc(ws)
    assert data["removed_runs"] == list(OLD_RUNS[:2])
    assert data["kept"] == [*OLD_RUNS[2:], real]
    assert backup_runs(tf) == sorted([*OLD_RUNS[2:], real])
    assert data["files"] == []  # the state of the newest run stays: status still tells it
    status = json.loads(run_cli("-C", str(ws), "status", "--json").out)
    assert status["state"] == "done" and status["version"] == "2.5.0"
    assert git(tf, "rev-parse", "b2.5.0")  # gc never touches the user's branches


def test_keep_zero_removes_every_finished_run_and_its_state(finished: tuple[Path, str]) -> None:
    ws, real = finished
    tf = ws / "tensorflow"
    other = git(tf, "rev-parse", "HEAD").strip()
    git(tf, "update-ref", "refs/forkops/other", other)  # not a backup: not gc's business
    data = gc(ws, "--keep", "0")
    assert data["removed_runs"] == sorted([*OLD_RUNS, real]) and data["kept"] == []
    assert backup_runs(tf) == []
    assert git(tf, "rev-parse", "refs/forkops/other").strip() == other
    assert not (tf / ".git" / "forkops" / "upgrade.json").exists()
    assert not (ws / ".forkops" / "run.json").exists()
    assert "no upgrade in progress" in run_cli("-C", str(ws), "status").out


def test_dry_run_removes_nothing(finished: tuple[Path, str]) -> None:
    ws, _ = finished
    before = backup_runs(ws / "tensorflow")
    data = gc(ws, "--keep", "0", "--dry-run")
    assert data["dry_run"] is True and len(data["removed_runs"]) == 5  # type: ignore[arg-type]
    assert backup_runs(ws / "tensorflow") == before
    assert (ws / ".forkops" / "run.json").exists()


def snapshot(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
            git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain=v1"))


def test_a_run_in_progress_is_never_touched(sandbox: Sandbox) -> None:
    ws, tf = sandbox.workspace, sandbox.clone("tensorflow")
    record_old_runs(tf)
    start = snapshot(tf)
    res = run_cli("-C", str(ws), "upgrade", "2.18.0", "--repo", "tensorflow")
    assert res.code == 1, res.out + res.err  # stopped on a conflict
    running = [r for r in backup_runs(tf) if r not in OLD_RUNS]
    data = gc(ws, "--keep", "0")
    assert data["removed_runs"] == list(OLD_RUNS) and data["kept"] == running
    assert backup_runs(tf) == running
    assert json.loads(run_cli("-C", str(ws), "status", "--json").out)["state"] == "conflict"
    assert run_cli("-C", str(ws), "upgrade", "--abort").code == 0
    # Exactly as before the run, less the old runs' refs gc removed.
    refs, head, worktree = start
    kept_refs = "".join(line + "\n" for line in refs.splitlines() if "/backup/" not in line)
    assert snapshot(tf) == (kept_refs, head, worktree)


def test_negative_keep_is_bad_input(sandbox: Sandbox) -> None:
    res = run_cli("-C", str(sandbox.workspace), "gc", "--keep", "-1")
    assert res.code == 2 and res.err == "forkops: error: --keep -1: must be 0 or more\n"


def test_outside_a_workspace_is_bad_input(tmp_path: Path) -> None:
    res = run_cli("-C", str(tmp_path), "gc")
    assert res.code == 2 and "no forkops.toml" in res.err
