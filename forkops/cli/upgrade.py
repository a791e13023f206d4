"""CLI commands: ``forkops upgrade`` (start / --continue / --skip / --abort) and ``forkops status``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkops.cli.common import JsonOption, RepoOption, console, err_console, load_workspace, print_json
from forkops.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.upgrade import Outcome
    from forkops.workspace import Workspace


def register(app: typer.Typer) -> None:
    app.command("upgrade")(upgrade)
    app.command("status")(status)


def upgrade(
    version: Annotated[str | None, typer.Argument(metavar="X.Y.Z", help="The upstream release to upgrade to.")] = None,
    repo: RepoOption = None,
    from_: Annotated[str | None, typer.Option("--from", metavar="BRANCH",
                                              help="Start branch (default: newest bA.B.C older than X.Y.Z).")] = None,
    base: Annotated[str | None, typer.Option("--base", metavar="TAG",
                                             help="Base tag (default: newest release tag in the start).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push bX.Y.Z to origin when the run completes.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing local tfX.Y.Z/bX.Y.Z branches.")] = False,
    force_with_lease: Annotated[bool, typer.Option("--force-with-lease",
                                                   help="Push with --force-with-lease (implies --push).")] = False,
    cont: Annotated[bool, typer.Option("--continue", help="Continue after resolving conflicts.")] = False,
    skip: Annotated[bool, typer.Option("--skip", help="Drop the commit the rebase stopped on and continue.")] = False,
    abort: Annotated[bool, typer.Option("--abort", help="Undo the run: restore every ref and HEAD.")] = False,
) -> ExitCode:
    """Rebase the fork's patch stack onto an upstream release (TensorFlow, then Serving)."""
    from forkops import upgrade as engine
    from forkops.version import Version

    modes = [name for name, on in (("--continue", cont), ("--skip", skip), ("--abort", abort)) if on]
    if len(modes) > 1:
        raise BadInput(f"{' and '.join(modes)} cannot be combined")
    if modes:
        extra = [n for n, v in (("X.Y.Z", version), ("--repo", repo), ("--from", from_), ("--base", base)) if v]
        extra += ["--force"] if force else []
        if abort:
            extra += [n for n, v in (("--push", push), ("--force-with-lease", force_with_lease)) if v]
        if extra:
            raise BadInput(f"{modes[0]} takes no {', '.join(extra)} (the run keeps its own settings)")
    elif version is None:
        raise BadInput("missing X.Y.Z: `forkops upgrade 2.18.0`, or --continue / --skip / --abort")

    ws = load_workspace()
    out = console()

    def log(line: str) -> None:
        out.print(line, markup=False)

    if abort:
        outcome = engine.abort(ws, log=log)
    elif modes:
        outcome = engine.resume(ws, skip=skip, push=push, force_with_lease=force_with_lease, log=log)
    else:
        assert version is not None
        opts = engine.Options(Version.parse(version), repo=repo, start=from_, base=base,
                              push=push or force_with_lease, force=force, force_with_lease=force_with_lease)
        clone_missing(ws, opts.repo)
        outcome = engine.start(ws, opts, log=log)
    return _report(out, outcome, final=not abort)


def status(
    as_json: JsonOption = False,
) -> None:
    """What an upgrade in progress is doing and waiting for."""
    from forkops import upgrade as engine

    data = engine.status(load_workspace())
    if as_json:
        print_json(data)
        return
    render_status(console(), data)


def clone_missing(ws: Workspace, only: str | None) -> None:
    """Clone forks that are not there yet, with a progress bar (on stderr)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from forkops import upgrade as engine
    from forkops.git import Repo

    for rc in ws.select(only):
        if Repo(rc.path).is_repo():
            continue
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                      console=err_console(), transient=True) as bar:
            task = bar.add_task(f"cloning {rc.name}", total=1.0, stage="")

            def progress(stage: str, fraction: float | None, task: Any = task, bar: Progress = bar) -> None:
                bar.update(task, completed=fraction or 0.0, stage=stage)

            engine.ensure_clone(rc, progress)
        err_console().print(f"{rc.name}: cloned {rc.origin} into {rc.path}")


def _report(out: Console, outcome: Outcome, *, final: bool) -> ExitCode:
    if outcome.stopped:
        out.print()
        render_status(out, outcome.status)
        return ExitCode.NEEDS_PERSON
    if final and outcome.state == "done":
        run = outcome.status.get("run") or {}
        names = ", ".join(r["repo"] for r in run.get("repos", []))
        out.print(f"[green]upgrade to {run.get('version')} done[/green] ({names})")
    return ExitCode.OK


def render_status(out: Console, data: dict[str, Any]) -> None:
    """Human form of ``forkops status`` (also shown when an upgrade stops)."""
    from rich.markup import escape

    run = data.get("run")
    if run is None and data.get("repo") is None:
        out.print("no upgrade in progress")
        return
    if run is not None:
        steps = ", ".join(f"{r['repo']} {r['state'] if r['state'] != 'idle' else r['phase']}" for r in run["repos"])
        out.print(f"[bold]upgrade to {run['version']}[/bold] (run {run['id']}): {steps}")
    state = data["state"]
    colour = {"conflict": "yellow", "anchor-failed": "red", "done": "green"}.get(state, "cyan")
    out.print(f"[bold]{data['repo']}[/bold]: [{colour}]{state}[/{colour}] — {data.get('branch')} = "
              f"{data.get('start')} rebased from {data.get('base')} onto {data.get('onto')}")
    stop = data.get("stopped_at")
    if stop:
        out.print(f"  stopped at commit {stop['index']}/{stop['total']}: {str(stop['commit'])[:12]} "
                  f"{escape(repr(stop['subject']))}")
    if data.get("conflicts"):
        out.print("  unmerged files:")
        for c in data["conflicts"]:
            out.print(f"    {c['kind']:<14} {escape(c['path'])}")
    failure = data.get("failure")
    if failure and state == "anchor-failed":
        out.print(f"  [red]{escape(failure['message'])}[/red]")
        if failure.get("path"):
            out.print(f"  the symbol lives now in: {escape(failure['path'])}")
        if failure.get("change"):
            out.print("  the fork's change that must be carried there:")
            # markup=False prints the text as it is: escaping it as well would add backslashes.
            out.print(failure["change"], markup=False, highlight=False)
    for note in data.get("notes") or []:
        out.print(f"  {escape(note)}")
    if data.get("next"):
        out.print("  next:")
        for i, step in enumerate(data["next"], 1):
            out.print(f"    {i}. {escape(step)}")
