"""``forkops status`` without typer: the hand parser's fast path prints what the typer path
prints (stdout, stderr, exit code) for every option combination, idle, stopped at a conflict and
failing; it imports no typer, no rich off a terminal, no playbook code for built-in playbooks,
and idle it starts no git process. Its plain rendering is what rich prints off a terminal.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkops.cli import _status_args
from forkops.sandbox import Sandbox
from tests.clihelp import run_cli
from tests.gitutil import git

# Runs the CLI as `python -m forkops` does, then lists the modules it imported (in a file, so
# that stdout and stderr are the CLI's own).
_PROBE = ("import os, sys\nfrom forkops.cli import main\ncode = main(sys.argv[1:])\nsys.stdout.flush()\n"
          "with open(os.environ['FORKOPS_TEST_MODULES'], 'w') as fh:\n    fh.write(' '.join(sys.modules))\n"
          "raise SystemExit(code)\n")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    modules: frozenset[str]


def run(args: list[str], cwd: Path, *, fast: bool, debug: bool = False) -> Run:
    fd, listing = tempfile.mkstemp(prefix="forkops-modules-")
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if k not in ("FORKOPS_NO_FAST_STATUS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["FORKOPS_TEST_MODULES"] = listing
    if not fast:
        env["FORKOPS_NO_FAST_STATUS"] = "1"
    if debug:
        env["FORKOPS_DEBUG"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, check=False)
        modules = frozenset(Path(listing).read_text().split())
    finally:
        os.unlink(listing)
    return Run(proc.returncode, proc.stdout, proc.stderr, modules)


def both(args: list[str], cwd: Path, *, taken: bool = True) -> Run:
    """The fast path's run, after checking it equals the typer path's and that the fast path was
    ``taken`` (typer never imported) or not (typer parsed the command line both times)."""
    fast, slow = run(args, cwd, fast=True), run(args, cwd, fast=False)
    assert (fast.code, fast.out, fast.err) == (slow.code, slow.out, slow.err), args
    assert ("typer" not in fast.modules) == taken and "typer" in slow.modules, args
    return fast


def combinations(ws: Path, elsewhere: Path) -> list[tuple[list[str], Path]]:
    """Every way of naming the workspace (its folder, -C absolute, -C relative), text and JSON."""
    places = [([], ws), (["-C", str(ws)], elsewhere), (["-C", os.path.relpath(ws, elsewhere)], elsewhere)]
    return [([*prefix, "status", *json], cwd) for prefix, cwd in places for json in ([], ["--json"])]


LIGHT = ("typer", "rich", "forkops.playbook", "forkops.anchors", "forkops.upgrade.machine", "forkops.secrets")


def test_idle_status_fast_path_equals_typer_path(sandbox: Sandbox, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args, cwd in combinations(sandbox.workspace, elsewhere):
        res = both(args, cwd)
        assert res.code == 0 and res.err == ""
        assert ("no upgrade in progress" in res.out) != ("--json" in args)
        assert not res.modules & set(LIGHT), args
    # Idle, status reads files only: no git process at all.
    res = run(["-C", str(sandbox.workspace), "status"], elsewhere, fast=True, debug=True)
    assert res.code == 0 and res.err == ""


def test_failing_status_fast_path_equals_typer_path(sandbox: Sandbox, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("")
    for json in ([], ["--json"]):
        for args, cwd in [([], empty), (["-C", str(empty)], tmp_path), (["-C", str(tmp_path / "nope")], empty),
                          (["-C", str(afile)], empty)]:
            res = both([*args, "status", *json], cwd)
            assert res.code == 2 and res.out == "" and res.err.startswith("forkops: error: "), res
            assert "Traceback" not in res.err
    # A run file another forkops version wrote: refused with exit 2 on both paths.
    run_file = sandbox.workspace / ".forkops" / "run.json"
    run_file.parent.mkdir()
    run_file.write_text('{"format": 1, "id": "x", "version": "2.5.0", "repos": ["tensorflow"]}')
    res = both(["-C", str(sandbox.workspace), "status"], tmp_path)
    assert res.code == 2 and "state format 1" in res.err


def test_playbook_warnings_on_both_paths(sandbox: Sandbox, tmp_path: Path) -> None:
    """A user playbook is parsed for its warnings (built-in ones have none to show)."""
    text = (Path(__file__).parent.parent / "playbooks" / "serving.toml").read_text()
    (sandbox.workspace / "my-serving.toml").write_text(text.replace("[[pins]]\n", "[[pins]]\nmust_contian = 1\n", 1))
    config = sandbox.workspace / "forkops.toml"
    config.write_text(config.read_text().replace('playbook = "serving"', 'playbook = "my-serving.toml"'))
    for args, cwd in combinations(sandbox.workspace, tmp_path):
        res = both(args, cwd)
        assert res.err == "forkops: warning: my-serving.toml: pins[0].must_contian: unknown key, ignored\n"


def test_stopped_status_fast_path_equals_typer_path(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = sandbox.workspace
    assert run_cli("-C", str(ws), "upgrade", "2.18.0").code == 1
    for args, cwd in combinations(ws, tmp_path):
        res = both(args, cwd)
        assert res.code == 0 and res.err == ""
        assert ".bazelrc" in res.out and ("3/5" in res.out) != ("--json" in args)
        assert not res.modules & {"typer", "rich", "forkops.upgrade.machine"}, args
    text = both(["-C", str(ws), "status"], tmp_path).out
    assert text.splitlines()[1] == "tensorflow: conflict — b2.18.0 = b2.4.0 rebased from v2.4.0 onto tf2.18.0"
    assert text == run_cli("-C", str(ws), "status").out  # in-process (stdout not a terminal) alike
    res = run(["-C", str(ws), "status"], tmp_path, fast=True, debug=True)
    assert "rev-parse --absolute-git-dir" not in res.err


@pytest.mark.parametrize("args", [
    ["status", "--help"], ["status", "-h"], ["status", "--bogus"], ["status", "--json", "--json"],
    ["status", "--repo", "tensorflow"], ["-C", "ws", "status", "--repo", "tensorflow"], ["-Cws", "status"],
    ["status", "-C", "ws"], ["-C", "ws", "-C", "ws", "status"], ["-C"], ["-C", "--json", "status"],
    ["--", "status"], ["status", "--"], ["status", "extra"], ["--json", "status"], ["Status"],
])
def test_anything_else_goes_to_typer(args: list[str]) -> None:
    assert _status_args(args) is None


def test_the_hand_parser_takes_exactly_its_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _status_args(["status"]) == (None, False)
    assert _status_args(["status", "--json"]) == (None, True)
    assert _status_args(["-C", "a b", "status"]) == (Path("a b"), False)
    assert _status_args(["-C", "", "status", "--json"]) == (Path(""), True)
    monkeypatch.setenv("FORKOPS_NO_FAST_STATUS", "1")
    assert _status_args(["status"]) is None


def test_usage_errors_through_the_fallback_are_typer_s(sandbox: Sandbox, tmp_path: Path) -> None:
    for args in (["status", "--bogus"], ["status", "--json", "--json"], ["status", "--help"]):
        both(["-C", str(sandbox.workspace), *args], tmp_path, taken=False)


# -- rendering ----------------------------------------------------------------------------------------
NASTY = ["[bold]not markup[/bold]", "back\\slash\\", "\\[escaped]", ":smile: :+1:", "bell\x07 cr\r ff\x0c",
         "esc \x1b[31m", "wide 漢字 and → —", "  trailing  ", "", "two\nlines", "crlf\r\nend", "nul\x00",
         "zero\u200bwidth", "tab\tinside"]


@pytest.mark.parametrize("text", NASTY)
def test_plain_text_is_what_rich_prints_off_a_terminal(text: str, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from rich.text import Text

    from forkops.cli.status import write

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    lines = [((text, "bold"), (" | ", ""), (text, "red")), ((text, ""),)]
    write(lines)
    buf = io.StringIO()
    rich = Console(file=buf, highlight=False, soft_wrap=True)
    for line in lines:
        rich.print(Text.assemble(*line))
    assert capsys.readouterr().out == buf.getvalue()


def test_a_terminal_gets_rich_styles(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from forkops.cli.status import write

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    write([(("upgrade to 2.18.0", "bold"), (" [x]", ""))])
    out = capsys.readouterr().out
    assert "\x1b[1mupgrade to 2.18.0\x1b[0m [x]" in out


def test_full_status_renders_every_part_verbatim(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from forkops.cli.status import status_lines, write

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    data = {
        "repo": "tensorflow", "state": "anchor-failed", "branch": "b2.11.0", "start": "b2.4.0", "base": "v2.4.0",
        "onto": "tf2.11.0", "stopped_at": {"commit": "0123456789abcdef", "subject": "Fix [red]x[/red] :smile:",
                                           "index": 2, "total": 5},
        "conflicts": [{"path": "new/env.cc", "kind": "content", "recorded": True, "moved_from": "old/env.cc",
                       "context": [{"sha": "fedcba9876543210", "subject": "Move [it]"}]}],
        "failure": {"message": "anchor [a] failed", "kind": "anchor", "path": "new/env.cc", "lines": ["f.cc:3: x"],
                    "change": "+key[16] = <masked>;\r\n-old\n"},
        "notes": ["note \\[1]"], "next": ["forkops upgrade --continue"],
        "run": {"id": "r1", "version": "2.11.0", "repos": [{"repo": "tensorflow", "state": "anchor-failed",
                                                            "phase": "anchors"}]},
    }
    write(status_lines(data))
    assert capsys.readouterr().out == (
        "upgrade to 2.11.0 (run r1): tensorflow anchor-failed\n"
        "tensorflow: anchor-failed — b2.11.0 = b2.4.0 rebased from v2.4.0 onto tf2.11.0\n"
        "  stopped at commit 2/5: 0123456789ab 'Fix [red]x[/red] :smile:'\n"
        "  unmerged files:\n"
        "    content        old/env.cc → new/env.cc  (resolved from a recorded resolution: review, then --continue)\n"
        "                    upstream: fedcba9876 Move [it]\n"
        "  anchor [a] failed\n"
        "    f.cc:3: x\n"
        "  the symbol lives now in: new/env.cc\n"
        "  the fork's change that must be carried there:\n"
        "+key[16] = <masked>;\n-old\n\n"
        "  note \\[1]\n"
        "  next:\n"
        "    1. forkops upgrade --continue\n")


# -- what idle status relies on ------------------------------------------------------------------------
def test_builtin_playbooks_have_no_warnings() -> None:
    """load_workspace skips parsing built-in playbooks for warnings: this is why it may."""
    from forkops import playbook
    from forkops.workspace import BUILTIN_PLAYBOOKS

    for name in BUILTIN_PLAYBOOKS:
        assert playbook.load(name).warnings == (), name


def test_git_dir_of_a_clone_needs_no_git_process(sandbox: Sandbox, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from forkops.git import Repo

    tf = sandbox.workspace.resolve() / "tensorflow"
    linked = tmp_path.resolve() / "linked"
    git(tf, "worktree", "add", "--quiet", "--detach", str(linked))
    bare = sandbox.origin["tensorflow"]
    monkeypatch.setenv("FORKOPS_DEBUG", "1")
    capsys.readouterr()
    assert Repo(tf).git_dir == tf / ".git" and Repo(tf).is_repo()
    assert capsys.readouterr().err == ""
    # A linked worktree (.git is a file) and a bare repository: git is asked, and agrees.
    for path in (linked, bare):
        expected = Path(git(path, "rev-parse", "--absolute-git-dir").strip())
        assert Repo(path).git_dir == expected
        assert "rev-parse --absolute-git-dir" in capsys.readouterr().err
    assert Repo(linked).git_dir == tf / ".git" / "worktrees" / "linked"


def test_the_upgrade_package_loads_its_modules_when_used() -> None:
    code = ("import sys, forkops.upgrade.status\n"
            "assert 'forkops.upgrade.machine' not in sys.modules\n"
            "import forkops.upgrade as u\nfrom forkops.upgrade import machine\n"
            "assert u.start is machine.start and u.Status is forkops.upgrade.status.Status\n"
            "try:\n    u.nosuch\nexcept AttributeError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "module 'forkops.upgrade' has no attribute 'nosuch'\n"
