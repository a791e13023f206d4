"""The forkops command line: parses, calls one engine function per command, prints, and maps
errors to exit codes in one place (:func:`main`).

Engine modules are imported inside the commands that need them so ``forkops --help`` stays
fast (GitPython and cryptography are not imported for it).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import typer

from forkops import __version__
from forkops.errors import BadInput, ConfigError, ExitCode, ForkopsError

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
COMMAND_MODULES = ("demo", "init", "upgrade", "check", "keys", "crypto", "build", "playbook")


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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Expected errors print one line (no traceback)."""
    try:
        result = app(args=argv, prog_name="forkops", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("forkops: interrupted", file=sys.stderr)
        return 130
    except ForkopsError as exc:
        report_error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("forkops: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors come from the click that typer bundles; recognise them by shape.
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):
            show(file=sys.stderr)
            return ExitCode.BAD_INPUT
        return _crash()
    return int(result) if isinstance(result, int) else ExitCode.OK


def report_error(exc: ForkopsError) -> None:
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            print(f"forkops: error: {problem}", file=sys.stderr)
    else:
        print(f"forkops: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"forkops: hint: {exc.hint}", file=sys.stderr)


def _crash() -> int:
    """An unexpected error: a short line, the traceback in a log file (never on screen)."""
    fd, path = tempfile.mkstemp(prefix="forkops-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"forkops {__version__}\nargv: {sys.argv[:2]} ...\n\n")
        fh.write(traceback.format_exc())
    kind = sys.exc_info()[0]
    print(f"forkops: internal error ({kind.__name__ if kind else 'unknown'}); details in {path}",
          file=sys.stderr)
    return ExitCode.EXTERNAL
