"""CLI command: ``forkops init`` — clone the forks and write ``forkops.toml`` (engine:
:mod:`forkops.init`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.common import console, err_console
from forkops.errors import BadInput

if TYPE_CHECKING:
    from forkops.playbook import Role


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    directory: Annotated[Path, typer.Argument(metavar="[DIR]", help="The workspace folder (default: here).")] = Path(),
    org: Annotated[str | None, typer.Option("--org", metavar="ORG",
                                            help="GitHub organisation holding the forks "
                                                 "(https://github.com/ORG/tensorflow, .../serving).")] = None,
    tensorflow_origin: Annotated[str | None, typer.Option(
        "--tensorflow-origin", metavar="URL", help="Your TensorFlow fork (any URL git accepts, or a path).")] = None,
    serving_origin: Annotated[str | None, typer.Option(
        "--serving-origin", metavar="URL", help="Your TensorFlow Serving fork (any URL git accepts, or a path).")]
    = None,
    tensorflow_upstream: Annotated[str | None, typer.Option(
        "--tensorflow-upstream", metavar="URL",
        help="Upstream TensorFlow (default: https://github.com/tensorflow/tensorflow).")] = None,
    serving_upstream: Annotated[str | None, typer.Option(
        "--serving-upstream", metavar="URL",
        help="Upstream TensorFlow Serving (default: https://github.com/tensorflow/serving).")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", metavar="REPO", help="A workspace with only this fork: tensorflow or serving.")] = None,
    no_clone: Annotated[bool, typer.Option("--no-clone", help="Only write forkops.toml (no playbook detection).")]
    = False,
) -> None:
    """Clone the forks, pick the TensorFlow fork's playbook from its ReadBinaryProto (key sites:
    tensorflow; dlopen()ed decryption library: tensorflow-dlopen) and write forkops.toml.

    forkops.toml is written only when every clone succeeded; a failed clone removes what init made,
    so it can simply be retried. Exit 2: forkops.toml exists, a URL is missing or malformed.
    Exit 3: a clone failed (git's own message is shown).
    """
    from forkops import init as engine

    wanted: tuple[Role, ...] = engine.REPOS
    if only is not None:
        if only not in engine.REPOS:
            raise BadInput(f"--only {only!r}: expected one of {', '.join(engine.REPOS)}")
        wanted = tuple(r for r in engine.REPOS if r == only)
    given: dict[Role, str | None] = {"tensorflow": tensorflow_origin, "serving": serving_origin}
    if org is not None and any(given.values()):
        raise BadInput("pass either --org or --tensorflow-origin/--serving-origin, not both")
    stray = [name for name, url in given.items() if url and name not in wanted]
    if stray:
        raise BadInput(f"--{stray[0]}-origin given with --only {only}")
    origins: dict[Role, str] = {}
    for name in wanted:
        url = f"https://github.com/{org}/{name}" if org is not None else given[name]
        if not url:
            if not sys.stdin.isatty():
                raise BadInput(f"no URL for the {name} fork: pass --org ORG or --{name}-origin URL")
            url = typer.prompt(f"URL of your {name} fork (origin)")
        origins[name] = url
    given_upstreams: dict[Role, str | None] = {"tensorflow": tensorflow_upstream, "serving": serving_upstream}
    upstreams = {name: url for name, url in given_upstreams.items() if url}
    repos = engine.plan(directory.resolve(), origins, upstreams)
    result = engine.create(directory, repos, clone=not no_clone, progress=_progress())
    out = console()
    for rc in result.repos:
        if rc.name in result.cloned:
            out.print(f"{rc.name}: cloned {rc.origin} into {rc.path}", markup=False)
    for d in result.detections:
        out.print(f"{d.repo}: playbook {d.playbook}: {d.reason}", markup=False)
    out.print(f"wrote {result.file}", markup=False)


def _progress() -> Callable[[str, str, float | None], None]:
    """Clone progress on stderr: one line per repository as its clone starts (a clone can take
    minutes; a live bar would outlive a failed clone)."""
    started: set[str] = set()
    err = err_console()

    def update(repo: str, stage: str, fraction: float | None) -> None:
        if repo not in started:
            started.add(repo)
            err.print(f"cloning {repo}...", markup=False)

    return update
