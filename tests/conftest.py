"""Hermetic test environment and real-repository fixtures.

Every test gets a temporary HOME, a fixed git identity and fixed dates, no system git config,
``GIT_EDITOR=false`` and no ``FORKOPS_KEYS``. forkops code that tries to write below the real
home folder is refused and fails the test (:class:`HomeGuard`), as pre-commit's tests refuse its
store in the real home. Repositories are real (``forkops.sandbox``), never mocks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import forkops
from forkops import sandbox as sandbox_mod
from tests.gitutil import git

REAL_HOME = Path(os.path.expanduser("~")).resolve()
_FORKOPS_DIR = str(Path(forkops.__file__).resolve().parent) + os.sep
_CHECKOUT = Path(__file__).resolve().parent.parent

# Audit events that change the filesystem, and which of their arguments are paths.
_WRITE_EVENTS = {
    "os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class WroteToRealHome(PermissionError):
    """forkops code tried to change something below the real home folder during a test."""


class HomeGuard:
    """Refuses, and records, every change below the real home folder made by forkops' own code
    in this process (an audit hook, so writes below the top level count too). Other processes'
    writes (a concurrent pip, a shell history) and the test harness's own are not seen, so they
    cannot fail a test. forkops subprocesses get a temporary HOME; :func:`own_names` covers
    what they could still write."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.active = False
        self.allowed: tuple[str, ...] = ()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags & _WRITE_FLAGS)):
                return
            paths: tuple[object, ...] = (path,)
        elif event == "os.mkdir" and os.path.isdir(os.fsdecode(args[0])):  # type: ignore[arg-type]
            return  # mkdir(exist_ok=True) of a folder that is there changes nothing
        elif event in _WRITE_EVENTS:
            paths = tuple(args[i] for i in _WRITE_EVENTS[event] if i < len(args))
        else:
            return
        for p in paths:
            if isinstance(p, str | bytes | os.PathLike) and self._in_real_home(p) and self._from_forkops():
                self.violations.append(f"{event} {os.fsdecode(p)}")
                raise WroteToRealHome(f"forkops wrote to the real home folder during a test: {event} {p!r}")

    def _in_real_home(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> bool:
        full = os.path.abspath(os.fsdecode(path))
        home = str(REAL_HOME)
        return (full == home or full.startswith(home + os.sep)) and not full.startswith(self.allowed)

    @staticmethod
    def _from_forkops() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(_FORKOPS_DIR):
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False


def own_names() -> dict[str, tuple[int, int]]:
    """mtime and size of everything below the real home that forkops or the git it runs would
    write (its config, keys and workspace names), at any depth; nothing else, so that other
    programs writing to the home folder cannot fail a test."""
    roots = [REAL_HOME / name for name in (".gitconfig", ".config/git", "keys.toml", "forkops.toml")]
    for folder in (REAL_HOME, REAL_HOME / ".config", REAL_HOME / ".cache", REAL_HOME / ".local" / "state"):
        roots += folder.glob("*forkops*")
    # A checkout in ~/forkops is the test run's own business (pytest writes its cache there).
    roots = [r for r in roots if not (r == _CHECKOUT or r in _CHECKOUT.parents)]
    found: dict[str, tuple[int, int]] = {}
    for root in roots:
        for path in (root, *(root.rglob("*") if root.is_dir() else ())):
            with contextlib.suppress(OSError):
                st = path.lstat()
                found[str(path)] = (st.st_mtime_ns, st.st_size)
    return found


_guard = HomeGuard()


@pytest.fixture
def home_guard() -> HomeGuard:
    return _guard


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
    # pytest's own temporary folders may live below the real home: writes there are the test's.
    _guard.allowed = (str(tmp_path_factory.getbasetemp().resolve()) + os.sep,)
    _guard.violations.clear()
    before = own_names()
    _guard.active = True
    try:
        yield
    finally:
        _guard.active = False
    assert not _guard.violations, f"forkops wrote to the real home folder {REAL_HOME}: {_guard.violations}"
    after = own_names()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"forkops' files in the real home folder {REAL_HOME} changed: {changed}"


@pytest.fixture
def sandbox(tmp_path: Path) -> sandbox_mod.Sandbox:
    """A fresh generated sandbox (upstreams, bare forks, workspace with clones)."""
    return sandbox_mod.build(tmp_path / "sb")


@pytest.fixture
def run_git() -> Callable[..., str]:
    """:func:`tests.gitutil.git` as a fixture (for modules that take their helpers that way)."""
    return git


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The crash sweep's counts (tests/test_crash.py): kill points tried, outcomes by kind."""
    from tests.crashkit import summarize

    summarize(terminalreporter)
