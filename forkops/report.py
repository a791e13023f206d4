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
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkops import fsutil
from forkops.errors import BadInput
from forkops.predict import Prediction, RepoCheck

if TYPE_CHECKING:
    from rich.table import Table

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
def _stop_text(p: Prediction) -> str:
    if p.stopped_at is None:
        return ""
    s = p.stopped_at
    return f"{s.index}/{s.total} {s.sha[:10]} {s.subject}"


def _anchor_text(p: Prediction) -> list[tuple[bool | None, str]]:
    """(ok, text) per anchor: on the predicted tree when clean; where upstream has the symbol
    when the rebase stops (ok None: informational)."""
    if p.rebase == "clean":
        rows: list[tuple[bool | None, str]] = []
        for a in p.anchors:
            text = f"{a.name} in {a.path}" if a.ok else f"{a.name}: {a.detail}"
            text += "".join(f"\n  missing {sha[:10]} {subject}"
                            for sha, subject in dict.fromkeys((c.sha, c.subject) for c in a.missing))
            text += "".join(f"\n  [yellow]warning:[/yellow] patched copy left in {d} (not compiled)"
                            for d in a.dead_copies)
            rows.append((a.ok, text))
        return rows
    return [(None, f"{a.name}: upstream defines it in {a.path or ', '.join(a.defined_in) or 'no file'}")
            for a in p.upstream_anchors]


def check_table(check: RepoCheck) -> Table:
    from rich.table import Table

    title = (f"{check.repo}: {check.refs.start} ({len(check.patches)} patches since {check.refs.base}) "
             "rebased onto upstream tags")
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("tag", "result", "stops at", "files", "anchors"):
        table.add_column(column, overflow="fold")
    for p in check.results:
        if p.status == "conflict":
            result = "[red]conflict[/red]"
        elif p.status == "drift":
            result = "[red]api drift[/red]"
        elif p.anchors_ok:
            result = "[green]clean[/green]"
        else:
            result = "[yellow]clean, anchor fails[/yellow]"
        if p.dropped:
            result += f"\n[dim]{len(p.dropped)} dropped[/dim]"
        anchors = "\n".join(
            ("[green]✓[/green] " if ok else "[red]✗[/red] " if ok is False else "[dim]·[/dim] ") + text
            for ok, text in _anchor_text(p)) or "[dim]none[/dim]"
        files = "\n".join([f"{c.describe()} [dim]({c.kind})[/dim]" + "".join(
                              f"\n  [dim]↳ {x.sha[:10]} {x.subject}[/dim]" for x in c.context) for c in p.conflicts]
                          + [f"[red]drift[/red] {d.describe()}" for d in p.drift])
        table.add_row(str(p.tag), result, _stop_text(p), files, anchors)
    if not check.results:
        table.add_row("[dim]no upstream tags to check[/dim]", "", "", "", "")
    return table


def check_json(checks: Sequence[RepoCheck], *, single: bool) -> dict[str, Any]:
    """The ``check --json`` document: one repository object (SPEC shape) when ``single``,
    else ``{"repos": [...]}``."""
    if single:
        return checks[0].as_json()
    return {"repos": [c.as_json() for c in checks]}


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
            doc = check.as_json()
            for result in doc["results"]:  # type: ignore[attr-defined]
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
            lines.append("| tag | result | stops at | files | anchors | since last report |")
            lines.append("|---|---|---|---|---|---|")
            for e in by_repo[check.repo]:
                p = e.prediction
                result = ("❌ conflict" if p.status == "conflict" else "❌ api drift" if p.status == "drift"
                          else "✅ clean" if p.anchors_ok else "⚠️ clean, anchor fails")
                if p.dropped:
                    result += f" ({len(p.dropped)} dropped)"
                stop = (f"{p.stopped_at.index}/{p.stopped_at.total} `{p.stopped_at.sha[:10]}` "
                        f"{_md(p.stopped_at.subject)}" if p.stopped_at else "")
                files = "<br>".join([f"`{_md(c.path)}` ({c.kind})" for c in p.conflicts]
                                    + [f"drift: `{_md(d.describe())}`" for d in p.drift])
                anchors = "<br>".join(("✅ " if ok else "❌ " if ok is False else "") + _md(text)
                                      for ok, text in _anchor_text(p))
                change = e.change or ""
                if e.newly_incompatible:
                    change = f"**newly incompatible**{f' ({change})' if change else ''}"
                lines.append(f"| `{p.tag}` | {result} | {stop} | {files} | {anchors} | {change} |")
            lines.append("")
        return "\n".join(lines)

    # -- JUnit -----------------------------------------------------------------------------
    def junit(self) -> bytes:
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
                if p.dropped:
                    ET.SubElement(case, "system-out").text = "dropped (already upstream): " + "; ".join(
                        f"{d.sha[:12]} {d.subject}" for d in p.dropped)
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
