"""Hermetic test environment and real-repository fixtures.

Every test gets a temporary HOME, a fixed git identity and fixed dates, no system git config,
``GIT_EDITOR=false`` and no ``FORKOPS_KEYS``; a test that writes into the real home folder
fails. Repositories are real (``forkops.sandbox``), never mocks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkops import sandbox as sandbox_mod

REAL_HOME = Path(os.path.expanduser("~"))


def _home_snapshot() -> dict[str, float]:
    try:
        return {p.name: p.stat().st_mtime for p in REAL_HOME.iterdir()}
    except OSError:
        return {}


@pytest.fixture(autouse=True)
def hermetic_seal(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    for key in list(os.environ):
        if key.startswith("GIT_") or key.startswith("FORKOPS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.com")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2024-01-01T00:00:00+0000")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-01-01T00:00:00+0000")
    monkeypatch.setenv("GIT_EDITOR", "false")
    monkeypatch.setenv("GIT_MERGE_AUTOEDIT", "no")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test User\n\temail = test@example.com\n"
        "[init]\n\tdefaultBranch = master\n[advice]\n\tdetachedHead = false\n"
    )
    before = _home_snapshot()
    yield
    after = _home_snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"test wrote to the real home folder {REAL_HOME}: {changed}"


@pytest.fixture
def sandbox(tmp_path: Path) -> sandbox_mod.Sandbox:
    """A fresh generated sandbox (upstreams, bare forks, workspace with clones)."""
    return sandbox_mod.build(tmp_path / "sb")


@pytest.fixture
def run_git():
    def run(repo: Path, *args: str, check: bool = True) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=check, capture_output=True, text=True).stdout

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The crash sweep's counts (tests/test_crash.py): kill points tried, outcomes by kind."""
    from tests.crashkit import summarize

    summarize(terminalreporter)
