"""The one atomic writer and the one .gitignore editor: what each promises, tried against real
files, a real SIGKILL and real ``git check-ignore``."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forkops import fsutil
from tests.gitutil import git, git_run

CODE = Path(__file__).resolve().parents[1]


class Boom(Exception):
    pass


@pytest.fixture(params=["unnamed", "named"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the writer works: O_TMPFILE (this machine) and the hidden named file of a file
    system without it (the capability probe answers "no")."""
    if request.param == "named":
        monkeypatch.setattr(fsutil, "_unnamed_file", lambda folder: None)
    return str(request.param)


def test_replaces_whole_and_sets_the_mode_before_the_first_byte(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("old")
    old_umask = os.umask(0)  # the mode is the one asked for, whatever the umask
    try:
        with fsutil.atomic_writer(path, mode=0o600) as fh:
            assert stat.S_IMODE(os.fstat(fh.fileno()).st_mode) == 0o600
            fh.write(b"new")
            assert path.read_text() == "old"  # nothing is visible before the block ends
        fsutil.write_atomic(tmp_path / "hook", "#!/bin/sh\n", mode=0o755)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "hook").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hook", "keys.toml"]


def test_an_error_leaves_the_old_file_and_nothing_else(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(Boom), fsutil.atomic_writer(path, infix=".forkops-key.") as fh:
        fh.write(b"half")
        raise Boom
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from forkops import fsutil

    with fsutil.atomic_writer(Path(sys.argv[1]), mode=0o600) as fh:
        fh.write(b"half of a key")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # mid-write, no handler can run
""")


def test_sigkill_mid_write_leaves_the_old_file_and_no_temporary_name(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("old")
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(CODE)}, timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.toml"]  # the half-written key had no name


def ignored(repo: Path, rel: str) -> bool:
    return git_run(repo, "check-ignore", "-q", "--no-index", rel).returncode == 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "repo")
    return tmp_path / "repo"


def test_ensure_ignored_appends_keeping_every_byte_and_git_agrees(repo: Path) -> None:
    (repo / ".gitignore").write_text("build/\n*.log")  # no final newline
    assert not ignored(repo, "keys.toml")
    path = fsutil.ensure_ignored(repo, "keys.toml", comment="the model key (forkops)")
    assert path == repo / ".gitignore"
    assert path.read_text() == "build/\n*.log\n# the model key (forkops)\nkeys.toml\n"
    assert ignored(repo, "keys.toml") and ignored(repo, "x.log")
    before = path.stat().st_mtime_ns, path.stat().st_ino
    fsutil.ensure_ignored(repo, "keys.toml", comment="the model key (forkops)")
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before  # once is enough: not rewritten


def test_ensure_ignored_creates_the_file(repo: Path) -> None:
    fsutil.ensure_ignored(repo / ".forkops", "*", comment="forkops run state: never committed")
    assert (repo / ".forkops" / ".gitignore").read_text() == "# forkops run state: never committed\n*\n"
    assert ignored(repo, ".forkops/lock")


@pytest.mark.parametrize(("existing", "already"), [
    ("/keys.toml\n", True),      # anchored: the same file
    ("keys.toml   \n", True),    # git drops trailing blanks
    (" keys.toml\n", False),     # a leading blank is part of git's pattern: not this file
    ("keys.toml.bak\n", False),
    ("#keys.toml\n", False),
])
def test_ensure_ignored_reads_lines_as_git_does(repo: Path, existing: str, already: bool) -> None:
    (repo / ".gitignore").write_text(existing)
    assert ignored(repo, "keys.toml") is already
    fsutil.ensure_ignored(repo, "keys.toml")
    assert ignored(repo, "keys.toml")
    assert (repo / ".gitignore").read_text() == existing + ("" if already else "keys.toml\n")


def test_ensure_ignored_anchors_a_nested_path(repo: Path) -> None:
    fsutil.ensure_ignored(repo, "/secrets/keys.toml")
    assert ignored(repo, "secrets/keys.toml") and not ignored(repo, "other/secrets/keys.toml")
    fsutil.ensure_ignored(repo, "/secrets/keys.toml")
    fsutil.ensure_ignored(repo, "secrets/keys.toml")  # the same file, said without the "/"
    assert (repo / ".gitignore").read_text() == "/secrets/keys.toml\n"
