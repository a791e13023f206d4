"""What the command modules share: the typer options several commands take, the exit-code
epilog, and (from ``forkops.cli.context``, which imports neither typer nor rich) the directory
forkops runs in, workspace loading, consoles, warnings and JSON output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forkops.cli.context import (
    console,
    cwd,
    directory,
    err_console,
    in_cwd,
    load_workspace,
    print_json,
    set_directory,
    warn,
)

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

