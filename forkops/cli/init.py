"""CLI command: ``forkops init`` — write ``forkops.toml`` and clone the forks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from forkops.cli.common import console
from forkops.errors import BadInput

DEFAULT_UPSTREAMS = {
    "tensorflow": "https://github.com/tensorflow/tensorflow",
    "serving": "https://github.com/tensorflow/serving",
}


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    directory: Annotated[Path, typer.Argument(metavar="[DIR]", help="The workspace folder (default: here).")] = Path(),
    org: Annotated[str | None, typer.Option("--org", metavar="ORG",
                                            help="GitHub organisation holding both forks.")] = None,
    tensorflow_origin: Annotated[str | None, typer.Option("--tensorflow-origin", metavar="URL")] = None,
    serving_origin: Annotated[str | None, typer.Option("--serving-origin", metavar="URL")] = None,
    tensorflow_upstream: Annotated[str, typer.Option("--tensorflow-upstream", metavar="URL")] =
        DEFAULT_UPSTREAMS["tensorflow"],
    serving_upstream: Annotated[str, typer.Option("--serving-upstream", metavar="URL")] = DEFAULT_UPSTREAMS["serving"],
    no_clone: Annotated[bool, typer.Option("--no-clone", help="Only write forkops.toml.")] = False,
) -> None:
    """Write forkops.toml (asks for the forks' URLs or takes flags) and clone the forks."""
    from forkops import workspace
    from forkops.fsutil import write_atomic

    root = directory.resolve()
    target = root / workspace.FILENAME
    if target.exists():
        raise BadInput(f"{target} already exists; edit it, or remove it to start over")
    if org is not None and (tensorflow_origin or serving_origin):
        raise BadInput("pass either --org or --tensorflow-origin/--serving-origin, not both")
    if org is not None:
        tensorflow_origin = f"https://github.com/{org}/tensorflow"
        serving_origin = f"https://github.com/{org}/serving"
    origins = {"tensorflow": tensorflow_origin, "serving": serving_origin}
    for name, url in origins.items():
        if not url:
            if not sys.stdin.isatty():
                raise BadInput(f"no URL for the {name} fork: pass --org ORG or --{name}-origin URL")
            origins[name] = typer.prompt(f"URL of your {name} fork (origin)")
    upstreams = {"tensorflow": tensorflow_upstream, "serving": serving_upstream}
    repos = [workspace.RepoConfig(name, root / name, str(origins[name]), upstreams[name], name)
             for name in ("tensorflow", "serving")]
    text = workspace.render(repos, root)
    root.mkdir(parents=True, exist_ok=True)
    # Check what we would write by loading it (a URL with spaces is refused) before it exists.
    check = root / f".{workspace.FILENAME}.check"
    try:
        write_atomic(check, text)
        workspace.load_file(check)
    finally:
        check.unlink(missing_ok=True)
    write_atomic(target, text)
    out = console()
    out.print(f"wrote {target}")
    ignore = root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if "keys.toml" not in lines:
        write_atomic(ignore, "\n".join([*lines, "keys.toml"]) + "\n")
    if no_clone:
        return
    from forkops.cli.upgrade import clone_missing

    clone_missing(workspace.load_file(target), None)
