"""``forkops nightly``: reports, comparison with the previous report, exit codes, the CI workflow."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkops.sandbox import Sandbox
from tests.clihelp import run_cli

WORKFLOW = Path(__file__).resolve().parents[1] / "playbooks" / "ci" / "nightly.yml"


def _nightly(sandbox: Sandbox, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    run = run_cli("-C", str(sandbox.workspace), "nightly", "--report-dir", str(out), *args)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return run.code, report, run.out + run.err


def test_first_run_writes_three_reports_and_fails_on_new_conflicts(
        sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, report, output = _nightly(sandbox, tmp_path / "out", "--previous", str(tmp_path / "missing.json"))
    assert code == 1, output  # no previous report: every incompatible tag is new
    assert "treating this as a first run" in output

    tf, sv = report["repos"]
    assert (tf["repo"], tf["start"], sv["repo"]) == ("tensorflow", "b2.4.0", "serving")
    assert [r["tag"] for r in tf["results"]] == ["v2.4.1", "v2.5.0", "v2.11.0", "v2.18.0"]
    v218 = tf["results"][3]
    assert v218["status"] == "conflict" and v218["conflicts"] == [".bazelrc"] and v218["newly_incompatible"]
    assert v218["commit"]["index"] == 3 and v218["change"] is None
    # tf 2.18.0 and serving's 4 conflicts; tf 2.11.0's anchor is re-applied by upgrade: compatible
    assert report["summary"]["incompatible"] == 5

    suites = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    cases = suites.findall("testsuite/testcase")
    assert len(cases) == 9  # one per repository and tag
    failures = {c.get("classname", "") + " " + c.get("name", ""): c.find("failure") for c in cases}
    failure = failures["forkops.tensorflow rebase b2.4.0 onto v2.18.0"]
    assert failure is not None and failure.get("type") == "conflict"
    assert ".bazelrc" in failure.get("message", "") and "3/5" in failure.get("message", "")
    assert failures["forkops.tensorflow rebase b2.4.0 onto v2.4.1"] is None
    assert failures["forkops.tensorflow rebase b2.4.0 onto v2.11.0"] is None
    assert suites.get("failures") == "5"

    md = (tmp_path / "out" / "report.md").read_text()
    assert "| `v2.18.0` | ❌ conflict | 3/5" in md and "`.bazelrc`" in md
    assert summary.read_text() == "earlier step\n" + md  # appended, not replaced


def test_previous_report_marks_changes_and_only_new_breakage_fails(sandbox: Sandbox, tmp_path: Path) -> None:
    first = tmp_path / "one"
    code, report, _ = _nightly(sandbox, first)
    assert code == 1
    # Same upstream, compared with itself: nothing is new.
    code, report, output = _nightly(sandbox, tmp_path / "two", "--previous", str(first / "report.json"))
    assert code == 0, output
    changes = {(r["repo"], x["tag"]): x["change"] for r in report["repos"] for x in r["results"]}
    assert set(changes.values()) == {"unchanged"}
    # --fail-on any still fails: conflicts exist.
    code, _, _ = _nightly(sandbox, tmp_path / "three", "--previous", str(first / "report.json"),
                          "--fail-on", "any")
    assert code == 1

    # Yesterday 2.18.0 was clean and 2.11.1 did not exist yet; 2.4.1 conflicted then.
    old = json.loads((first / "report.json").read_text())
    sv = old["repos"][1]
    for r in old["repos"][0]["results"]:
        if r["tag"] == "v2.18.0":
            r.update(status="clean", compatible=True, commit=None, conflicts=[])
    sv["results"] = [r for r in sv["results"] if r["tag"] != "2.11.1"]
    for r in sv["results"]:
        if r["tag"] == "2.4.1":
            r.update(status="conflict", compatible=False, commit={"sha": "0" * 40}, conflicts=["README.md"])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(old))
    code, report, output = _nightly(sandbox, tmp_path / "four", "--previous", str(edited))
    assert code == 1, output
    changes = {(r["repo"], x["tag"]): x["change"] for r in report["repos"] for x in r["results"]}
    assert changes[("tensorflow", "v2.18.0")] == "broke"
    assert changes[("serving", "2.11.1")] == "new-tag"
    assert changes[("serving", "2.4.1")] == "fixed"
    assert changes[("tensorflow", "v2.11.0")] == "unchanged"
    assert sorted(report["summary"]["newly_incompatible"]) == ["serving 2.11.1", "tensorflow v2.18.0"]
    assert report["summary"]["fixed"] == ["serving 2.4.1"]
    md = (tmp_path / "four" / "report.md").read_text()
    assert "**newly incompatible** (broke)" in md


def test_repo_option_and_rcs(sandbox: Sandbox, tmp_path: Path) -> None:
    code, report, output = _nightly(sandbox, tmp_path / "out", "--repo", "serving", "--include-rc")
    assert code == 1, output
    assert [r["repo"] for r in report["repos"]] == ["serving"]
    tags = [r["tag"] for r in report["repos"][0]["results"]]
    assert "2.19.0-rc0" in tags and "2.4.0-rc0" not in tags


def test_nightly_uses_the_newest_fork_branch_and_refreshes_origin(sandbox: Sandbox, tmp_path: Path, run_git) -> None:
    # Someone pushed b2.11.0 (the fork rebased onto 2.11.0 by hand) to origin after the clone.
    origin = sandbox.origin["tensorflow"]
    run_git(origin, "fetch", "--quiet", str(sandbox.upstream["tensorflow"]), "refs/tags/v2.11.0:refs/tags/v2.11.0")
    run_git(origin, "branch", "b2.11.0", "refs/tags/v2.11.0")
    code, report, output = _nightly(sandbox, tmp_path / "out", "--repo", "tensorflow")
    assert code == 1, output
    doc = report["repos"][0]
    assert (doc["start"], doc["base"]) == ("origin/b2.11.0", "v2.11.0")
    assert [r["tag"] for r in doc["results"]] == ["v2.18.0"]


@pytest.mark.parametrize("args, message", [
    (["--fail-on", "some"], "--fail-on some"),
    (["--previous", "{bad}"], "not a forkops nightly report"),
])
def test_bad_input(sandbox: Sandbox, tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    args = [a.replace("{bad}", str(bad)) for a in args]
    run = run_cli("-C", str(sandbox.workspace), "nightly", "--report-dir", str(tmp_path / "out"), *args)
    assert run.code == 2 and message in run.err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_workflow_runs_commands_the_cli_accepts() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on", wf.get(True))
    assert "schedule" in triggers
    job = wf["jobs"]["nightly"]
    assert job["strategy"]["matrix"]["repo"]
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("actions/cache@") for u in uses)
    assert any(u.startswith("actions/cache/restore@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    runs = [s["run"] for s in job["steps"] if "run" in s]
    nightly = next(r for r in runs if r.startswith("forkops nightly"))
    assert "--previous prev/report.json" in nightly and "--repo ${{ matrix.repo }}" in nightly
    # Every option the workflow passes is one `forkops nightly` accepts.
    help_text = run_cli("nightly", "--help").out
    for option in re.findall(r"--[a-z-]+", " ".join(shlex.split(nightly.replace("${{ matrix.repo }}", "x")))):
        assert option in help_text, option
