"""The typer application: global options and every command module's commands.

Command modules import their engine modules inside the command functions so that building this
app (needed for any command) stays cheap.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer

from forkops import __version__
from forkops.errors import BadInput

app = typer.Typer(
    name="forkops",
    help="Keep private TensorFlow and TensorFlow Serving forks current with upstream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering help with rich costs ~0.15 s of imports
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module registers its commands; only commands that work are registered.
COMMAND_MODULES = ("demo", "init", "upgrade", "check", "keys", "crypto", "cryptlib", "build", "playbook")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"forkops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    directory: Annotated[
        Path | None, typer.Option("-C", metavar="DIR", help="Run as if forkops was started in DIR (like git -C).")
    ] = None,
) -> None:
    if directory is not None:
        try:
            os.chdir(directory)
        except OSError as exc:
            raise BadInput(f"-C {directory}: {exc.strerror}") from None


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"forkops.cli.{_name}")
    _module.register(app)
