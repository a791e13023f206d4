"""``forkops demo [DIR]``: the main job on a built-in default, as a scripted session.

It builds a sandbox (forkops.sandbox: generated upstreams with tags on release branches,
TF-like and Serving-like forks with the patch stack) inside DIR and then runs the real
commands a maintainer would type, showing each one: check, upgrade (stops on a conflict, the
conflict is resolved the way the sandbox defines, continue, anchors re-applied, the Serving pin
moved), the --abort path, set-key with the commit guard, model encryption and inspection, a
dry-run build, and a short section on forks of the dlopen shape (init detects it; the dry-run
build compiles the decryption library from a BuildKit secret). Every step runs the real CLI
in-process; nothing is simulated, nothing is written outside DIR, and no network is used. A step
that does not end as expected stops the demo with exit 1.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.errors import NeedsPerson

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.git import Repo

DEMO_VERSION = "2.18.0"
DEMO_IDENTITY = (("user.name", "forkops demo"), ("user.email", "demo@forkops.invalid"))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Folder for the sandbox (must be empty or missing). Default: a new temporary folder."),
    ] = None,
) -> None:
    """Run forkops end to end in a generated sandbox: check, upgrade with a conflict, abort,
    set-key with the commit guard, encrypt/inspect half_plus_two, build --dry-run; then init and
    build --dry-run on forks of the dlopen shape (the decryption library built with your key)."""
    from rich.console import Console
    from rich.rule import Rule

    from forkops import sandbox

    out = Console(highlight=False, soft_wrap=True)
    root = (directory or Path(tempfile.mkdtemp(prefix="forkops-demo-"))).resolve()
    if root.exists() and any(root.iterdir()):
        from forkops.errors import BadInput

        raise BadInput(f"{root} is not empty; give an empty or new folder")
    started = time.perf_counter()
    out.print(Rule("forkops demo"))
    out.print(f"Building a sandbox in [bold]{root}[/bold]: upstream TensorFlow- and Serving-like repositories "
              "(tags on release branches r2.N), forks with their patch stacks on b2.4.0, a workspace.")
    sb = sandbox.build(root)
    ws = sb.workspace
    for name in ("tensorflow", "serving"):
        # The sandbox's own identity: the demo commits (rebase, pins) on a machine with none
        # configured (a fresh CI runner), and never borrows the user's.
        for key, value in DEMO_IDENTITY:
            subprocess.run(["git", "-C", str(ws / name), "config", key, value], check=True, capture_output=True)
    # Scratch folders (the dry-run build's staging) go inside DIR too: nothing is written outside it.
    scratch = root / "tmp"
    scratch.mkdir()
    tempfile.tempdir = str(scratch)
    # Hooks and git commands run by the demo must see the sandbox's keys, not the user's.
    os.environ.pop("FORKOPS_KEYS", None)
    session = _Session(out, ws)

    out.print(Rule("1. Which upcoming upstream tags rebase cleanly?"))
    session.forkops("check", expect={0, 1})

    out.print(Rule(f"2. Upgrade both forks to {DEMO_VERSION}"))
    session.forkops("upgrade", DEMO_VERSION, expect={1})
    rounds = 0
    while session.last_code == 1 and rounds < 6:
        rounds += 1
        for repo_name in ("tensorflow", "serving"):
            session.resolve_conflicts(repo_name)
        session.forkops("upgrade", "--continue", expect={0, 1})
    if session.last_code != 0:
        raise NeedsPerson("the demo upgrade did not complete; see the output above")
    session.forkops("status")
    for repo_name in ("tensorflow", "serving"):
        session.git(repo_name, "log", "--oneline", f"tf{DEMO_VERSION}..b{DEMO_VERSION}")
    session.git("serving", "grep", "-n", "branch =", f"b{DEMO_VERSION}", "--", "WORKSPACE")

    out.print(Rule("3. A second upgrade, stopped and aborted: every ref goes back"))
    session.forkops("upgrade", "2.11.0", "--repo", "serving", expect={1})
    session.forkops("status", "--json")
    session.forkops("upgrade", "--abort")
    session.git("serving", "branch", "--list", "b2.11.0", "tf2.11.0")

    out.print(Rule("4. The key: generate, write into every key site, and the commit guard"))
    session.forkops("set-key", "--generate")
    session.forkops("set-key")
    session.forkops("set-key", "--check")
    session.git("tensorflow", "commit", "-a", "-m", "oops: commit the key", expect={1})
    session.forkops("set-key", "--clear")

    out.print(Rule("5. Encrypt the bundled half_plus_two model and inspect it"))
    model = session.bundled_model()
    session.forkops("inspect", str(model))
    session.forkops("encrypt", str(model), "-o", str(ws / "half_plus_two-encrypted"))
    session.forkops("inspect", str(ws / "half_plus_two-encrypted"))

    out.print(Rule("6. What a build would run (no Docker needed for --dry-run)"))
    session.forkops("build", DEMO_VERSION, "--all", "--dry-run")

    out.print(Rule("7. The public fork's shape: ReadBinaryProto dlopen()s a decryption library"))
    out.print("A second sandbox whose TensorFlow fork keeps no key in its source (ReadBinaryProto calls "
              "CBCMode_Decrypt from /opt/lib/libcryptfile.so) and whose Serving image downloads that library "
              "(ADD ${ENCRYPT_FILE_URL}). init detects the shape; the build compiles the library with your key, "
              "passed as a BuildKit secret.", markup=False)
    other = sandbox.build(root / "dlopen", shape="dlopen", clone=False)
    _Session(out, other.root).forkops(
        "init", "ws", "--tensorflow-origin", str(other.origin["tensorflow"]),
        "--serving-origin", str(other.origin["serving"]), "--tensorflow-upstream", other.upstream_url("tensorflow"),
        "--serving-upstream", other.upstream_url("serving"))
    keys = other.root / "ws" / "keys.toml"
    keys.write_bytes((ws / "keys.toml").read_bytes())  # the same key as above
    keys.chmod(0o600)
    _Session(out, other.root / "ws").forkops("build", "2.4.0", "--dry-run")

    out.print(Rule("done"))
    out.print(f"All steps ended as expected in {time.perf_counter() - started:.1f} s. "
              f"The sandbox stays in {root}; explore it with `forkops -C {ws} status`.")


class _Session:
    """Runs and shows commands the way a user would type them in the workspace."""

    def __init__(self, out: Console, workspace: Path) -> None:
        self.out = out
        self.ws = workspace
        self.last_code = 0

    def _show(self, argv: list[str]) -> None:
        self.out.print(f"\n[bold cyan]$ {shlex.join(argv)}[/bold cyan]")

    def forkops(self, *args: str, expect: set[int] | None = None) -> None:
        from forkops.cli import main

        self._show(["forkops", *args])
        code = main(["-C", str(self.ws), *args])
        self._check(["forkops", *args], code, expect or {0})

    def git(self, repo: str, *args: str, expect: set[int] | None = None) -> None:
        self._show(["git", *args] if repo == "." else ["git", "-C", repo, *args])
        proc = subprocess.run(["git", *args], cwd=self.ws / repo, capture_output=True, text=True)
        text = (proc.stdout + proc.stderr).rstrip()
        if text:
            self.out.print(text, markup=False)
        self._check(["git", *args], proc.returncode, expect or {0})

    def bundled_model(self) -> Path:
        from forkops.crypto import bundled_model

        return bundled_model(gpu=False)

    def _check(self, argv: list[str], code: int, expect: set[int]) -> None:
        self.last_code = code
        if code not in expect:
            raise NeedsPerson(f"demo step `{shlex.join(argv)}` exited {code}, expected {sorted(expect)}")

    def resolve_conflicts(self, repo_name: str) -> None:
        """Resolve the sandbox's conflicts the way the sandbox defines, then stage them."""
        from forkops import sandbox
        from forkops.git import Repo as GitRepo

        repo = GitRepo(self.ws / repo_name)
        if not repo.is_repo():
            return
        paths = repo.unmerged_paths()
        if not paths:
            return
        for path in paths:
            ours = _stage(repo, 2, path)
            theirs = _stage(repo, 3, path)
            resolved = sandbox.resolve(repo_name, path, ours=ours, theirs=theirs)
            target = repo.path / path
            self.out.print(f"[dim]# resolve {repo_name}/{path}: keep upstream's side and re-apply the fork's "
                           "change (what the maintainer would do in an editor)[/dim]")
            if resolved is None:
                self.git(repo_name, "rm", "--quiet", path)
                continue
            target.write_text(resolved)
            self.git(repo_name, "add", path)


def _stage(repo: Repo, stage: int, path: str) -> str | None:
    """The content of ``path`` at index stage 2 (ours: the new upstream side during a rebase)
    or 3 (theirs: the fork's commit); None when that side deleted it."""
    proc = repo.run_raw("show", f":{stage}:{path}")
    return proc.stdout.decode() if proc.returncode == 0 else None
