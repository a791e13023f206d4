"""``forkops doctor`` inside a workspace: git strategy, each clone's identity, the guard hooks and
their interpreter, the keys file's mode; every problem comes with its fix.

Docker is the stand-in client (tests/standins/docker); git and the repositories are real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from forkops import doctor, git, guard
from forkops.sandbox import Sandbox
from tests.clihelp import run_cli
from tests.gitutil import git as run_git

STANDINS = Path(__file__).parent / "standins"
KEYS = '[model]\ncipher = "aes-128-cbc"\nkey = "Tst-Key-0123ABCD"\n'  # test data, not a real key


@pytest.fixture
def ws(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sandbox workspace with the stand-in docker first on PATH and a private keys file."""
    state = tmp_path / "docker-state"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"runtimes": {"runc": {}}}))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_DOCKER_STATE", str(state))
    keys = sandbox.workspace / "keys.toml"
    keys.write_text(KEYS)
    keys.chmod(0o600)
    return sandbox.workspace


def checks(root: Path, *args: str) -> tuple[int, dict[str, dict[str, str | None]]]:
    res = run_cli("-C", str(root), "doctor", "--json", *args)
    return res.code, {c["check"]: c for c in json.loads(res.out)}


def test_workspace_checks_without_hooks(ws: Path) -> None:
    code, found = checks(ws)
    assert code == 0  # warnings only
    strategy = "merge-tree --merge-base" if git.has_merge_base_option() else "two throw-away commits"
    assert found["git"]["verdict"] == "ok" and strategy in str(found["git"]["detail"])
    for repo in ("tensorflow", "serving"):
        assert found[f"{repo}: identity"]["verdict"] == "ok"
        hooks = found[f"{repo}: guard hooks"]
        assert hooks["verdict"] == "warn" and hooks["detail"] == f"not installed: {', '.join(guard.HOOKS)}"
        assert hooks["fix"] == "forkops guard install"
    assert found["keys file"]["verdict"] == "ok" and "Tst-Key" not in json.dumps(found)


def test_hooks_whose_python_is_gone_fail_with_the_fix(ws: Path, tmp_path: Path) -> None:
    gone = tmp_path / "old-venv" / "bin" / "python"
    guard.install_hooks(ws / "tensorflow", ws / "keys.toml", python=str(gone))
    guard.install_hooks(ws / "serving", ws / "keys.toml", python=sys.executable)
    code, found = checks(ws)
    assert code == 2
    tf = found["tensorflow: guard hooks"]
    assert tf["verdict"] == "fail" and str(gone) in str(tf["detail"]) and tf["fix"]
    assert found["serving: guard hooks"] == {"check": "serving: guard hooks", "verdict": "ok",
                                             "detail": f"{', '.join(guard.HOOKS)} installed", "fix": None}
    for hook in guard.HOOKS:
        assert doctor.hook_interpreter(ws / "serving" / ".git" / "hooks" / hook) == sys.executable


def test_missing_identity_fails_with_the_fix(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    # No guessing from the host name: what a commit would then do is what doctor must report.
    run_git(ws / "tensorflow", "config", "user.useConfigOnly", "true")
    commit = run_git(ws / "tensorflow", "commit", "--allow-empty", "-m", "x", check=False)
    assert commit == ""  # git really refuses to commit here
    code, found = checks(ws)
    assert code == 2
    ident = found["tensorflow: identity"]
    assert ident["verdict"] == "fail" and "git config --global user.name" in str(ident["fix"])


def test_loose_keys_file_fails_with_chmod(ws: Path) -> None:
    (ws / "keys.toml").chmod(0o644)
    code, found = checks(ws)
    assert code == 2
    assert found["keys file"]["verdict"] == "fail" and found["keys file"]["fix"] == f"chmod 600 {ws / 'keys.toml'}"
    (ws / "keys.toml").chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert checks(ws)[1]["keys file"]["verdict"] == "ok"


def test_missing_clone_fails(ws: Path) -> None:
    import shutil

    shutil.rmtree(ws / "serving")
    code, found = checks(ws)
    assert code == 2
    assert found["serving: clone"]["verdict"] == "fail" and found["serving: clone"]["fix"] == \
        "forkops init (clones what is missing)"


def test_human_output_prints_each_fix(ws: Path) -> None:
    (ws / "keys.toml").chmod(0o644)
    res = run_cli("-C", str(ws), "doctor")
    assert res.code == 2
    text = " ".join(res.out.split())
    assert "fix: chmod 600" in text and "fix: forkops guard install" in text


def test_hook_interpreter_of_earlier_hooks(tmp_path: Path) -> None:
    """Hooks installed by earlier versions name the Python on the line that runs forkops."""
    hook = tmp_path / "pre-push"
    hook.write_text("#!/bin/sh\n# forkops-guard: installed by `forkops set-key`\n"
                    "feed | '/opt/venv 1/bin/python' -P -m forkops guard hook pre-push --keys k -- \"$@\"\n")
    assert doctor.hook_interpreter(hook) == "/opt/venv 1/bin/python"
    hook.write_text("#!/bin/sh\nexec something-else\n")
    assert doctor.hook_interpreter(hook) is None
