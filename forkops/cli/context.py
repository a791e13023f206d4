"""What a command needs besides typer: the directory it runs in (``-C``), the workspace, rich
consoles (rich imported when one is made), warnings and JSON on the standard streams.

``forkops status`` is answered from here without typer (``forkops.cli.status``); the command
modules reach these through ``forkops.cli.common``. ``-C DIR`` never changes the process's
working directory: :func:`set_directory` records it and every command takes "the current
directory" from :func:`cwd`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from forkops.errors import BadInput

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.workspace import Workspace

_directory: Path | None = None


def set_directory(path: Path | None) -> None:
    """Record ``-C DIR`` (None: the process's working directory) for this invocation."""
    global _directory
    _directory = path


def use_directory(path: Path) -> None:
    """``-C DIR`` as given on the command line: DIR must be a folder."""
    if not path.is_dir():
        raise BadInput(f"-C {path}: no such directory")
    set_directory(path.resolve())


def directory() -> Path | None:
    """``-C DIR`` of the invocation running now (None without -C)."""
    return _directory


def cwd() -> Path:
    """The directory the command runs in: ``-C DIR`` if given, else the working directory."""
    return _directory if _directory is not None else Path.cwd()


def in_cwd(path: Path) -> Path:
    """``path`` as the user meant it: relative paths are relative to :func:`cwd` (like git -C)."""
    return path if path.is_absolute() or _directory is None else _directory / path


# Variables that make rich treat output that is not a terminal as one (see
# rich.console.Console.is_terminal).
_FORCE_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE")


def may_be_terminal(stream: TextIO) -> bool:
    """Whether rich could treat ``stream`` as a terminal (colours, progress bars): it is one, or
    the environment forces it. Where not, commands write plain text without importing rich."""
    return stream.isatty() or any(name in os.environ for name in _FORCE_TERMINAL)


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
    """The workspace around :func:`cwd`. Its warnings and its playbook files' warnings (an
    unknown key such as ``must_contian``) are printed, so every command that uses the workspace
    shows them; a playbook that does not load is left for the command that needs it to report.
    Built-in playbooks are not parsed here: they have no warnings (tests/test_cli_status.py)."""
    from forkops import workspace
    from forkops.errors import ForkopsError

    ws = workspace.load(cwd())
    for warning in ws.warnings:
        warn(warning)
    for repo in ws.repos:
        if repo.playbook in workspace.BUILTIN_PLAYBOOKS:
            continue
        try:
            pb = ws.playbook(repo)
        except ForkopsError:
            continue
        for warning in pb.warnings:
            warn(warning)
    return ws


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
