"""CLI commands: ``forkops upgrade`` (start / --plan / --continue / --skip / --abort) and ``forkops status``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkops.cli.common import JsonOption, RepoOption, console, err_console, load_workspace, print_json
from forkops.cli.context import may_be_terminal
from forkops.cli.status import Line, write
from forkops.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.upgrade import Outcome
    from forkops.upgrade.preview import RepoPreview
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
    branch: Annotated[str | None, typer.Option("--branch", metavar="NAME",
                                               help="Write the result to NAME instead of bX.Y.Z.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Show what the upgrade would do; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --plan: machine-readable output.")] = False,
    force_with_lease: Annotated[bool, typer.Option("--force-with-lease",
                                                   help="Push with --force-with-lease (implies --push).")] = False,
    cont: Annotated[bool, typer.Option("--continue", help="Continue after resolving conflicts.")] = False,
    skip: Annotated[bool, typer.Option("--skip", help="Drop the commit the rebase stopped on and continue.")] = False,
    abort: Annotated[bool, typer.Option("--abort", help="Undo the run: restore every ref and HEAD.")] = False,
    accept_recorded: Annotated[bool, typer.Option(
        "--accept-recorded", help="Continue past stops that recorded resolutions (forkops resolutions) fully "
                                  "resolve, without waiting for --continue.")] = False,
) -> ExitCode:
    """Rebase the fork's patch stack onto an upstream release (TensorFlow, then Serving)."""
    from forkops import upgrade as engine
    from forkops.version import Version

    modes = [name for name, on in (("--continue", cont), ("--skip", skip), ("--abort", abort)) if on]
    if len(modes) > 1:
        raise BadInput(f"{' and '.join(modes)} cannot be combined")
    if plan and modes:
        raise BadInput(f"--plan and {modes[0]} cannot be combined")
    if as_json and not plan:
        raise BadInput("--json needs --plan (`forkops status --json` reports a run)")
    if modes:
        extra = [n for n, v in (("X.Y.Z", version), ("--repo", repo), ("--from", from_), ("--base", base),
                                ("--branch", branch)) if v]
        extra += ["--force"] if force else []
        extra += ["--accept-recorded"] if accept_recorded else []
        if abort:
            extra += [n for n, v in (("--push", push), ("--force-with-lease", force_with_lease)) if v]
        if extra:
            raise BadInput(f"{modes[0]} takes no {', '.join(extra)} (the run keeps its own settings)")
    elif version is None:
        raise BadInput("missing X.Y.Z: `forkops upgrade 2.18.0`, or --continue / --skip / --abort")

    ws = load_workspace()
    if plan:
        from forkops.upgrade.preview import preview

        assert version is not None
        req = engine.Request(Version.parse(version), start=from_, base=base, branch=branch, force=force)
        previews = preview(ws, req, repo)
        if as_json:
            print_json({"version": version, "repos": [p.as_json() for p in previews]})
        else:
            render_plan(console(), version, previews)
        return ExitCode.OK

    def log(line: str) -> None:
        write([((line, ""),)])

    if abort:
        from forkops.upgrade.abort import abort as abort_run

        outcome = abort_run(ws, log=log)
    elif modes:
        outcome = engine.resume(ws, skip=skip, push=push, force_with_lease=force_with_lease, log=log)
    else:
        assert version is not None
        opts = engine.Options(Version.parse(version), repo=repo, start=from_, base=base, branch=branch,
                              push=push or force_with_lease, force=force, force_with_lease=force_with_lease,
                              accept_recorded=accept_recorded)
        clone_missing(ws, opts.repo)
        if not may_be_terminal(sys.stderr) or not (err := err_console()).is_terminal:
            # Nobody would see a bar (CI logs, pipes): skip parsing git's progress, and the
            # imports it costs (GitPython, rich).
            return _report(engine.start(ws, opts, log=log), final=True)
        from rich.progress import BarColumn, Progress, TextColumn

        # A TensorFlow tag fetch is hundreds of MiB: git's progress, parsed by GitPython, as a bar.
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                      console=err, transient=True) as bar:
            task = bar.add_task("fetching upstream", total=1.0, stage="", visible=False)

            def progress(stage: str, fraction: float | None) -> None:
                bar.update(task, completed=fraction or 0.0, stage=stage, visible=True)

            outcome = engine.start(ws, opts, log=log, progress=progress)
    return _report(outcome, final=not abort)


def status(
    as_json: JsonOption = False,
) -> ExitCode:
    """What an upgrade in progress is doing and waiting for."""
    from forkops.cli.status import show

    return show(as_json=as_json)


def clone_missing(ws: Workspace, only: str | None) -> None:
    """Clone forks that are not there yet, with a progress bar (on stderr)."""
    from forkops.git import Repo
    from forkops.init import ensure_clone

    for rc in ws.select(only):
        if Repo(rc.path).is_repo():
            continue
        from rich.progress import BarColumn, Progress, TextColumn  # only when there is a clone to show

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                      console=err_console(), transient=True) as bar:
            task = bar.add_task(f"cloning {rc.name}", total=1.0, stage="")

            def progress(stage: str, fraction: float | None, task: Any = task, bar: Progress = bar) -> None:
                bar.update(task, completed=fraction or 0.0, stage=stage)

            ensure_clone(rc, progress)
        err_console().print(f"{rc.name}: cloned {rc.origin} into {rc.path}")


def _report(outcome: Outcome, *, final: bool) -> ExitCode:
    if outcome.stopped:
        from forkops.cli.status import status_lines

        write([(), *status_lines(outcome.report)])
        return ExitCode.NEEDS_PERSON
    run = outcome.report.run
    if final and outcome.state == "done" and run is not None:
        names = ", ".join(r.repo for r in run.repos)
        done: Line = ((f"upgrade to {run.version} done", "green"), (f" ({names})", ""))
        write([done])
    return ExitCode.OK


def render_plan(out: Console, version: str, previews: list[RepoPreview]) -> None:
    """Human form of ``forkops upgrade X.Y.Z --plan``."""
    from rich.markup import escape

    out.print(f"[bold]plan: upgrade to {version}[/bold] (nothing was changed)")
    for p in previews:
        if p.plan is None:
            out.print(f"[bold]{p.repo}[/bold]: [red]refused[/red]: {escape(p.refused or '')}")
            continue
        pl = p.plan
        out.print(f"[bold]{p.repo}[/bold]: {pl.branch} = {pl.start} ({pl.start_sha[:12]}) rebased from {pl.base} "
                  f"onto {pl.onto} ({pl.tag}, {pl.onto_sha[:12]})")
        out.print(f"  {len(p.commits)} commits to replay:")
        for i, c in enumerate(p.commits, 1):
            out.print(f"    {i}. {c.sha[:12]} {escape(c.subject)}")
        if p.stop:
            out.print(f"  [yellow]predicted stop[/yellow] at {p.stop['index']}/{p.stop['total']} "
                      f"{escape(str(p.stop['subject']))!r}: {escape(', '.join(p.conflicts))}")
        else:
            out.print("  [green]predicted: rebases cleanly[/green]")
        for a in p.anchors:
            if not a.get("ok"):
                out.print(f"  anchor {escape(str(a.get('name')))}: {escape(str(a.get('detail', '')))}")
        for d in p.drift:
            out.print(f"  [red]api drift[/red]: {escape(str(d['path']))}:{d['line']}: {escape(str(d['identifier']))} "
                      f"is gone upstream" + (f" (removed by {str(d['removed_by'])[:12]} "
                                             f"{escape(str(d.get('removed_by_subject') or ''))})"
                                             if d.get("removed_by") else ""))
