"""CLI commands: ``forkops resolutions list|show|forget`` (recorded conflict resolutions)."""

from __future__ import annotations

from typing import Annotated

import typer

from forkops.cli.common import JsonOption, RepoOption, console, load_workspace, print_json

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
    from forkops import resolutions

    ws = load_workspace()
    record = resolutions.find(ws.root, repo and ws.repo(repo).name, ident)
    console().print(record.render(), markup=False, end="")


@resolutions_app.command("forget")
def forget(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A resolution id or its first digits.")],
    repo: RepoOption = None,
) -> None:
    """Delete a recorded resolution (commit the deletion so teammates and CI forget it too)."""
    from forkops import resolutions

    ws = load_workspace()
    record = resolutions.find(ws.root, repo and ws.repo(repo).name, ident)
    assert record.file is not None
    record.file.unlink()
    console().print(f"forgot {record.id} ({record.repo}: {record.path}); removed "
                    f"{record.file.relative_to(ws.root)}", markup=False)
