"""Helpers shared by the command modules: consoles, the directory forkops runs in (``-C``),
workspace loading, JSON output and the options several commands take.

``-C DIR`` never changes the process's working directory: :func:`set_directory` records it and
every command takes "the current directory" from :func:`cwd`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.workspace import Workspace

KeysOption = Annotated[
    Path | None,
    typer.Option("--keys", metavar="FILE", help="keys.toml (default: $FORKOPS_KEYS, else the workspace's)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RepoOption = Annotated[str | None, typer.Option("--repo", metavar="REPO", help="Only this repository.")]

EXIT_CODES = (
    "\b\nExit codes: 0 done, 1 needs a person, 2 bad input or usage,\n"
    "3 an external tool failed, 130 interrupted."
)

_directory: Path | None = None


def set_directory(path: Path | None) -> None:
    """Record ``-C DIR`` (None: the process's working directory) for this invocation."""
    global _directory
    _directory = path


def directory() -> Path | None:
    """``-C DIR`` of the invocation running now (None without -C)."""
    return _directory


def cwd() -> Path:
    """The directory the command runs in: ``-C DIR`` if given, else the working directory."""
    return _directory if _directory is not None else Path.cwd()


def in_cwd(path: Path) -> Path:
    """``path`` as the user meant it: relative paths are relative to :func:`cwd` (like git -C)."""
    return path if path.is_absolute() or _directory is None else _directory / path


def console() -> Console:
    """Human output (stdout)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    """Progress and warnings (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    print(f"forkops: warning: {message}", file=sys.stderr)


def load_workspace() -> Workspace:
    """The workspace around :func:`cwd`. Its warnings and its playbooks' warnings (an unknown key
    such as ``must_contian``) are printed, so every command that uses the workspace shows them; a
    playbook that does not load is left for the command that needs it to report."""
    from forkops import workspace
    from forkops.errors import ForkopsError

    ws = workspace.load(cwd())
    for warning in ws.warnings:
        warn(warning)
    for repo in ws.repos:
        try:
            pb = ws.playbook(repo)
        except ForkopsError:
            continue
        for warning in pb.warnings:
            warn(warning)
    return ws


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
