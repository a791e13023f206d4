"""The CLI's shape: static top-level help equal to typer's rendering, lazy command modules,
one exit path (usage errors as one line, interrupts as 130), ``-C`` without ``os.chdir``,
exit codes and one placeholder style in every command's help.

Run this file as a script to print the current rendering for ``forkops/cli/help_text.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.main import get_command

from forkops.cli import app as app_mod
from forkops.errors import ExitCode
from tests.clihelp import run_cli


def typer_help() -> str:
    app = app_mod.build()
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
    monkeypatch.setenv("COLUMNS", "60")
    res = run_cli("--help")
    assert res.code == 0 and "playbook" in res.out


# -- lazy commands ----------------------------------------------------------------------------------
def _registered(app: typer.Typer) -> set[str]:
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return names | {g.name or "" for g in app.registered_groups}


def test_command_table_names_every_registered_command() -> None:
    full = _registered(app_mod.build())
    assert set(app_mod.COMMANDS) == full
    assert set(app_mod.COMMANDS.values()) == set(app_mod.COMMAND_MODULES)
    for name, module in app_mod.COMMANDS.items():
        assert name in _registered(app_mod.build([name])), f"{name} is not registered by forkops.cli.{module}"


@pytest.mark.parametrize(("args", "expected"), [
    (["status"], "status"), (["-C", "status", "check"], "check"), (["--version", "gc"], "gc"), ([], None),
    (["-h"], None),
])
def test_command_name_skips_global_options(args: list[str], expected: str | None) -> None:
    from forkops.cli import split_global

    assert split_global(args)[1] == expected


def _loaded_after(*args: str) -> set[str]:
    code = ("import sys, io, contextlib\nfrom forkops.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): main({list(args)!r})\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('forkops', 'rich', 'git')))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


def test_status_help_imports_only_what_status_uses() -> None:
    loaded = _loaded_after("status", "--help")
    assert "forkops.cli.upgrade" in loaded
    others = {f"forkops.cli.{m}" for m in app_mod.COMMAND_MODULES if m != "upgrade"}
    assert not loaded & others
    # Nor the engine or rich: --help runs no command.
    assert {m for m in loaded if m.split(".")[0] in ("rich", "git")} == set()
    assert loaded <= {"forkops", "forkops.cli", "forkops.cli.app", "forkops.cli.common", "forkops.cli.context",
                      "forkops.cli.status", "forkops.cli.upgrade", "forkops.errors"}


@pytest.mark.parametrize("args", [["--version"], ["-C", "/nonexistent", "--version"], ["--version", "status"]])
def test_version_among_the_global_options(args: list[str]) -> None:
    res = run_cli(*args)
    assert (res.code, res.out, res.err) == (0, f"forkops {__import__('forkops').__version__}\n", "")


# -- one exit path -------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message", "hint"), [
    (["status", "--bogus"], "No such option: --bogus", "forkops status --help"),
    (["nosuchcommand"], "No such command 'nosuchcommand'.", "forkops --help"),
    (["playbook", "show", "a", "b"], "unexpected extra argument", "forkops playbook show --help"),
    (["smoke", "img", "--timeout", "soon"], "Invalid value for '--timeout'", "forkops smoke --help"),
    (["smoke"], "Missing argument 'image'", "forkops smoke --help"),
    (["guard", "nosuch"], "No such command 'nosuch'", "forkops guard --help"),
    (["-C"], "Option '-C' requires an argument", "forkops --help"),
])
def test_usage_errors_are_one_line_and_a_hint(args: list[str], message: str, hint: str) -> None:
    res = run_cli(*args)
    assert res.code == ExitCode.BAD_INPUT
    lines = res.err.splitlines()
    assert len(lines) == 2, res.err
    assert lines[0].startswith("forkops: error: ") and message in lines[0]
    assert lines[1] == f"forkops: hint: run '{hint}'"
    assert res.out == ""


def test_interrupt_is_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from forkops import workspace

    def interrupted(start: Path | None = None) -> Path:
        raise KeyboardInterrupt

    # The edge: the user's Ctrl-C arriving while the command works (no git involved).
    monkeypatch.setattr(workspace, "find", interrupted)
    res = run_cli("-C", str(tmp_path), "status")
    assert res.code == ExitCode.INTERRUPTED and int(ExitCode.INTERRUPTED) == 130
    assert res.err == "forkops: interrupted\n"


# A value's placeholder is an upper-case word (FILE, X.Y.Z); a choice lists its values like click.
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9._]*|\[[a-z0-9-]+(\|[a-z0-9-]+)+\]")


def _commands(cmd: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def test_every_help_lists_exit_codes_and_uses_one_placeholder_style(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    root = get_command(app_mod.build())
    bad: list[str] = []
    for path, cmd in _commands(root):
        if getattr(cmd, "hidden", False):
            continue
        res = run_cli(*path, "--help")
        assert res.code == 0, (path, res.err)
        if "Exit codes: 0 done, 1 needs a person, 2 bad input or usage" not in res.out:
            bad.append(f"{' '.join(path)}: no exit codes")
        for param in getattr(cmd, "params", []):
            if getattr(param, "is_flag", False) or param.param_type_name == "argument":
                continue
            if not param.metavar or not _PLACEHOLDER.fullmatch(param.metavar):
                bad.append(f"{' '.join(path)} {param.opts[0]}: placeholder {param.metavar!r}")
    assert not bad, "\n".join(bad)


# -- -C DIR ---------------------------------------------------------------------------------------
def test_dash_c_does_not_change_the_working_directory(tmp_path: Path) -> None:
    before = os.getcwd()
    res = run_cli("-C", str(tmp_path), "status")
    assert res.code == ExitCode.BAD_INPUT and str(tmp_path) in res.err  # no forkops.toml there
    assert os.getcwd() == before


def test_dash_c_finds_the_workspace_and_takes_relative_paths_from_dir(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    res = run_cli("-C", str(ws), "init", "--no-clone", "--org", "acme")
    assert res.code == 0, res.err
    assert (ws / "forkops.toml").is_file()
    assert not (Path.cwd() / "forkops.toml").exists()
    # A relative path argument is relative to DIR, as with git -C.
    res = run_cli("-C", str(ws), "init", "sub", "--no-clone", "--org", "acme")
    assert res.code == 0, res.err
    assert (ws / "sub" / "forkops.toml").is_file()
    res = run_cli("-C", str(ws / "sub"), "status")
    assert res.code == 0 and "no upgrade in progress" in res.out


def test_nested_invocations_keep_the_outer_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo` runs commands in-process: an inner invocation must not reset the outer one's -C."""
    from forkops.cli import common, main

    seen: list[Path | None] = []

    def inner(start: Path | None = None) -> Path:
        assert main(["-C", "/", "playbook", "show", "serving"]) == 0
        seen.append(common.directory())
        raise KeyboardInterrupt

    from forkops import workspace

    monkeypatch.setattr(workspace, "find", inner)
    assert run_cli("-C", str(tmp_path), "status").code == 130
    assert seen == [tmp_path.resolve()]
    assert common.directory() is None


def test_dash_c_to_a_missing_folder_is_bad_input(tmp_path: Path) -> None:
    res = run_cli("-C", str(tmp_path / "nope"), "status")
    assert res.code == ExitCode.BAD_INPUT
    assert res.err == f"forkops: error: -C {tmp_path / 'nope'}: no such directory\n"


# -- playbook warnings -----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["status"], ["check", "--repo", "serving", "--tags", "2.4.1"], ["gc"]])
def test_every_command_that_loads_the_workspace_shows_playbook_warnings(tmp_path: Path, args: list[str]) -> None:
    """A typo in a playbook (must_contian) is a warning every command shows, not only `playbook validate`."""
    from forkops import sandbox

    sb = sandbox.build(tmp_path / "sb")
    text = (Path(__file__).parent.parent / "playbooks" / "serving.toml").read_text()
    custom = sb.workspace / "my-serving.toml"
    custom.write_text(text.replace("[[pins]]\n", "[[pins]]\nmust_contian = 'typo'\n", 1))
    config = sb.workspace / "forkops.toml"
    config.write_text(config.read_text().replace('playbook = "serving"', 'playbook = "my-serving.toml"'))
    res = run_cli("-C", str(sb.workspace), *args)
    warnings = [line for line in res.err.splitlines() if line.startswith("forkops: warning: ")]
    assert warnings == ["forkops: warning: my-serving.toml: pins[0].must_contian: unknown key, ignored"], res.err


if __name__ == "__main__":
    os.environ["COLUMNS"] = "80"
    print('"""What ``forkops --help`` prints, kept verbatim so that top-level help needs no typer import.\n\n'
          "Regenerate after changing commands: ``python tests/test_cli_help.py > forkops/cli/help_text.py``;\n"
          '``tests/test_cli_help.py`` fails while this differs from what typer renders.\n"""\n')
    print("TOP_HELP = (")
    for line in typer_help().splitlines(keepends=True):
        print(f"    {line!r}")
    print(")")
