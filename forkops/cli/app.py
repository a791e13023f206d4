"""The typer application, built per invocation with only the command module it needs.

``COMMANDS`` maps each top-level command to the module under ``forkops.cli`` that registers it;
:func:`build` imports and registers that module only (a typer command costs its imports and its
parameter conversion). Top-level help, an unknown command and a command missing from the table
get every module in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from forkops.cli import common, split_global
from forkops.cli.context import use_directory
from forkops.errors import Interrupted

# Every command module, in the order top-level help lists their commands.
COMMAND_MODULES = ("demo", "init", "upgrade", "push", "check", "keys", "crypto", "cryptlib", "build", "doctor",
                   "gc", "playbook", "resolutions", "ci")

# Top-level command -> its module. tests/test_cli_help.py keeps it equal to what the modules register.
COMMANDS = {
    "demo": "demo",
    "init": "init",
    "upgrade": "upgrade",
    "status": "upgrade",
    "push": "push",
    "check": "check",
    "nightly": "check",
    "set-key": "keys",
    "guard": "keys",
    "encrypt": "crypto",
    "decrypt": "crypto",
    "inspect": "crypto",
    "build": "build",
    "smoke": "build",
    "doctor": "doctor",
    "gc": "gc",
    "cryptlib": "cryptlib",
    "playbook": "playbook",
    "resolutions": "resolutions",
    "ci": "ci",
}


def _root(
    version: Annotated[  # answered before typer runs (forkops.cli._fast_path); here for --help
        bool, typer.Option("--version", is_eager=True, help="Show the version and exit.")
    ] = False,
    directory: Annotated[
        Path | None, typer.Option("-C", metavar="DIR", help="Run as if forkops was started in DIR (like git -C).")
    ] = None,
) -> None:
    if directory is not None:
        use_directory(directory)


def build(args: Sequence[str] = ()) -> typer.Typer:
    """The app for ``args``: only the invoked command's module registered, or every module."""
    app = typer.Typer(
        name="forkops",
        help="Keep private TensorFlow and TensorFlow Serving forks current with upstream.",
        epilog=common.EXIT_CODES,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain click help: rendering help with rich costs ~0.15 s of imports
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    name = split_global(args)[1]
    modules = (COMMANDS[name],) if name in COMMANDS else COMMAND_MODULES
    for module in modules:
        importlib.import_module(f"forkops.cli.{module}").register(app)
    _finish(app)
    return app


def _finish(app: typer.Typer) -> None:
    """What every command shares: the exit-code epilog, and path arguments taken relative to -C."""
    for info in app.registered_commands:
        info.epilog = info.epilog or common.EXIT_CODES
        if info.callback is not None:
            info.callback = _command(info.callback)
    for group in app.registered_groups:
        group.epilog = group.epilog or common.EXIT_CODES
        if group.typer_instance is not None:
            _finish(group.typer_instance)


def _command(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Rebase relative path parameters onto ``-C DIR`` (typer passes parameters by keyword), and
    turn Ctrl-C into :class:`Interrupted` (typer would turn it into a silent exit 130).
    Sub-apps are module-level objects: a callback is wrapped once however often apps are built."""
    if getattr(callback, "_forkops_command", False):
        return callback

    @functools.wraps(callback)
    def run(**params: Any) -> Any:
        try:
            return callback(**{key: _rebase(value) for key, value in params.items()})
        except KeyboardInterrupt:
            raise Interrupted() from None

    run._forkops_command = True  # type: ignore[attr-defined]
    return run


def _rebase(value: Any) -> Any:
    if isinstance(value, Path):
        return common.in_cwd(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, Path) for v in value):
        return type(value)(common.in_cwd(v) for v in value)
    return value
