"""API drift on real repositories: names the fork's lines use that upstream has removed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from forkops import drift, playbook, sandbox
from forkops.errors import ConfigError
from forkops.git import Repo
from forkops.playbook import DriftSpec
from forkops.sandbox import Generator, Sandbox
from tests.clihelp import run_cli
from tests.gitutil import resolve_all
from tests.test_upgrade import cli, status_json


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------------------------------
# The sandbox: upstream removes Status::OK before 2.18
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def removed(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    return sandbox.build(tmp_path_factory.mktemp("drift") / "sb", removed_api=True)


def test_drift_on_exactly_the_tags_after_the_removal(removed: Sandbox, tmp_path: Path) -> None:
    run = run_cli("-C", str(removed.workspace), "check", "--repo", "tensorflow", "--include-rc", "--json")
    assert run.code == 1, run.err
    doc = json.loads(run.out)
    upstream = removed.upstream["tensorflow"]
    removal = _git(upstream, "log", "--format=%H", "--grep=Remove the deprecated Status::OK", "master").split()
    assert len(removal) == 1
    drifting = {r["tag"] for r in doc["results"] if r["drift"]}
    after = {r["tag"] for r in doc["results"]
             if subprocess.run(["git", "-C", str(upstream), "merge-base", "--is-ancestor", removal[0], r["onto"]],
                               check=False).returncode == 0}
    assert drifting == after == {"v2.18.0-rc0", "v2.18.0", "v2.19.0-rc0"}
    for r in doc["results"]:
        for d in r["drift"]:
            assert d["identifier"] == sandbox.REMOVED_API and d["removed_by"] == removal[0]
    # file:line points at the fork's own line in the rebased tree: rebase the decryption
    # commit for real and read that line.
    r219 = next(r for r in doc["results"] if r["tag"] == "v2.19.0-rc0")
    (d,) = r219["drift"]
    clone = removed.clone("tensorflow")
    scratch = tmp_path / "scratch"
    _git(clone.parent, "clone", "--quiet", "--shared", str(clone), str(scratch))
    first = doc["patches"][0]["sha"]
    _git(scratch, "checkout", "--quiet", "--detach", first)
    _git(scratch, "rebase", "--quiet", "--onto", r219["onto"], doc["base_sha"])
    line = (scratch / d["path"]).read_text().splitlines()[d["line"] - 1]
    assert d["path"] == sandbox.TF_XLA and line.strip() == "return Status::OK();"


def test_clean_drifting_tag_is_incompatible_with_its_own_label(removed: Sandbox) -> None:
    clone = removed.clone("tensorflow")
    first = _git(clone, "rev-list", "--reverse", "v2.4.0..origin/b2.4.0").split()[0]
    _git(clone, "branch", "decrypt-only", first)
    ws = str(removed.workspace)
    run = run_cli("-C", ws, "check", "--repo", "tensorflow", "--from", "decrypt-only", "--base", "v2.4.0",
                  "--tags", "2.11.0,2.18.0", "--json")
    assert run.code == 1, run.err
    by_tag = {r["tag"]: r for r in json.loads(run.out)["results"]}
    assert by_tag["v2.11.0"]["status"] == "clean" and by_tag["v2.11.0"]["compatible"]
    assert by_tag["v2.18.0"]["status"] == "drift" and not by_tag["v2.18.0"]["compatible"]
    assert by_tag["v2.18.0"]["commit"] is None and by_tag["v2.18.0"]["drift"][0]["identifier"] == "Status::OK"
    table = run_cli("-C", ws, "check", "--repo", "tensorflow", "--from", "decrypt-only", "--base", "v2.4.0",
                    "--tags", "2.18.0")
    assert table.code == 1
    assert "api drift" in table.out and "Status::OK" in table.out and "env.cc:" in table.out


def test_nothing_drifts_in_the_default_sandbox(sandbox: Sandbox) -> None:
    for name in ("tensorflow", "serving"):
        run = run_cli("-C", str(sandbox.workspace), "check", "--repo", name, "--include-rc", "--json")
        results = json.loads(run.out)["results"]
        assert results and all(r["drift"] == [] for r in results), name


def test_nothing_drifts_in_the_dlopen_shape(tmp_path: Path) -> None:
    sb = sandbox.build(tmp_path / "sb", shape="dlopen", only="tensorflow")
    run = run_cli("-C", str(sb.workspace), "check", "--repo", "tensorflow", "--include-rc", "--json")
    results = json.loads(run.out)["results"]
    assert results and all(r["drift"] == [] and r["status"] != "drift" for r in results)


# ---------------------------------------------------------------------------------------
# What counts
# ---------------------------------------------------------------------------------------
UPSTREAM_CC = """#include <memory>
// Uses of the APIs at the base release.
Status LegacyHelper(int x);
void Old() { OldApi::Call(); auto p = std::make_unique<int>(1); StillThere(); gone_macro(); MovedApi::Go(); }
"""
UPSTREAM_CC_LATER = """#include <memory>
Status New() { NewApi::Call(); StillThere(); }
"""
FORK_CC = """#include "fork.h"
// The fork calls OldApi::Call in a comment only here.
Status LegacyHelper(int x) { return Status(); }
void Fork() {
  auto p = std::make_unique<int>(2);
  LegacyHelper(1);
  StillThere();
  MovedApi::Go();
  const char* s = "OldApi::Call in a string";
  ::ns::OldApi::Call();  /* OldApi::Call in a block comment */
}
"""


def _scene(tmp_path: Path) -> tuple[Repo, str, str, str]:
    """(repo, base commit, tag commit, tip tree): the fork's files on top of the tag."""
    path = tmp_path / "r"
    subprocess.run(["git", "init", "--quiet", str(path)], check=True)
    gen = Generator(path)
    gen.commit("master", "base", {"src/a.cc": UPSTREAM_CC, "BUILD": 'old_rule(name = "a")\nkept_rule()\n',
                                  "docs/readme.md": "nothing here\n"})
    gen.tag("v1.0.0", "master", "v1.0.0")
    gen.commit("master", "Move MovedApi::Go to b.cc", {"src/b.cc": "void B() { MovedApi::Go(); }\n"})
    gen.commit("master", "Remove the old APIs", {"src/a.cc": UPSTREAM_CC_LATER, "BUILD": "kept_rule()\n"})
    gen.tag("v2.0.0", "master", "v2.0.0")
    gen.branch("tip", "master")
    gen.commit("tip", "the fork, rebased", {
        "src/fork.cc": FORK_CC,
        "BUILD": 'kept_rule()\nold_rule(name = "fork", gone_macro = True)\n',
        "docs/notes.md": "OldApi::Call is not code\n"})
    gen.flush()
    repo = Repo(path)
    return (repo, repo.commit_of("refs/tags/v1.0.0") or "", repo.commit_of("refs/tags/v2.0.0") or "",
            repo.run("rev-parse", "tip^{tree}").strip())


def test_only_removed_upstream_names_in_code_count(tmp_path: Path) -> None:
    repo, base, tag, tip = _scene(tmp_path)
    pb = playbook.load("tensorflow")
    found = drift.find(repo, pb, base, tip, tag)
    removal = repo.run("rev-parse", "master").strip()
    got = sorted((d.identifier, d.path, d.line) for d in found)
    # OldApi::Call (qualified further by the fork) and old_rule (Starlark); never LegacyHelper
    # (the fork defines it), std::make_unique, StillThere, MovedApi::Go (gone from its file at
    # base, present in another one), kwargs, comments, strings, markdown.
    assert got == [("OldApi::Call", "src/fork.cc", 10), ("old_rule", "BUILD", 2)]
    assert all(d.removed_by is not None and d.removed_by.sha == removal for d in found)
    assert found[0].as_json()["removed_by"] == removal


def test_playbook_scope(tmp_path: Path) -> None:
    repo, base, tag, tip = _scene(tmp_path)
    assert [d.identifier for d in drift.find_many_in_scope(repo, DriftSpec(languages=("starlark",)), base,
                                                           [(tag, tip)])[0]] == ["old_rule"]
    assert [d.path for d in drift.find_many_in_scope(repo, DriftSpec(paths=("src/",)), base,
                                                     [(tag, tip)])[0]] == ["src/fork.cc"]
    assert drift.find_many_in_scope(repo, DriftSpec(paths=()), base, [(tag, tip)]) == [[]]


def test_playbook_drift_key_is_validated(tmp_path: Path) -> None:
    text = playbook.builtin_path("tensorflow").read_text()
    good = tmp_path / "good.toml"
    good.write_text(text + '\n[drift]\npaths = ["tensorflow/", "third_party/*.cc"]\nlanguages = ["c++"]\n')
    assert playbook.load(str(good)).drift == DriftSpec(("tensorflow/", "third_party/*.cc"), ("c++",))
    assert playbook.load("tensorflow").drift.enabled
    bad = tmp_path / "bad.toml"
    bad.write_text(text + '\n[drift]\npaths = ["/abs"]\nlanguages = ["rust"]\nlangs = 1\n')
    with pytest.raises(ConfigError) as err:
        playbook.load(str(bad))
    message = "\n".join(err.value.problems)
    assert "drift.paths[0]" in message and "drift.languages[0]" in message and "'rust'" in message


def test_nightly_reports_drift(removed: Sandbox, tmp_path: Path) -> None:
    run = run_cli("-C", str(removed.workspace), "nightly", "--repo", "tensorflow", "--include-rc",
                  "--report-dir", str(tmp_path))
    assert run.code == 1, run.err
    doc = json.loads((tmp_path / "report.json").read_text())
    (repo,) = doc["repos"]
    assert {r["tag"] for r in repo["results"] if r["drift"]} == {"v2.18.0-rc0", "v2.18.0", "v2.19.0-rc0"}
    assert "drift: `tensorflow/core/platform/env.cc:" in (tmp_path / "report.md").read_text()


def test_upgrade_plan_and_completion_show_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = sandbox.build(tmp_path / "sb", removed_api=True)
    plan = cli(sb, "upgrade", "2.18.0", "--repo", "tensorflow", "--plan", "--json", monkeypatch=monkeypatch)
    assert plan.code == 0, plan.err
    (repo,) = json.loads(plan.out)["repos"]
    assert [d["identifier"] for d in repo["drift"]] == [sandbox.REMOVED_API]
    text = cli(sb, "upgrade", "2.18.0", "--repo", "tensorflow", "--plan", monkeypatch=monkeypatch)
    assert "api drift" in text.out and sandbox.REMOVED_API in text.out
    older = cli(sb, "upgrade", "2.11.0", "--repo", "tensorflow", "--plan", "--json", monkeypatch=monkeypatch)
    assert json.loads(older.out)["repos"][0]["drift"] == []

    assert cli(sb, "upgrade", "2.18.0", "--repo", "tensorflow", monkeypatch=monkeypatch).code == 1
    resolve_all(sb.clone("tensorflow"))
    done = cli(sb, "upgrade", "--continue", monkeypatch=monkeypatch)
    assert done.code == 0, done.out + done.err
    assert f"api drift: {sandbox.TF_CORE}:" in done.out and sandbox.REMOVED_API in done.out
    notes = status_json(sb, monkeypatch)["notes"]
    assert any(n.startswith("api drift: ") and "v2.18.0 no longer has it" in n for n in notes)
