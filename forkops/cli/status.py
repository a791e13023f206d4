"""``forkops status`` and its rendering, without typer.

The typer command (``forkops.cli.upgrade``) and the fast path of :func:`forkops.cli.main` both
call :func:`show`. Text is built as lines of styled spans (:func:`status_lines`): on a terminal
rich renders the styles; anywhere else the spans are written as plain text, exactly what rich
prints when it is not writing to a terminal, without importing rich (~25 ms of start-up).
Text taken from git (subjects, paths, a diff) is printed verbatim: no markup, no emoji codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from forkops.cli.context import console, load_workspace, may_be_terminal, print_json
from forkops.errors import ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.upgrade.status import Status

Span = tuple[str, str]  # (text, rich style; "" for none)
Line = tuple[Span, ...]

# What rich's Text removes from any text it is given (rich.control.strip_control_codes): bell,
# backspace, vertical tab, form feed, carriage return.
_STRIPPED = dict.fromkeys((7, 8, 11, 12, 13))


def show(*, as_json: bool) -> ExitCode:
    """What an upgrade in progress is doing and waiting for. Exit 0 whatever the run's state:
    the status was read (``forkops upgrade`` exits 1 when it stops)."""
    from forkops.upgrade.status import status

    report = status(load_workspace())
    if as_json:
        print_json(report.as_json())
    else:
        write(status_lines(report))
    return ExitCode.OK


def write(lines: Sequence[Line], out: Console | None = None) -> None:
    """Print ``lines`` to ``out`` (default: stdout, through rich only when it would colour)."""
    if out is None and not may_be_terminal(sys.stdout) and not any("\t" in text for line in lines for text, _ in line):
        for line in lines:
            sys.stdout.write(plain(line) + "\n")
        return
    from rich.text import Text

    out = out or console()
    for line in lines:
        out.print(Text.assemble(*line))


def plain(line: Line) -> str:
    """``line`` as rich prints it where it does not colour (tabs, which rich expands by cell
    width, are left to rich)."""
    return "".join(text for text, _ in line).translate(_STRIPPED)


def _line(*spans: str | Span) -> Line:
    return tuple((s, "") if isinstance(s, str) else s for s in spans)


def status_lines(report: Status) -> list[Line]:
    """Human form of ``forkops status`` (also shown when an upgrade stops)."""
    from forkops.upgrade.state import FailureKind
    from forkops.upgrade.status import RECORDED_HINT

    run, cur = report.run, report.current
    lines: list[Line] = []
    if report.running:
        lines.append(_line(("a forkops run is working in this workspace now", "bold"),
                           f" ({report.running}): what follows is a moment of it"))
    if run is None and cur is None and report.pending_repo is None:
        return [*lines, _line("no upgrade in progress")]
    if run is not None:
        steps = ", ".join(f"{r.repo} {r.state if r.state != 'idle' else r.phase}" for r in run.repos)
        lines.append(_line((f"upgrade to {run.version}", "bold"), f" (run {run.id}): {steps}"))
    if cur is None:  # a run none of whose repositories started yet
        lines.append(_line((str(report.pending_repo), "bold"), ": ", ("idle", "cyan"),
                           " — None = None rebased from None onto None"))
        if run is not None:
            lines += [_line("  next:"), _line("    1. forkops upgrade --continue"),
                      _line("    2. (or: forkops upgrade --abort)")]
        return lines
    colour = {"conflict": "yellow", "anchor-failed": "red", "commit-missing": "red", "key-found": "red",
              "done": "green"}.get(cur.state, "cyan")
    lines.append(_line((cur.repo, "bold"), ": ", (cur.state, colour),
                       f" — {cur.branch} = {cur.start} rebased from {cur.base} onto {cur.onto}"))
    stop = cur.stopped_at
    if stop:
        lines.append(_line(f"  stopped at commit {stop.index}/{stop.total}: {stop.commit[:12]} {stop.subject!r}"))
    if cur.conflicts:
        lines.append(_line("  unmerged files:"))
        for c in cur.conflicts:
            mark = f"  ({RECORDED_HINT})" if c.recorded else ""
            where = f"{c.moved_from} → {c.path}" if c.moved_from else c.path
            lines.append(_line(f"    {c.kind:<14} {where}{mark}"))
            lines += [_line(f"{'':<20}upstream: {sha[:10]} {subject}") for sha, subject in c.context]
    failure = cur.failure
    if failure and cur.state != "done":
        lines.append(_line("  ", (failure.message, "red")))
        if cur.state != "commit-missing":
            lines += [_line(f"    {line}") for line in failure.lines]
        if failure.path and failure.kind == FailureKind.ANCHOR:
            lines.append(_line(f"  the symbol lives now in: {failure.path}"))
        if failure.change:
            lines.append(_line("  the fork's change that must be carried there:"))
            lines += [_line(line) for line in failure.change.split("\n")]
    lines += [_line(f"  {note}") for note in cur.notes]
    if cur.next:
        lines.append(_line("  next:"))
        lines += [_line(f"    {i}. {step}") for i, step in enumerate(cur.next, 1)]
    return lines
