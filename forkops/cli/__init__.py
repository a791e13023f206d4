"""The forkops command line: parses, calls one engine function per command, prints, and maps
errors to exit codes in one place (:func:`main`).

``forkops``, ``forkops -h/--help`` and ``forkops --version`` are answered without importing
typer (``help_text.py``; a test keeps it identical to what typer prints), so they stay fast. Every
other invocation builds the typer app (``app.py``); engine modules are imported inside the
commands that need them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback

from forkops import __version__
from forkops.errors import ConfigError, ExitCode, ForkopsError

_FAST_HELP = (["--help"], ["-h"])


def _fast_path(args: list[str]) -> bool:
    """Answer top-level help and --version from static text (typer costs ~0.1 s to import and
    to build every command). Only at the width the static text was rendered for."""
    if args == ["--version"]:
        print(f"forkops {__version__}")
        return True
    if args in _FAST_HELP and shutil.get_terminal_size().columns >= 80 and not os.environ.get("FORKOPS_NO_FAST_HELP"):
        from forkops.cli.help_text import TOP_HELP

        sys.stdout.write(TOP_HELP)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Expected errors print one line (no traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if _fast_path(args):
        return ExitCode.OK
    import typer

    from forkops.cli.app import app

    try:
        result = app(args=args, prog_name="forkops", standalone_mode=False)
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
