"""Rendering of ``forkops check`` / ``forkops nightly`` results: a rich table for people, and
report.json, report.md and junit.xml for CI.

The nightly report compares each (repository, tag) with the previous report, when there is
one. A tag is *incompatible* when its rebase conflicts or an anchor fails on the predicted
result. It is *newly* incompatible when it is incompatible now and was compatible, or absent,
in the previous report; without a previous report every incompatible tag counts as new (a
first run has nobody who has seen it yet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkops import fsutil
from forkops.errors import BadInput
from forkops.predict import Prediction, RepoCheck

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from forkops.ci import IssueRequest

REPORT_FORMAT = "forkops-nightly/1"

# The change of one (repository, tag) since the previous report.
NEW_TAG = "new-tag"  # not in the previous report
BROKE = "broke"  # was compatible, is not any more
FIXED = "fixed"  # was incompatible, is compatible now
CHANGED = "changed"  # incompatible before and now, at another commit or with other files
UNCHANGED = "unchanged"


# ---------------------------------------------------------------------------------------
# Human output
# ---------------------------------------------------------------------------------------
def _anchor_text(p: Prediction) -> list[tuple[bool | None, str]]:
    """(ok, text) per anchor: on the predicted tree when the rebase ends (with the fork commits
    whose change is missing and patched copies left in dead files); where upstream has the symbol
    when it stops (ok None: informational). Lines after the first are sub-items."""
    if p.stopped_at is None:
        rows: list[tuple[bool | None, str]] = []
        for a in p.anchors:
            text = f"{a.name} in {a.path}" if a.ok else f"{a.name}: {a.detail}"
            text += "".join(f"\n  missing {sha[:10]} {subject}"
                            for sha, subject in dict.fromkeys((c.sha, c.subject) for c in a.missing))
            text += "".join(f"\n  warning: patched copy left in {d} (not compiled)" for d in a.dead_copies)
            rows.append((a.ok, text))
        return rows
    return [(None, f"{a.name}: upstream defines it in {a.path or ', '.join(a.defined_in) or 'no file'}")
            for a in p.upstream_anchors]


def result_label(p: Prediction) -> str:
    """The verdict in words: conflict, api drift, resolved (recorded), clean, or either of the
    last two with a failing anchor."""
    if p.status in ("conflict", "drift"):
        return "conflict" if p.status == "conflict" else "api drift"
    label = "resolved (recorded)" if p.status == "resolved" else "clean"
    return label if p.anchors_ok else f"{label}, anchor fails"


def next_command(repo: str, p: Prediction) -> str | None:
    """What a person runs next for this tag (None without a version to upgrade to)."""
    if p.version is None:
        return None
    command = f"forkops upgrade {p.version} --repo {repo}"
    return command + " --accept-recorded" if p.status == "resolved" and p.anchors_ok else command


@dataclass(frozen=True)
class Row:
    """Consecutive tags with identical results, shown as one table row."""

    tags: tuple[str, ...]
    status: str  # Prediction.status, or "anchor" for a clean/resolved result whose anchor fails
    cells: tuple[str, ...]  # result, stops at, files, anchors (+ what callers add), plain text

    @property
    def tag_text(self) -> str:
        if len(self.tags) == 1:
            return self.tags[0]
        return f"{self.tags[0]} .. {self.tags[-1]} ({len(self.tags)} tags)"


def _cells(p: Prediction, *, markdown: bool) -> tuple[str, ...]:
    """result, stops at, files, anchors. Sub-items (the upstream commits behind a conflicting
    file, a missing fork commit) go on their own lines: newlines, or ``<br>`` in Markdown."""
    code = (lambda t: f"`{_md(t)}`") if markdown else (lambda t: t)
    text = _md if markdown else (lambda t: t)
    br = "<br>" if markdown else "\n"
    result = result_label(p)
    if p.resolved:
        # "conflict at 3 of 5" would say the stop is at 3: it is past 3, at the stop column's commit
        at = f"{', '.join(str(r.stopped_at.index) for r in p.resolved)} of {p.total}"
        result += f" at {at}" if p.status == "resolved" else f"; recorded resolutions at {at}"
    if p.dropped:
        result += f" ({len(p.dropped)} dropped)"
    stop = ""
    if p.stopped_at is not None:
        s = p.stopped_at
        stop = f"{s.index}/{s.total} {code(s.sha[:10])} {text(s.subject)}"
    files = br.join([f"{code(c.describe())} ({c.kind})" + "".join(
                         f"{br}  ↳ {code(x.sha[:10])} {text(x.subject)}" for x in c.context) for c in p.conflicts]
                    + [f"drift: {code(d.describe())}" for d in p.drift])
    marks = {True: "✅ " if markdown else "✓ ", False: "❌ " if markdown else "✗ ", None: ""}
    anchors = br.join(marks[ok] + br.join(text(line) for line in t.split("\n")) for ok, t in _anchor_text(p))
    return result, stop, files, anchors


def group_rows(items: Sequence[tuple[Prediction, tuple[str, ...]]], *, markdown: bool = False) -> list[Row]:
    """One row per run of consecutive tags whose cells (and ``extra`` cells) are identical."""
    rows: list[Row] = []
    for p, extra in items:
        status = "anchor" if p.status in ("clean", "resolved") and not p.anchors_ok else p.status
        cells = (*_cells(p, markdown=markdown), *extra)
        if rows and rows[-1].cells == cells and rows[-1].status == status:
            rows[-1] = replace(rows[-1], tags=(*rows[-1].tags, str(p.tag)))
        else:
            rows.append(Row((str(p.tag),), status, cells))
    return rows


_STYLE = {"conflict": "red", "drift": "red", "resolved": "cyan", "clean": "green", "anchor": "yellow"}


def check_table(check: RepoCheck) -> Table:
    """One line per row (a terminal may still fold long cells; :func:`print_table` keeps piped
    output unwrapped); consecutive tags with identical results share a row."""
    from rich.table import Table
    from rich.text import Text

    title = (f"{check.repo}: {check.refs.start} ({len(check.patches)} patches since {check.refs.base}) "
             "rebased onto upstream tags")
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("tag", "result", "stops at", "files", "anchors"):
        table.add_column(column, overflow="fold")
    for row in group_rows([(p, ()) for p in check.results]):
        result, *rest = row.cells
        table.add_row(Text(row.tag_text), Text(result, style=_STYLE[row.status]), *(Text(c) for c in rest))
    if not check.results:
        table.add_row(Text("no upstream tags to check", style="dim"), "", "", "", "")
    return table


def print_table(out: Console, table: Table) -> None:
    """Print ``table``; when the output is not a terminal (a CI log, a pipe), at its natural
    width, so that no row is folded at the 80 columns rich assumes there."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.measure import Measurement

    saved = out.width
    try:
        out.width = max(saved, Measurement.get(out, out.options.update(width=100_000), table).maximum)
        out.print(table)
    finally:
        out.width = saved


def next_steps(check: RepoCheck) -> list[str]:
    """The suggested command per table row that needs a person or has recorded resolutions
    (for a row of several tags: upgrading to its newest)."""
    by_tag = {str(p.tag): p for p in check.results}
    steps = []
    for row in group_rows([(p, ()) for p in check.results]):
        command = next_command(check.repo, by_tag[row.tags[-1]])
        if row.status != "clean" and command:
            steps.append(f"{row.tag_text}: {command}")
    return steps


def _repo_json(check: RepoCheck) -> dict[str, Any]:
    doc = check.as_json()
    for result, p in zip(doc["results"], check.results, strict=True):  # type: ignore[call-overload]
        result["next"] = next_command(check.repo, p)
    return doc


def check_json(checks: Sequence[RepoCheck], *, single: bool) -> dict[str, Any]:
    """The ``check --json`` document: one repository object (docs/SPEC.md shape) when ``single``,
    else ``{"repos": [...]}``."""
    if single:
        return _repo_json(checks[0])
    return {"repos": [_repo_json(c) for c in checks]}


# ---------------------------------------------------------------------------------------
# Nightly reports
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    repo: str
    prediction: Prediction
    change: str | None  # None without a previous report

    @property
    def newly_incompatible(self) -> bool:
        if self.prediction.compatible:
            return False
        return self.change is None or self.change in (NEW_TAG, BROKE)


def load_previous(path: Path) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(repo, tag) -> result object of a previous report.json. A malformed file is BadInput."""
    try:
        data = json.loads(path.read_text())
        found: dict[tuple[str, str], Mapping[str, Any]] = {}
        for repo in data["repos"]:
            for result in repo["results"]:
                found[(str(repo["repo"]), str(result["tag"]))] = result
    except OSError as exc:
        raise BadInput(f"--previous {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"--previous {path}: not a forkops nightly report ({exc})") from None
    return found


def _was_compatible(old: Mapping[str, Any]) -> bool:
    if "compatible" in old:
        return bool(old["compatible"])
    return old.get("status") == "clean" and all(a.get("ok", False) for a in old.get("anchors", []))


def classify(repo: str, p: Prediction, previous: Mapping[tuple[str, str], Mapping[str, Any]] | None) -> str | None:
    if previous is None:
        return None
    old = previous.get((repo, str(p.tag)))
    if old is None:
        return NEW_TAG
    was = _was_compatible(old)
    if was and not p.compatible:
        return BROKE
    if not was and p.compatible:
        return FIXED
    if not was:
        old_commit = (old.get("commit") or {}).get("sha")
        now_commit = p.stopped_at.sha if p.stopped_at else None
        if old_commit != now_commit or sorted(old.get("conflicts", [])) != p.conflict_paths:
            return CHANGED
    return UNCHANGED


@dataclass(frozen=True)
class NightlyReport:
    checks: tuple[RepoCheck, ...]
    entries: tuple[Entry, ...]
    generated_at: str
    previous: str | None  # the previous report's path, if one was compared

    @classmethod
    def build(cls, checks: Sequence[RepoCheck], previous: Mapping[tuple[str, str], Mapping[str, Any]] | None,
              *, previous_path: str | None = None, now: datetime | None = None) -> NightlyReport:
        entries = tuple(Entry(c.repo, p, classify(c.repo, p, previous)) for c in checks for p in c.results)
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(tuple(checks), entries, stamp, previous_path if previous is not None else None)

    @property
    def incompatible(self) -> list[Entry]:
        return [e for e in self.entries if not e.prediction.compatible]

    @property
    def newly_incompatible(self) -> list[Entry]:
        return [e for e in self.entries if e.newly_incompatible]

    def failed(self, fail_on: str) -> bool:
        return bool(self.incompatible if fail_on == "any" else self.newly_incompatible)

    # -- JSON ------------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        changes = {(e.repo, str(e.prediction.tag)): e for e in self.entries}
        repos = []
        for check in self.checks:
            doc = _repo_json(check)
            for result in doc["results"]:
                entry = changes[(check.repo, result["tag"])]
                result["change"] = entry.change
                result["newly_incompatible"] = entry.newly_incompatible
            repos.append(doc)
        return {
            "format": REPORT_FORMAT,
            "generated_at": self.generated_at,
            "previous": self.previous,
            "summary": {
                "tags": len(self.entries),
                "conflicts": sum(e.prediction.status == "conflict" for e in self.entries),
                "incompatible": len(self.incompatible),
                "newly_incompatible": [f"{e.repo} {e.prediction.tag}" for e in self.newly_incompatible],
                "fixed": [f"{e.repo} {e.prediction.tag}" for e in self.entries if e.change == FIXED],
            },
            "repos": repos,
        }

    # -- Markdown --------------------------------------------------------------------------
    def markdown(self) -> str:
        lines = [f"# forkops nightly: upstream compatibility ({self.generated_at})", ""]
        new = self.newly_incompatible
        lines.append(f"{len(self.entries)} tags checked, {len(self.incompatible)} need a person"
                     + (f", **{len(new)} newly incompatible**" if new else "") + ".")
        if self.previous is None:
            lines.append("No previous report was compared.")
        lines.append("")
        by_repo = {c.repo: [e for e in self.entries if e.repo == c.repo] for c in self.checks}
        for check in self.checks:
            lines.append(f"## {check.repo}: `{check.refs.start}` "
                         f"({len(check.patches)} patches since `{check.refs.base}`)")
            lines.append("")
            if not by_repo[check.repo]:
                lines += ["No upstream tags newer than the newest fork branch.", ""]
                continue
            lines.append("| tag | result | stops at | files | anchors | since last report | next |")
            lines.append("|---|---|---|---|---|---|---|")
            items = []
            for e in by_repo[check.repo]:
                change = e.change or ""
                if e.newly_incompatible:
                    change = f"**newly incompatible**{f' ({change})' if change else ''}"
                items.append((e.prediction, (change,)))
            newest = {str(e.prediction.tag): e.prediction for e in by_repo[check.repo]}
            for row in group_rows(items, markdown=True):
                icon = {"conflict": "❌", "drift": "❌", "resolved": "🔁", "clean": "✅", "anchor": "⚠️"}[row.status]
                result, *rest = row.cells
                command = next_command(check.repo, newest[row.tags[-1]])  # a group: its newest tag
                rest.append(f"`{command}`" if command else "")
                tags = " .. ".join(f"`{t}`" for t in (row.tags[0], row.tags[-1])[:len(row.tags)])
                if len(row.tags) > 1:
                    tags += f" ({len(row.tags)} tags)"
                lines.append(f"| {tags} | {icon} {result} | " + " | ".join(rest) + " |")
            lines.append("")
        return "\n".join(lines)

    # -- Issues (nightly --open-issue) -------------------------------------------------------
    def issue_requests(self, environ: Mapping[str, str] | None = None) -> list[IssueRequest]:
        """One issue per newly incompatible tag; the body links the CI run when
        ``$GITHUB_SERVER_URL``, ``$GITHUB_REPOSITORY`` and ``$GITHUB_RUN_ID`` are set."""
        from forkops.ci import TITLE_PREFIX, IssueRequest  # nightly --open-issue only

        env = environ if environ is not None else os.environ
        run_url = ""
        if all(env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")):
            run_url = f"{env['GITHUB_SERVER_URL']}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        checks = {c.repo: c for c in self.checks}
        requests = []
        for e in self.newly_incompatible:
            p, check = e.prediction, checks[e.repo]
            result, stop, files, anchors = _cells(p, markdown=True)
            lines = [f"`forkops nightly` ({self.generated_at}): rebasing **{e.repo}** `{check.refs.start}` "
                     f"({len(check.patches)} patches since `{check.refs.base}`) onto upstream `{p.tag}` "
                     "needs a person.", "",
                     f"- result: {result}"]
            lines += [f"- stops at: {stop}"] if stop else []
            lines += [f"- files: {files}"] if files else []
            lines += [f"- anchors: {anchors}"] if anchors else []
            lines.append(f"- since the last report: {e.change or 'first run'}")
            command = next_command(e.repo, p)
            if command:
                lines += ["", "Next:", "", "```", command, "```"]
            if run_url:
                lines += ["", f"Run: {run_url}"]
            requests.append(IssueRequest(f"{TITLE_PREFIX}{e.repo} {p.tag} needs a person", "\n".join(lines) + "\n"))
        return requests

    # -- JUnit -----------------------------------------------------------------------------
    def junit(self) -> bytes:
        import xml.etree.ElementTree as ET  # nightly only: `check --json` need not load it

        root = ET.Element("testsuites", name="forkops nightly", tests=str(len(self.entries)),
                          failures=str(len(self.incompatible)))
        for check in self.checks:
            mine = [e for e in self.entries if e.repo == check.repo]
            suite = ET.SubElement(root, "testsuite", name=f"forkops.{check.repo}", tests=str(len(mine)),
                                  failures=str(sum(not e.prediction.compatible for e in mine)),
                                  timestamp=self.generated_at)
            for e in mine:
                p = e.prediction
                case = ET.SubElement(suite, "testcase", classname=f"forkops.{check.repo}",
                                     name=f"rebase {check.refs.start} onto {p.tag}", time=f"{p.seconds:.3f}")
                if p.stopped_at is not None:
                    s = p.stopped_at
                    message = (f"conflict at commit {s.index}/{s.total} {s.sha[:12]} {s.subject!r}: "
                               + ", ".join(p.conflict_paths))
                    detail = [message, *(f"  {c.path}: {c.kind}" for c in p.conflicts)]
                    ET.SubElement(case, "failure", message=message, type="conflict").text = "\n".join(detail)
                elif p.status == "drift":
                    message = "api drift: " + "; ".join(d.describe() for d in p.drift)
                    ET.SubElement(case, "failure", message=message, type="api-drift").text = message
                elif not p.anchors_ok:
                    bad = [a for a in p.anchors if not a.ok]
                    message = "; ".join(f"anchor {a.name}: {a.detail}" for a in bad)
                    ET.SubElement(case, "failure", message=message, type="anchor").text = message
                notes = [f"resolved with recorded resolutions at {r.stopped_at.index}/{r.stopped_at.total} "
                         f"{r.stopped_at.sha[:12]} {r.stopped_at.subject!r}: "
                         + ", ".join(a.path for a in r.applied) for r in p.resolved]
                if p.dropped:
                    notes.append("dropped (already upstream): " + "; ".join(f"{d.sha[:12]} {d.subject}"
                                                                           for d in p.dropped))
                if notes:
                    ET.SubElement(case, "system-out").text = "\n".join(notes)
        ET.indent(root)
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data + b"\n"

    # -- files -----------------------------------------------------------------------------
    def write(self, directory: Path) -> list[Path]:
        """Write report.json, report.md and junit.xml atomically; return their paths."""
        paths = [directory / "report.json", directory / "report.md", directory / "junit.xml"]
        fsutil.write_atomic(paths[0], json.dumps(self.as_json(), indent=2) + "\n")
        fsutil.write_atomic(paths[1], self.markdown() + "\n")
        fsutil.write_atomic(paths[2], self.junit())
        return paths

    def append_step_summary(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """Append the Markdown to ``$GITHUB_STEP_SUMMARY`` when set (GitHub Actions)."""
        target = (environ if environ is not None else os.environ).get("GITHUB_STEP_SUMMARY")
        if not target:
            return None
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(self.markdown() + "\n")
        return Path(target)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
