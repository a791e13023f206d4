"""The forkops command line: parses, calls one engine function per command, prints, and maps
errors to exit codes in one place (:func:`main`).

``forkops``, ``forkops -h/--help`` and ``forkops --version`` are answered without importing
typer (``help_text.py``; a test keeps it identical to what typer prints), so they stay fast. Every
other invocation builds a typer app holding only the invoked command's module (``app.py``);
engine modules are imported inside the commands that need them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence

from forkops import __version__
from forkops.errors import ConfigError, ExitCode, ForkopsError, Interrupted

_FAST_HELP = (["--help"], ["-h"])


def split_global(args: Sequence[str]) -> tuple[list[str], str | None]:
    """The global options before the command, and the command (None for none)."""
    options: list[str] = []
    for arg in args:
        if arg.startswith("-") or (options and options[-1] == "-C"):  # an option, or -C's DIR
            options.append(arg)
        else:
            return options, arg
    return options, None


def _fast_path(args: list[str]) -> bool:
    """Answer top-level help and --version from static text (typer costs ~0.1 s to import and
    to build every command). Help only at the width the static text was rendered for; --version
    wherever it is among the global options (the typer option only documents it)."""
    if "--version" in split_global(args)[0]:
        print(f"forkops {__version__}")
        return True
    if args in _FAST_HELP and shutil.get_terminal_size().columns >= 80 and not os.environ.get("FORKOPS_NO_FAST_HELP"):
        from forkops.cli.help_text import TOP_HELP

        sys.stdout.write(TOP_HELP)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. The one exit path: a command returns an ExitCode (None
    is OK) or raises a ForkopsError; usage errors and interrupts are mapped here. Expected errors
    print one line (no traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if _fast_path(args):
        return ExitCode.OK
    from forkops.cli import app as app_mod
    from forkops.cli import common

    # Invocations nest (demo runs commands in-process): each starts without -C and gives the
    # outer one its directory back.
    outer = common.directory()
    common.set_directory(None)
    try:
        app = app_mod.build(args)
        result = app(args=args, prog_name="forkops", standalone_mode=False)
    except (KeyboardInterrupt, Interrupted):
        print("forkops: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except ForkopsError as exc:
        report_error(exc)
        return int(exc.exit_code)
    except Exception as exc:
        code = _usage_error(exc)
        return _crash() if code is None else code
    finally:
        common.set_directory(outer)
    if result is None:
        return ExitCode.OK
    return int(result) if isinstance(result, int) else _crash_bad_result(result)


def _usage_error(exc: Exception) -> int | None:
    """Click's usage errors (and its Abort, raised on Ctrl-C at a prompt) as one line plus a
    hint; None for anything else. Typer bundles click from 0.28 and depends on it before, so
    usage errors are recognised by shape, not by class."""
    import typer

    if isinstance(exc, typer.Abort):
        print("forkops: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    format_message = getattr(exc, "format_message", None)
    if not callable(format_message) or not hasattr(exc, "exit_code"):
        return None
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "forkops"
    if type(exc).__name__ == "NoArgsIsHelpError":  # `forkops guard`: the group's help, as click shows it
        print(format_message(), file=sys.stderr)
        return ExitCode.BAD_INPUT
    message = " ".join(str(format_message()).split())
    print(f"forkops: error: {message}", file=sys.stderr)
    print(f"forkops: hint: run '{path} --help'", file=sys.stderr)
    return ExitCode.BAD_INPUT


def _crash_bad_result(result: object) -> int:
    try:
        raise TypeError(f"a command returned {type(result).__name__}, not an ExitCode")
    except TypeError:
        return _crash()


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
