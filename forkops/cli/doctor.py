"""CLI command ``doctor``: renders :mod:`forkops.doctor`'s checks, each failure with its fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from forkops.cli.common import JsonOption, KeysOption, console, cwd, load_workspace, print_json
from forkops.errors import BadInput, ExitCode, ExternalError

if TYPE_CHECKING:
    from forkops.doctor import Report


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(keys: KeysOption = None, json_: JsonOption = False) -> ExitCode:
    """Check git, the docker client and engine, buildx, the NVIDIA runtime, the keys file and,
    in a workspace, each clone's git identity and guard hooks; print the fix for each problem.

    Exit 3 when git or Docker is unusable, 2 when something else fails; warnings exit 0.
    """
    from forkops import doctor as engine
    from forkops import workspace

    try:
        workspace.find(cwd())
    except BadInput:
        ws = None  # outside a workspace: the machine's checks only
    else:
        ws = load_workspace()
    report = engine.run(keys=keys, workspace=ws)
    if json_:
        print_json(report.as_json())
    else:
        _table(report)
    if report.exit_code() == ExitCode.EXTERNAL:
        raise ExternalError(next(c for c in report.failed if c.name in engine.EXTERNAL).detail)
    if report.failed:
        names = ", ".join(c.name for c in report.failed)
        raise BadInput(f"{len(report.failed)} check(s) failed: {names}", hint="each failure above shows its fix")
    return ExitCode.OK


def _table(report: Report) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="forkops doctor")
    for col in ("check", "verdict", "detail"):
        table.add_column(col)
    style = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    for c in report.checks:
        detail = escape(c.detail) + (f"\n[bold]fix:[/bold] {escape(c.fix)}" if c.fix else "")
        table.add_row(c.name, f"[{style[c.verdict]}]{c.verdict}[/{style[c.verdict]}]", detail)
    console().print(table)
