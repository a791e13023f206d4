"""The one way tests run git: the real executable on a real repository, never a mock.

Test modules still carrying their own ``git()`` (test_build, test_guard, test_keys, test_predict,
test_sandbox, test_upgrade) are to move here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_run(repo: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``git -C repo ARGS`` (``input`` on its stdin) whatever its exit status."""
    return subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, text=True, check=False)


def git(repo: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    """stdout of ``git -C repo ARGS``; with ``check`` a failure is an AssertionError naming the
    command and git's stderr."""
    proc = git_run(repo, *args, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
