"""CLI command ``gc``: renders :mod:`forkops.gc` (old upgrade runs' backup refs and state)."""

from __future__ import annotations

from typing import Annotated

import typer

from forkops.cli.common import JsonOption, console, load_workspace, print_json


def register(app: typer.Typer) -> None:
    app.command("gc")(gc)


def gc(
    keep: Annotated[int, typer.Option("--keep", metavar="N", help="Finished runs to keep, newest first.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    json_: JsonOption = False,
) -> None:
    """Remove the backup refs (refs/forkops/backup/RUN/) and state of finished upgrade runs, keeping
    the newest N; a run in progress is never touched."""
    from forkops import gc as engine

    result = engine.collect(load_workspace(), keep=keep, dry_run=dry_run)
    if json_:
        print_json(result.as_json())
        return
    out = console()
    verb = "would remove" if dry_run else "removed"
    if not result.removed_runs:
        out.print(f"nothing to remove ({len(result.kept)} run(s) kept)")
        return
    out.print(f"{verb} {len(result.removed_runs)} run(s): {', '.join(result.removed_runs)} "
              f"({len(result.refs)} backup ref(s), {len(result.files)} state file(s))", markup=False)
    out.print(f"kept {len(result.kept)} run(s){': ' + ', '.join(result.kept) if result.kept else ''}", markup=False)
