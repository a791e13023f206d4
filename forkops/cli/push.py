"""CLI command: ``forkops push`` publishes a finished upgrade's branches."""

from __future__ import annotations

from typing import Annotated

import typer

from forkops.cli.common import console, load_workspace


def register(app: typer.Typer) -> None:
    app.command("push")(push)


def push(
    repo: Annotated[str | None, typer.Option("--repo", metavar="R", help="Only this repository.")] = None,
    force_with_lease: Annotated[bool, typer.Option(
        "--force-with-lease", help="Replace the branch on origin if it is still what was last fetched.")] = False,
) -> int:
    """Push the branches of a finished upgrade to origin (--set-upstream; never forced unless asked)."""
    from forkops import upgrade as engine

    out = console()

    def log(line: str) -> None:
        out.print(line, markup=False)

    engine.push(load_workspace(), repo=repo, force_with_lease=force_with_lease, log=log)
    return 0
