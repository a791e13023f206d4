"""The command line: parses, calls one engine function per command, prints, and maps errors to
exit codes in one place (:func:`main`).

Two invocations are answered without typer (~30 ms to import, more to build a command), so
they stay close to the cost of starting Python:

* ``forkops``, ``forkops -h/--help`` and ``forkops --version``: static text (``help_text.py``;
  a test keeps it identical to what typer prints). ``FORKOPS_NO_FAST_HELP=1`` turns it off.
* ``forkops [-C DIR] status [--json]``, exactly these words: parsed by hand (:func:`_status_args`)
  and run by the same function the typer command calls (``forkops.cli.status.show``), under the
  same error handling. Anything else (``status --help``, ``--repo``, an unknown or repeated
  option, ``-CDIR``) goes to typer, which prints the help or the usage error.
  ``FORKOPS_NO_FAST_STATUS=1`` turns it off; tests/test_cli_status.py compares both paths'
  stdout, stderr and exit code for every combination.

Every other invocation builds a typer app holding only the invoked command's module
(``app.py``); engine modules are imported inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
    if args in _FAST_HELP and not os.environ.get("FORKOPS_NO_FAST_HELP"):
        import shutil

        if shutil.get_terminal_size().columns < 80:
            return False
        from forkops.cli.help_text import TOP_HELP

        sys.stdout.write(TOP_HELP)
        return True
    return False


def _status_args(args: list[str]) -> tuple[Path | None, bool] | None:
    """(``-C DIR``, ``--json``) when ``args`` is exactly ``[-C DIR] status [--json]``; None for
    anything else, which typer parses. A DIR starting with ``-`` is left to typer as well."""
    if os.environ.get("FORKOPS_NO_FAST_STATUS"):
        return None
    directory = None
    if args[:1] == ["-C"] and len(args) > 1 and not args[1].startswith("-"):
        directory, args = Path(args[1]), args[2:]
    if args in (["status"], ["status", "--json"]):
        return directory, len(args) == 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. The one exit path: a command returns an ExitCode (None
    is OK) or raises a ForkopsError; usage errors and interrupts are mapped here. Expected errors
    print one line (no traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if _fast_path(args):
        return ExitCode.OK
    from forkops.cli import context

    # Invocations nest (demo runs commands in-process): each starts without -C and gives the
    # outer one its directory back.
    outer = context.directory()
    context.set_directory(None)
    try:
        result = _run(args)
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
        context.set_directory(outer)
    if result is None:
        return ExitCode.OK
    return int(result) if isinstance(result, int) else _crash_bad_result(result)


def _run(args: list[str]) -> object:
    """The command's result: ``status`` by hand when :func:`_status_args` takes it, else typer."""
    status = _status_args(args)
    if status is not None:
        from forkops.cli import context
        from forkops.cli.status import show

        directory, as_json = status
        if directory is not None:
            context.use_directory(directory)
        return show(as_json=as_json)
    from forkops.cli import app as app_mod

    app = app_mod.build(args)
    return app(args=args, prog_name="forkops", standalone_mode=False)


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
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="forkops-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"forkops {__version__}\nargv: {sys.argv[:2]} ...\n\n")
        fh.write(traceback.format_exc())
    kind = sys.exc_info()[0]
    print(f"forkops: internal error ({kind.__name__ if kind else 'unknown'}); details in {path}",
          file=sys.stderr)
    return ExitCode.EXTERNAL
