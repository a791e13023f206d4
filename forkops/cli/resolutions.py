"""CLI commands: ``forkops resolutions list|show|forget`` (recorded conflict resolutions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.common import JsonOption, RepoOption, console, load_workspace, print_json

if TYPE_CHECKING:
    from forkops.resolutions import Record
    from forkops.workspace import Workspace

resolutions_app = typer.Typer(
    help="Recorded conflict resolutions (resolutions/<repo>/<id>.txt in the workspace; commit them). "
         "`forkops upgrade` records one when you resolve a stop and continue, applies it where the same "
         "conflict recurs, and `check`/`nightly` simulate past such stops.",
    no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(resolutions_app, name="resolutions")


@resolutions_app.command("list")
def list_(
    repo: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recorded resolutions: id, repository, file, hunks, the commit that stopped."""
    from forkops import resolutions

    ws = load_workspace()
    records = [r for rc in ws.select(repo) for r in resolutions.load(ws.root, rc.name)]
    if as_json:
        print_json({"resolutions": [r.as_json() for r in records]})
        return
    out = console()
    if not records:
        out.print("no recorded resolutions")
    for r in records:
        out.print(f"{r.repo}  {r.summary()}", markup=False)


@resolutions_app.command("show")
def show(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A resolution id or its first digits.")],
    repo: RepoOption = None,
) -> None:
    """Print a recorded resolution as stored (the text a reviewer reads)."""
    console().print(_record(load_workspace(), ident, repo).render(), markup=False, end="")


@resolutions_app.command("forget")
def forget(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A resolution id or its first digits.")],
    repo: RepoOption = None,
) -> None:
    """Delete a recorded resolution (commit the deletion so teammates and CI forget it too)."""
    ws = load_workspace()
    record = _record(ws, ident, repo)
    assert record.file is not None
    record.file.unlink()
    console().print(f"forgot {record.id} ({record.repo}: {record.path}); removed "
                    f"{record.file.relative_to(ws.root)}", markup=False)


def _record(ws: Workspace, ident: str, repo: str | None) -> Record:
    """The recorded resolution ``ident`` names (exit 2 when none or several do)."""
    from forkops import resolutions

    return resolutions.find(ws.root, repo and ws.repo(repo).name, ident)
