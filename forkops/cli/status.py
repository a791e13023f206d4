"""``forkops status`` and its rendering, without typer.

The typer command (``forkops.cli.upgrade``) and the fast path of :func:`forkops.cli.main` both
call :func:`show`. Text is built as lines of styled spans (:func:`status_lines`): on a terminal
rich renders the styles; anywhere else the spans are written as plain text, exactly what rich
prints when it is not writing to a terminal, without importing rich (~25 ms of start-up).
Text taken from git (subjects, paths, a diff) is printed verbatim: no markup, no emoji codes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forkops.cli.context import console, load_workspace, print_json
from forkops.errors import ExitCode

if TYPE_CHECKING:
    from rich.console import Console

Span = tuple[str, str]  # (text, rich style; "" for none)
Line = tuple[Span, ...]

# What rich's Text removes from any text it is given (rich.control.strip_control_codes): bell,
# backspace, vertical tab, form feed, carriage return.
_STRIPPED = dict.fromkeys((7, 8, 11, 12, 13))
# Variables that make rich colour output that is not a terminal (see rich.console.Console.is_terminal).
_FORCE_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE")


def show(*, as_json: bool) -> ExitCode:
    """What an upgrade in progress is doing and waiting for. Exit 0 whatever the run's state:
    the status was read (``forkops upgrade`` exits 1 when it stops)."""
    from forkops.upgrade.status import status

    data = status(load_workspace()).as_json()
    if as_json:
        print_json(data)
    else:
        write(status_lines(data))
    return ExitCode.OK


def write(lines: Sequence[Line], out: Console | None = None) -> None:
    """Print ``lines`` to ``out`` (default: stdout, through rich only when it would colour)."""
    if out is None and not _terminal() and not any("\t" in text for line in lines for text, _ in line):
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


def _terminal() -> bool:
    """True where rich may colour stdout (a terminal, or forced by the environment)."""
    return sys.stdout.isatty() or any(name in os.environ for name in _FORCE_TERMINAL)


def _line(*spans: str | Span) -> Line:
    return tuple((s, "") if isinstance(s, str) else s for s in spans)


def status_lines(data: dict[str, Any]) -> list[Line]:
    """Human form of ``forkops status`` (also shown when an upgrade stops), from its JSON."""
    run = data.get("run")
    if run is None and data.get("repo") is None:
        return [_line("no upgrade in progress")]
    lines: list[Line] = []
    if run is not None:
        steps = ", ".join(f"{r['repo']} {r['state'] if r['state'] != 'idle' else r['phase']}" for r in run["repos"])
        lines.append(_line((f"upgrade to {run['version']}", "bold"), f" (run {run['id']}): {steps}"))
    state = data["state"]
    colour = {"conflict": "yellow", "anchor-failed": "red", "commit-missing": "red", "key-found": "red",
              "done": "green"}.get(state, "cyan")
    lines.append(_line((str(data["repo"]), "bold"), ": ", (state, colour),
                       f" — {data.get('branch')} = {data.get('start')} rebased from {data.get('base')} "
                       f"onto {data.get('onto')}"))
    stop = data.get("stopped_at")
    if stop:
        lines.append(_line(f"  stopped at commit {stop['index']}/{stop['total']}: {str(stop['commit'])[:12]} "
                           f"{stop['subject']!r}"))
    if data.get("conflicts"):
        lines.append(_line("  unmerged files:"))
        for c in data["conflicts"]:
            mark = "  (resolved from a recorded resolution: review, then --continue)" if c.get("recorded") else ""
            where = f"{c['moved_from']} → {c['path']}" if c.get("moved_from") else c["path"]
            lines.append(_line(f"    {c['kind']:<14} {where}{mark}"))
            lines += [_line(f"{'':<20}upstream: {str(x['sha'])[:10]} {x['subject']}") for x in c.get("context") or []]
    failure = data.get("failure")
    if failure and state != "done":
        lines.append(_line("  ", (failure["message"], "red")))
        if state != "commit-missing":
            lines += [_line(f"    {line}") for line in failure.get("lines") or []]
        if failure.get("path") and failure.get("kind") == "anchor":
            lines.append(_line(f"  the symbol lives now in: {failure['path']}"))
        if failure.get("change"):
            lines.append(_line("  the fork's change that must be carried there:"))
            lines += [_line(line) for line in str(failure["change"]).split("\n")]
    lines += [_line(f"  {note}") for note in data.get("notes") or []]
    if data.get("next"):
        lines.append(_line("  next:"))
        lines += [_line(f"    {i}. {step}") for i, step in enumerate(data["next"], 1)]
    return lines
