"""The one way tests run git: the real executable on a real repository, never a mock; and the one
way they resolve a sandbox rebase's conflicts as a maintainer would."""

from __future__ import annotations

import subprocess
from pathlib import Path

from forkops import sandbox


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


def unmerged(repo: Path) -> list[str]:
    """The paths git lists as unmerged in ``repo``, sorted."""
    return sorted({line.split("\t", 1)[1] for line in git(repo, "ls-files", "-u").splitlines()})


def resolve_all(repo: Path) -> list[str]:
    """Resolve every unmerged file of the sandbox clone ``repo`` (its folder is named after the
    repository) as :func:`forkops.sandbox.resolve` defines, and stage it; return their paths."""
    paths = unmerged(repo)
    for path in paths:
        ours = git(repo, "show", f":2:{path}", check=False) or None
        theirs = git(repo, "show", f":3:{path}", check=False) or None
        content = sandbox.resolve(repo.name, path, ours=ours, theirs=theirs)
        if content is None:
            git(repo, "rm", "--quiet", "--", path)
        else:
            (repo / path).write_text(content)
            git(repo, "add", "--", path)
    return paths
