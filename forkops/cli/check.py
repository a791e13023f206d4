"""CLI commands: ``check`` (predict how upstream tags would rebase) and ``nightly`` (the same for
every repository, with CI reports)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.common import JsonOption, RepoOption, console, load_workspace, print_json
from forkops.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from forkops.git import Repo
    from forkops.predict import RepoCheck
    from forkops.workspace import RepoConfig, Workspace

CHECK_HELP = """Predict, without touching any worktree, how each upstream tag would rebase.

Simulates `git rebase --onto TAG BASE START` commit by commit with `git merge-tree` and
reports what the real rebase would: clean, or the first commit that stops and exactly its
unmerged files; patches already upstream are shown as dropped. The playbook's anchors are
checked on each clean result.

Defaults are chosen as `forkops upgrade` chooses them: START is the newest fork branch, BASE
the newest upstream release tag reachable from it, and the tags are every upstream release
after BASE (release candidates only with --include-rc).

Writes to the clone only what the documented flow writes: the upstream remote (the playbook's
name, e.g. `tf`, set to the workspace's upstream URL) and the upstream tags it checks, fetched
into refs/tags. Objects created by the merges live in a temporary directory that is deleted.
A missing clone is cloned from origin.

Exit status: 0 every tag rebases cleanly and its anchors hold; 1 some tag conflicts or an
anchor fails (a person must look); 2 bad input; 3 git or the network failed.
With --json and --repo, prints one object {"repo", "start", "base", "results": [...]};
without --repo, {"repos": [one such object per repository]}.
"""

NIGHTLY_HELP = """Check every repository against every upstream tag newer than its newest fork branch.

Refreshes each clone from origin (cloning it when missing), predicts each tag as `check`
does and writes report.json, report.md and junit.xml (one test case per repository and tag;
a conflict or failed anchor is a failure) atomically into --report-dir. The Markdown is
appended to $GITHUB_STEP_SUMMARY when that is set. With --previous, each tag is marked with
what changed since that report (a missing previous file is a first run).

With --open-issue, each newly incompatible tag gets a GitHub issue through the gh CLI
(titled "forkops nightly: REPO TAG needs a person"; an open issue with that title gets a
comment instead), after the reports are written.

Exit status: 1 when a tag newly became incompatible (conflict or failed anchor that the
previous report did not have; every incompatible tag when there is no previous report),
or with --fail-on any when any tag is incompatible; 0 otherwise; 2 bad input; 3 git or gh failed.
A tag whose stops all have recorded resolutions (forkops resolutions) is compatible.
"""


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _note(text: str) -> None:
    """A progress line on stderr. Plain print: `check --json` never needs rich (importing it
    costs more than a merge step)."""
    print(text, file=sys.stderr, flush=True)


def _progress(name: str) -> Callable[[str, float | None], None]:
    last: list[str] = [""]

    def report(stage: str, _fraction: float | None) -> None:
        if stage != last[0]:
            last[0] = stage
            _note(f"{name}: cloning: {stage}")

    return report


def _open(rc: RepoConfig, *, refresh_origin: bool) -> Repo:
    from forkops.init import ensure_clone

    existed = rc.path.exists()
    repo = ensure_clone(rc, _progress(rc.name))
    if not existed:
        _note(f"{rc.name}: cloned {rc.origin} into {rc.path}")
    elif refresh_origin and repo.remote_url("origin") is not None:
        repo.fetch("origin", [])
    return repo


def _check_one(ws: Workspace, rc: RepoConfig, *, start: str | None, base: str | None, since: str | None,
               tags: list[str] | None, include_rc: bool, nightly: bool) -> RepoCheck:
    from forkops import predict, resolutions

    pb = ws.playbook(rc)
    repo = _open(rc, refresh_origin=nightly)
    if nightly:
        since = str(predict.newest_fork_branch(repo, pb)[1])
    _note(f"{rc.name}: predicting upstream tags...")
    return predict.check_repo(rc.name, repo, pb, rc.upstream, start=start, base=base, since=since,
                              tags=tags, include_rc=include_rc, resolutions=resolutions.Book.of(ws.root, rc.name))


def check(
    repo: RepoOption = None,
    start: Annotated[str | None, typer.Option("--from", metavar="BRANCH",
                                              help="Start branch (default: the newest fork branch).")] = None,
    base: Annotated[str | None, typer.Option("--base", metavar="TAG",
                                             help="Base tag (default: newest upstream release in START).")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="V",
                                              help="Only tags newer than version V (default: the base).")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tags", metavar="TAGS",
                                                   help="Exactly these tags (names or versions).")] = None,
    include_rc: Annotated[bool, typer.Option("--include-rc", help="Also release candidates.")] = False,
    as_json: JsonOption = False,
) -> ExitCode:
    if since is not None:
        from forkops.version import Version

        Version.parse(since)  # a malformed version is bad input before anything runs
    ws = load_workspace()
    checks = [_check_one(ws, rc, start=start, base=base, since=since, tags=_split(tags),
                         include_rc=include_rc, nightly=False) for rc in ws.select(repo)]
    if as_json:
        from forkops import report

        print_json(report.check_json(checks, single=repo is not None))
    else:
        _print_checks(checks)
    return ExitCode.OK if all(c.compatible for c in checks) else ExitCode.NEEDS_PERSON


def _print_checks(checks: list[RepoCheck]) -> None:
    from forkops import report

    out = console()
    for c in checks:
        report.print_table(out, report.check_table(c))
        for r in c.results:
            for warning in r.warnings:
                out.print(f"{c.repo} {r.tag}: [yellow]warning:[/yellow] {warning}", soft_wrap=True)
        bad = [r for r in c.results if not r.compatible]
        recorded = sum(r.status == "resolved" for r in c.results)
        note = f" ({recorded} with recorded resolutions)" if recorded else ""
        if bad:
            out.print(f"{c.repo}: {len(bad)} of {len(c.results)} tags need a person "
                      f"({', '.join(str(r.tag) for r in bad)})", markup=False)
        else:
            out.print(f"{c.repo}: all {len(c.results)} tags rebase cleanly{note}", markup=False)
        for line in report.next_steps(c):
            out.print(f"  next for {line}", markup=False)


def nightly(
    report_dir: Annotated[Path, typer.Option("--report-dir", metavar="DIR",
                                             help="Where report.json, report.md, junit.xml go.")] = Path("."),
    previous: Annotated[Path | None, typer.Option("--previous", metavar="FILE",
                                                  help="The last report.json, to mark what changed.")] = None,
    fail_on: Annotated[str, typer.Option("--fail-on", metavar="[new|any]",
                                         help="Exit 1 on newly incompatible tags (new) or on any.")] = "new",
    repo: RepoOption = None,
    include_rc: Annotated[bool, typer.Option("--include-rc", help="Also release candidates.")] = False,
    open_issue: Annotated[bool, typer.Option("--open-issue", help="File (or comment on) one GitHub issue per "
                                             "newly incompatible tag with the gh CLI.")] = False,
) -> ExitCode:
    from forkops import report

    if fail_on not in ("new", "any"):
        raise BadInput(f"--fail-on {fail_on}: expected 'new' or 'any'")
    old = None
    if previous is not None:
        if previous.exists():
            old = report.load_previous(previous)
        else:
            print(f"forkops: warning: no previous report at {previous}; treating this as a first run",
                  file=sys.stderr)
    ws = load_workspace()
    checks = [_check_one(ws, rc, start=None, base=None, since=None, tags=None, include_rc=include_rc,
                         nightly=True) for rc in ws.select(repo)]
    nightly_report = report.NightlyReport.build(checks, old, previous_path=str(previous) if previous else None)
    paths = nightly_report.write(report_dir)
    nightly_report.append_step_summary()
    _print_checks(checks)
    new = nightly_report.newly_incompatible
    out = console()
    if new:
        out.print("[red]newly incompatible:[/red] " + ", ".join(f"{e.repo} {e.prediction.tag}" for e in new))
    out.print("reports: " + ", ".join(str(p) for p in paths))
    if open_issue:
        from forkops import ci

        for action in ci.file_issues(nightly_report.issue_requests()):
            where = f"#{action.number}" if action.number is not None else action.url
            out.print(f"issue {action.action}: {action.title} ({where})", markup=False)
    return ExitCode.NEEDS_PERSON if nightly_report.failed(fail_on) else ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command("check", help=CHECK_HELP)(check)
    app.command("nightly", help=NIGHTLY_HELP)(nightly)
