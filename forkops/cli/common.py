"""What the command modules share: the typer options several commands take, the exit-code
epilog, rich consoles, and (from ``forkops.cli.context``, which needs no typer) the directory
forkops runs in, workspace loading, warnings and JSON output.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.context import cwd, directory, in_cwd, load_workspace, print_json, set_directory, warn

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_CODES", "JsonOption", "KeysOption", "RepoOption", "console", "cwd", "directory", "err_console",
           "in_cwd", "load_workspace", "print_json", "set_directory", "warn"]

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


def console() -> Console:
    """Human output (stdout)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    """Progress and warnings (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)
