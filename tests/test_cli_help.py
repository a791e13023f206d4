"""Top-level help is served from static text (no typer import); it must equal typer's rendering.

Run this file as a script to print the current rendering for ``forkops/cli/help_text.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest


def typer_help() -> str:
    from forkops.cli.app import app

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        app(args=["--help"], prog_name="forkops", standalone_mode=False)
    return buf.getvalue()


def test_static_help_equals_typer_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    from forkops.cli.help_text import TOP_HELP

    monkeypatch.setenv("COLUMNS", "80")
    assert typer_help() == TOP_HELP, "regenerate forkops/cli/help_text.py: python tests/test_cli_help.py"


def test_help_and_version_do_not_import_typer() -> None:
    code = ("import sys; from forkops.cli import main; main(['--help']); main(['--version']); "
            "sys.stderr.write(' '.join(m for m in ('typer', 'rich', 'git', 'cryptography') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.stderr == ""
    assert proc.stdout.startswith("Usage: forkops [OPTIONS] COMMAND [ARGS]...")
    assert proc.stdout.rstrip().endswith("forkops " + __import__("forkops").__version__)


def test_narrow_terminals_get_typer_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.clihelp import run_cli

    monkeypatch.setenv("COLUMNS", "60")
    res = run_cli("--help")
    assert res.code == 0 and "playbook" in res.out


if __name__ == "__main__":
    os.environ["COLUMNS"] = "80"
    print('"""What ``forkops --help`` prints, kept verbatim so that top-level help needs no typer import.\n\n'
          "Regenerate after changing commands: ``python tests/test_cli_help.py > forkops/cli/help_text.py``;\n"
          '``tests/test_cli_help.py`` fails while this differs from what typer renders.\n"""\n')
    print("TOP_HELP = (")
    for line in typer_help().splitlines(keepends=True):
        print(f"    {line!r}")
    print(")")
