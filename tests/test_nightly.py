"""``forkops nightly``: reports, comparison with the previous report, exit codes, the CI workflow."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import forkops
from forkops.sandbox import Sandbox
from tests.clihelp import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "playbooks" / "ci" / "nightly.yml"
STANDINS = Path(__file__).resolve().parent / "standins"


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


def test_nightly_uses_the_newest_fork_branch_and_refreshes_origin(sandbox: Sandbox, tmp_path: Path,
                                                                  run_git: Callable[..., str]) -> None:
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


# ---------------------------------------------------------------------------------------
# The CI workflow (forkops ci workflow)
# ---------------------------------------------------------------------------------------
SHA_PIN = re.compile(r"^[\w./-]+@[0-9a-f]{40}$")


def _workflow(workspace: Path, *args: str) -> str:
    run = run_cli("-C", str(workspace), "ci", "workflow", *args)
    assert run.code == 0, run.err
    return run.out


def test_ci_workflow_matrix_from_forkops_toml_pinned_no_credentials(sandbox: Sandbox) -> None:
    toml = sandbox.workspace / "forkops.toml"
    toml.write_text(toml.read_text().replace('path = "serving"', 'path = "forks/tf-serving"'))
    wf = yaml.safe_load(_workflow(sandbox.workspace))
    triggers = wf.get("on", wf.get(True))
    assert "schedule" in triggers and wf["permissions"] == {}
    job = wf["jobs"]["nightly"]
    assert job["strategy"]["matrix"]["include"] == [{"repo": "tensorflow", "path": "tensorflow"},
                                                    {"repo": "serving", "path": "forks/tf-serving"}]
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert uses and all(SHA_PIN.match(u) for u in uses), uses
    assert {u.split("@")[0] for u in uses} == {"actions/checkout", "actions/setup-python", "actions/cache",
                                              "actions/cache/restore", "actions/cache/save",
                                              "actions/upload-artifact"}
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    cache = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "${{ matrix.path }}"
    install = next(s["run"] for s in job["steps"] if s.get("name") == "Install forkops")
    assert install == f"python -m pip install forkops=={forkops.__version__}"
    runs = [s["run"] for s in job["steps"] if "run" in s]
    nightly = next(r for r in runs if r.startswith("forkops nightly"))
    assert '--repo "$REPO"' in nightly and "--open-issue" in nightly and "--previous prev/report.json" in nightly
    assert job["env"]["REPO"] == "${{ matrix.repo }}" and "${{" not in nightly  # no template in shell
    # Every option the workflow passes is one `forkops nightly` accepts.
    help_text = run_cli("nightly", "--help").out
    for option in re.findall(r"--[a-z-]+", nightly):
        assert option in help_text, option


def test_ci_workflow_in_a_subfolder_and_install_option(sandbox: Sandbox, run_git: Callable[..., str]) -> None:
    run_git(sandbox.root, "init", "--quiet")  # the workspace is the "workspace/" folder of this checkout
    wf = yaml.safe_load(_workflow(sandbox.workspace, "--install", "forkops @ git+https://example.com/f@abc"))
    job = wf["jobs"]["nightly"]
    assert job["defaults"]["run"]["working-directory"] == "workspace"
    assert [e["path"] for e in job["strategy"]["matrix"]["include"]] == ["workspace/tensorflow", "workspace/serving"]
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "workspace/out/"
    install = next(s["run"] for s in job["steps"] if s.get("name") == "Install forkops")
    assert shlex.split(install)[-1] == "forkops @ git+https://example.com/f@abc"
    for bad_value in ("", "forkops${{ github.event.issue.title }}", "forkops\nrm -rf /"):
        bad = run_cli("-C", str(sandbox.workspace), "ci", "workflow", "--install", bad_value)
        assert bad.code == 2 and "--install" in bad.err and bad.out == ""


def test_ci_workflow_written_to_a_file(sandbox: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / ".github" / "workflows" / "forkops-nightly.yml"
    run = run_cli("-C", str(sandbox.workspace), "ci", "workflow", "-o", str(target))
    assert run.code == 0 and run.out == "" and target.read_text() == _workflow(sandbox.workspace)


def _zizmor(tmp_path: Path, text: str) -> list[dict[str, Any]]:
    exe = shutil.which("zizmor")
    if exe is None:
        pytest.skip("zizmor is not installed (pip install -e '.[test]')")
    target = tmp_path / "repo" / ".github" / "workflows" / "forkops-nightly.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    proc = subprocess.run([exe, "--offline", "--format", "json", "--min-severity", "medium", str(target)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 11, 12, 13, 14), proc.stderr  # zizmor: 1x = findings, by severity
    findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return findings


def test_zizmor_offline_finds_nothing_medium_or_above(sandbox: Sandbox, tmp_path: Path) -> None:
    text = _workflow(sandbox.workspace)
    assert _zizmor(tmp_path / "ours", text) == []
    # the audit is real: the same workflow with a tag instead of a SHA, or with the checkout
    # keeping its credentials, is flagged
    unpinned = re.sub(r"actions/upload-artifact@[0-9a-f]{40}", "actions/upload-artifact@v4", text)
    assert {f["ident"] for f in _zizmor(tmp_path / "unpinned", unpinned)} == {"unpinned-uses"}
    keeps = re.sub(r"(actions/checkout@[0-9a-f]{40}.*)\n +with:\n +persist-credentials: false\n", r"\1\n", text)
    assert keeps != text
    assert {f["ident"] for f in _zizmor(tmp_path / "keeps", keeps)} == {"artipacked"}


def test_shipped_example_is_what_ci_workflow_prints(tmp_path: Path) -> None:
    """playbooks/ci/nightly.yml is `forkops ci workflow` for the usual two-repository workspace."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "forkops.toml").write_text("".join(
        f'[repos.{n}]\npath = "{n}"\norigin = "https://github.com/ORG/{n}"\n'
        f'upstream = "https://github.com/tensorflow/{n}"\n\n' for n in ("tensorflow", "serving")))
    assert EXAMPLE.read_text() == _workflow(ws, "--install", "forkops")


# ---------------------------------------------------------------------------------------
# nightly --open-issue through gh (the stand-in in tests/standins)
# ---------------------------------------------------------------------------------------
@pytest.fixture
def gh_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "gh-state"
    state.mkdir()
    monkeypatch.setenv("STANDIN_GH_STATE", str(state))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return state


def _gh_calls(state: Path) -> list[dict[str, Any]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


LIST = ["issue", "list", "--state", "open", "--search", '"forkops nightly:" in:title', "--json", "number,title",
        "--limit", "500"]


def test_open_issue_files_one_issue_per_newly_incompatible_tag(
        sandbox: Sandbox, tmp_path: Path, gh_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "ORG/workspace")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    code, report, output = _nightly(sandbox, tmp_path / "out", "--open-issue")
    assert code == 1, output
    new = report["summary"]["newly_incompatible"]
    assert new == ["tensorflow v2.18.0", "serving 2.5.1", "serving 2.11.0", "serving 2.11.1", "serving 2.18.0"]
    calls = _gh_calls(gh_state)
    assert [c["argv"] for c in calls] == [LIST] + [
        ["issue", "create", "--title", f"forkops nightly: {t} needs a person", "--body-file", "-"] for t in new]
    body = calls[1]["stdin"]
    assert "rebasing **tensorflow** `b2.4.0` (5 patches since `v2.4.0`) onto upstream `v2.18.0`" in body
    assert "- stops at: 3/5 `" in body and "`.bazelrc` (content)" in body
    assert "```\nforkops upgrade 2.18.0 --repo tensorflow\n```" in body
    assert "Run: https://github.com/ORG/workspace/actions/runs/42" in body
    assert "issue created: forkops nightly: tensorflow v2.18.0 needs a person " \
           "(https://github.com/ORG/workspace/issues/101)" in output

    # next night, nothing new: gh is not called at all
    (gh_state / "calls.jsonl").unlink()
    code, _report, output = _nightly(sandbox, tmp_path / "out2", "--open-issue",
                                     "--previous", str(tmp_path / "out" / "report.json"))
    assert code == 0, output
    assert _gh_calls(gh_state) == []


def test_open_issue_comments_on_the_open_issue_with_that_title(
        sandbox: Sandbox, tmp_path: Path, gh_state: Path) -> None:
    (gh_state / "issues.json").write_text(json.dumps([
        {"number": 7, "title": "forkops nightly: serving 2.18.0 needs a person"},
        {"number": 8, "title": "forkops nightly: serving 2.18.0 needs a person (old)"}]))
    code, _report, output = _nightly(sandbox, tmp_path / "out", "--repo", "serving", "--open-issue")
    assert code == 1, output
    argvs = [c["argv"] for c in _gh_calls(gh_state)]
    assert argvs[0] == LIST
    assert argvs[1:] == [
        ["issue", "create", "--title", "forkops nightly: serving 2.5.1 needs a person", "--body-file", "-"],
        ["issue", "create", "--title", "forkops nightly: serving 2.11.0 needs a person", "--body-file", "-"],
        ["issue", "create", "--title", "forkops nightly: serving 2.11.1 needs a person", "--body-file", "-"],
        ["issue", "comment", "7", "--body-file", "-"]]
    assert "issue commented: forkops nightly: serving 2.18.0 needs a person (#7)" in output


def test_open_issue_gh_failure_is_exit_3_after_the_reports(sandbox: Sandbox, tmp_path: Path, gh_state: Path) -> None:
    (gh_state / "fail").write_text("HTTP 401: Bad credentials (https://api.github.com/graphql)")
    code, report, output = _nightly(sandbox, tmp_path / "out", "--repo", "tensorflow", "--open-issue")
    assert code == 3
    assert "gh issue list failed (1): HTTP 401: Bad credentials" in output and "Traceback" not in output
    assert report["summary"]["newly_incompatible"] == ["tensorflow v2.18.0"]  # written before gh ran


def test_open_issue_without_gh(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    git = shutil.which("git")
    assert git
    (empty / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(empty))
    code, _report, output = _nightly(sandbox, tmp_path / "out", "--repo", "tensorflow", "--open-issue")
    assert code == 3 and "gh (the GitHub CLI) is not on PATH" in output


# ---------------------------------------------------------------------------------------
# Tables and next commands
# ---------------------------------------------------------------------------------------
def test_piped_table_groups_identical_tags_and_does_not_wrap(sandbox: Sandbox) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "forkops", "check", "--include-rc"], cwd=sandbox.workspace,
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if "2.11.0-rc0 .. 2.11.1 (3 tags)" in line)
    # one line per row, however wide: the whole stop and file are on the tag's line
    assert "conflict" in row and "Build against the TensorFlow fork" in row and "WORKSPACE (content)" in row
    tf = next(line for line in lines if "v2.18.0-rc0 .. v2.18.0 (2 tags)" in line)
    assert "Link Crypto++ and define the model key" in tf
    assert "third_party/xla/third_party/tsl/tsl/platform/env.cc" in tf
    assert any(len(line) > 80 for line in lines)
    assert "  next for 2.11.0-rc0 .. 2.11.1 (3 tags): forkops upgrade 2.11.1 --repo serving" in lines


def test_reports_carry_the_next_command(sandbox: Sandbox, tmp_path: Path) -> None:
    _code, report, _output = _nightly(sandbox, tmp_path / "out", "--repo", "tensorflow")
    nexts = {r["tag"]: r["next"] for r in report["repos"][0]["results"]}
    assert nexts["v2.18.0"] == "forkops upgrade 2.18.0 --repo tensorflow"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| `v2.4.1` .. `v2.5.0` (2 tags) | ✅ clean |" in md
    assert "`forkops upgrade 2.18.0 --repo tensorflow` |" in md
    check = json.loads(run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--json").out)
    assert {r["tag"]: r["next"] for r in check["results"]} == nexts



def test_result_names_recorded_stops_apart_from_where_it_stops() -> None:
    """A rebase that went past a recorded stop at 3 and stops at 4: "conflict at 3 of 5" read as
    a stop at 3. The recorded stops are named as such, after the verdict."""
    from forkops import predict, report
    from forkops.version import TagName, Version

    def at(index: int) -> predict.StoppedAt:
        return predict.StoppedAt(f"{index}" * 40, f"patch {index}", index, 5)

    past = (predict.ResolvedStop(at(3), ()),)
    stopped = predict.Prediction(TagName("v2.23.0"), Version(2, 23, 0), "0" * 40, 5, stopped_at=at(4),
                                 conflicts=(predict.Conflict("f.cc", "content"),), resolved=past)
    finished = predict.Prediction(TagName("v2.22.0"), Version(2, 22, 0), "0" * 40, 5, tree="1" * 40, resolved=past)
    rows = report.group_rows([(finished, ()), (stopped, ())])
    assert [r.cells[:2] for r in rows] == [
        ("resolved (recorded) at 3 of 5", ""),
        ("conflict; recorded resolutions at 3 of 5", "4/5 4444444444 patch 4")]
