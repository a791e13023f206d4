"""forkops.predict against the ground truth: a real ``git rebase --onto`` in a scratch clone.

Every prediction is compared with what git itself does: the same stopping commit (sha, n of
total), the same set of unmerged files, the same tree in HEAD (at the stop, or at the end), the
same dropped commits. Both merge-tree strategies are exercised where the installed git allows.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkops import git, playbook, predict
from forkops.git import Repo
from forkops.sandbox import Generator, Sandbox
from forkops.version import TagName, Version
from tests.clihelp import run_cli
from tests.gitutil import git as run_git
from tests.gitutil import git_run

STRATEGIES = [
    pytest.param("fake-base", id="fake-base"),
    pytest.param("merge-base", id="merge-base", marks=pytest.mark.skipif(
        not git.has_merge_base_option(), reason="git merge-tree --merge-base needs git >= 2.40")),
]


@dataclass
class Outcome:
    stopped_sha: str | None
    index: int | None
    total: int | None
    unmerged: list[str]
    head_tree: str
    kept: list[str]  # subjects of the commits the rebase created (clean only)


def real_rebase(repo: Path, scratch: Path, *, onto: str, base: str, start: str) -> Outcome:
    """Run ``git rebase --onto ONTO BASE`` on START in a fresh scratch clone; report what git did."""
    run_git(repo.parent, "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(scratch))
    run_git(scratch, "checkout", "--quiet", "--detach", start)
    proc = git_run(scratch, "rebase", "--onto", onto, base)
    head_tree = run_git(scratch, "rev-parse", "HEAD^{tree}").strip()
    state = scratch / ".git" / "rebase-merge"
    if proc.returncode == 0:
        assert not state.exists()
        kept = run_git(scratch, "log", "--reverse", "--format=%s", f"{onto}..HEAD").splitlines()
        return Outcome(None, None, None, [], head_tree, kept)
    assert state.is_dir(), proc.stderr
    unmerged = sorted(set(run_git(scratch, "diff", "--name-only", "--diff-filter=U").split()))
    return Outcome(run_git(scratch, "rev-parse", "REBASE_HEAD").strip(),
                   int((state / "msgnum").read_text()), int((state / "end").read_text()),
                   unmerged, head_tree, [])


def assert_same(pred: predict.Prediction, real: Outcome, patches: tuple[predict.Patch, ...]) -> None:
    where = f"{pred.tag}: predicted {pred.status}"
    assert pred.tree == real.head_tree, f"{where}: HEAD tree differs from the real rebase"
    if real.stopped_sha is None:
        assert pred.status == "clean", where
        dropped = [p.subject for p in patches if p.subject not in real.kept]
        assert [p.subject for p in pred.dropped] == dropped, where
    else:
        assert pred.stopped_at is not None, f"{where}, git stopped at {real.stopped_sha}"
        assert (pred.stopped_at.sha, pred.stopped_at.index, pred.stopped_at.total) == (
            real.stopped_sha, real.index, real.total), where
        assert pred.conflict_paths == real.unmerged, where


# ---------------------------------------------------------------------------------------
# The sandbox forks, every upstream tag (rcs included)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["tensorflow", "serving"])
def test_sandbox_forks_match_real_rebase_for_every_tag(sandbox: Sandbox, tmp_path: Path, name: str,
                                                       strategy: predict.Strategy) -> None:
    clone = sandbox.clone(name)
    pb = playbook.load(name)
    check = predict.check_repo(name, Repo(clone), pb, sandbox.upstream_url(name), include_rc=True,
                               strategy=strategy)
    assert check.strategy == strategy
    upstream_tags = {TagName(t) for t in run_git(sandbox.upstream[name], "tag").split()
                     if (v := pb.version_of_tag(t)) is not None and v > Version(2, 4, 0)}
    assert {r.tag for r in check.results} == upstream_tags
    for i, pred in enumerate(check.results):
        real = real_rebase(clone, tmp_path / f"scratch{i}", onto=pred.onto, base=check.refs.base_sha,
                           start=check.refs.start_sha)
        assert_same(pred, real, check.patches)

    by_tag = {str(r.tag): r for r in check.results}
    if name == "tensorflow":
        # content conflict at commit k > 1
        stop = by_tag["v2.18.0"].stopped_at
        assert stop is not None and (stop.index, stop.total) == (3, 5)
        assert by_tag["v2.18.0"].conflict_paths == [".bazelrc"]
        # a patch already upstream is dropped, as the real rebase drops it
        assert [p.subject for p in by_tag["v2.11.0"].dropped] == ["Fix missing <cstring> include in env_time.cc"]
        # Clean, the patch left behind in the dead core env.cc, and re-applicable to the tsl file
        # (what `forkops upgrade` does), so the tag counts as compatible.
        at_211 = by_tag["v2.11.0"]
        assert at_211.status == "clean" and at_211.anchors_ok and at_211.compatible
        assert at_211.anchors[0].reapply_from == "tensorflow/core/platform/env.cc"
        assert at_211.anchors[0].path == "tensorflow/tsl/platform/env.cc"
        assert by_tag["v2.4.1"].compatible
        # rename followed: before stopping on .bazelrc, commit 1 moved into the xla path
        rc19 = by_tag["v2.19.0-rc0"]
        assert rc19.stopped_at is not None and rc19.stopped_at.index == 3
        moved = git_run(clone, "cat-file", "-p", f"{rc19.tree}:third_party/xla/xla/tsl/platform/env.cc")
        # the tree lives in the deleted temporary object store; the real rebase proved equality
        assert moved.returncode != 0
    else:
        # a tag that is also a branch name: the tag is what gets predicted
        tag_sha = run_git(clone, "rev-parse", "refs/tags/2.18.0^{commit}").strip()
        branch_sha = run_git(sandbox.upstream[name], "rev-parse", "refs/heads/2.18.0").strip()
        assert tag_sha != branch_sha
        assert by_tag["2.18.0"].onto == tag_sha
        stop = by_tag["2.5.1"].stopped_at
        assert stop is not None and stop.index == 2 and by_tag["2.5.1"].conflict_paths == ["WORKSPACE"]


def test_rename_is_followed_like_git(sandbox: Sandbox, tmp_path: Path) -> None:
    """TF v2.19.0-rc0 deletes core env.cc and adds the xla copy: git carries the fork's
    decryption patch (commit 1) into the xla path. Rebasing only commit 1 shows it in the tree."""
    clone = sandbox.clone("tensorflow")
    pb = playbook.load("tensorflow")
    check = predict.check_repo("tensorflow", Repo(clone), pb, sandbox.upstream_url("tensorflow"),
                               tags=["2.19.0-rc0"])
    first = check.patches[0]
    with predict.Simulator(Repo(clone), [first]) as sim:
        pred = sim.predict(TagName("v2.19.0-rc0"), check.results[0].onto, Version.parse("2.19.0-rc0"))
        assert pred.status == "clean" and pred.tree is not None
        env_cc = sim.repo.show_file(pred.tree, "third_party/xla/xla/tsl/platform/env.cc")
        assert env_cc is not None and b"Decrypt" in env_cc
        assert sim.repo.show_file(pred.tree, "tensorflow/core/platform/env.cc") is None
    real = real_rebase(clone, tmp_path / "s", onto=pred.onto, base=check.refs.base_sha, start=first.sha)
    assert pred.tree == real.head_tree


# ---------------------------------------------------------------------------------------
# Hand-made upstream scenarios (sandbox.Generator)
# ---------------------------------------------------------------------------------------
def _lines(name: str, n: int = 40, **changed: str) -> str:
    rows = [f"{name} line {i}: some content that makes the file similar to its renamed self" for i in range(n)]
    for key, value in changed.items():
        rows[int(key.removeprefix("l"))] = value
    return "\n".join(rows) + "\n"


@pytest.fixture
def scenarios(tmp_path: Path) -> Path:
    """One repository: upstream ``master`` tagged v1.0.0, the fork's ``b1.0.0`` (5 patches) and one
    upstream branch + tag per scenario, each cut from v1.0.0."""
    repo = tmp_path / "scenarios"
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    gen = Generator(repo)
    base = {"src/old.cc": _lines("old"), "lib/a.txt": _lines("a"), "lib/b.txt": _lines("b"),
            "conf/x.txt": _lines("x"), "README": "readme\n"}
    gen.commit("master", "upstream base", base)
    gen.tag("v1.0.0", "master", "v1.0.0")
    gen.branch("b1.0.0", "master")
    fork = "Fork <fork@example.com>"
    gen.commit("b1.0.0", "p1 edit old.cc", {"src/old.cc": _lines("old", l5="fork edit in old.cc")}, author=fork)
    gen.commit("b1.0.0", "p2 edit a.txt", {"lib/a.txt": _lines("a", l3="fork edit in a.txt")}, author=fork)
    gen.commit("b1.0.0", "p3 delete b.txt", {"lib/b.txt": None}, author=fork)
    gen.commit("b1.0.0", "p4 add extra/new.txt", {"extra/new.txt": "fork's new file\n"}, author=fork)
    gen.commit("b1.0.0", "p5 edit x.txt", {"conf/x.txt": _lines("x", l0="fork's first line")}, author=fork)
    cases: dict[str, dict[str, str | None]] = {
        "v1.1.0": {"src/old.cc": None, "src/moved/new.cc": _lines("old", l30="upstream edit")},  # rename
        "v1.2.0": {"lib/a.txt": None},  # upstream deletes what the fork edits
        "v1.3.0": {"lib/b.txt": _lines("b", l1="upstream edit")},  # upstream edits what the fork deletes
        "v1.4.0": {"extra/new.txt": "upstream's new file\n"},  # add/add
        "v1.5.0": {"conf/x.txt": _lines("x", l0="upstream's first line")},  # content, last commit
        "v1.6.0": {"lib/a.txt": _lines("a", l3="fork edit in a.txt")},  # p2 already upstream
        "v1.7.0": {"src/old.cc": None, "src/moved/new.cc": _lines("old", l5="upstream edit")},  # rename + content
        "v1.8.0": {"lib/a.txt": None, "lib/b.txt": None, "library/a.txt": _lines("a"),
                   "library/b.txt": _lines("b", l20="x")},  # directory rename
    }
    for i, (tag, change) in enumerate(cases.items()):
        gen.branch(f"r{i}", "master")
        gen.commit(f"r{i}", f"upstream change for {tag}", change)
        gen.tag(tag, f"r{i}", tag)
    gen.flush()
    return repo


EXPECTED = {  # tag: (stopping index or None, {path: kind}, dropped subjects)
    "v1.1.0": (None, {}, []),
    "v1.2.0": (2, {"lib/a.txt": "delete/modify"}, []),
    "v1.3.0": (3, {"lib/b.txt": "modify/delete"}, []),
    "v1.4.0": (4, {"extra/new.txt": "add/add"}, []),
    "v1.5.0": (5, {"conf/x.txt": "content"}, []),
    "v1.6.0": (None, {}, ["p2 edit a.txt"]),
    "v1.7.0": (1, {"src/moved/new.cc": "content"}, []),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scenarios_match_real_rebase(scenarios: Path, tmp_path: Path, strategy: predict.Strategy) -> None:
    repo = Repo(scenarios)
    base = repo.commit_of("refs/tags/v1.0.0")
    start = repo.commit_of("refs/heads/b1.0.0")
    assert base and start
    patches = predict.load_patches(repo, repo.lines("rev-list", "--reverse", "--no-merges", f"{base}..{start}"))
    tags = sorted(t for t in repo.lines("tag") if t != "v1.0.0")
    with predict.Simulator(repo, patches, strategy=strategy) as sim:
        targets = [(TagName(t), repo.commit_of(f"refs/tags/{t}") or "", Version.parse(t)) for t in tags]
        preds = sim.predict_many(targets)
    for i, pred in enumerate(preds):
        real = real_rebase(scenarios, tmp_path / f"s{i}", onto=pred.onto, base=base, start=start)
        assert_same(pred, real, tuple(patches))
        if str(pred.tag) in EXPECTED:
            index, kinds, dropped = EXPECTED[str(pred.tag)]
            assert (pred.stopped_at.index if pred.stopped_at else None) == index, pred.tag
            assert {c.path: c.kind for c in pred.conflicts} == kinds, pred.tag
            assert [p.subject for p in pred.dropped] == dropped, pred.tag
    renamed = next(p for p in preds if p.tag == "v1.1.0")
    with predict.Simulator(repo, patches, strategy=strategy) as sim:
        again = sim.predict(renamed.tag, renamed.onto, None)
        assert again.tree == renamed.tree  # deterministic
        moved = sim.repo.show_file(again.tree or "", "src/moved/new.cc")
    assert moved is not None and b"fork edit in old.cc" in moved and b"upstream edit" in moved


def test_merge_base_strategy_refused_on_old_git(scenarios: Path) -> None:
    if git.has_merge_base_option():
        pytest.skip("this git has --merge-base")
    from forkops.errors import BadInput

    with pytest.raises(BadInput, match=r"2\.40"):
        predict.Simulator(Repo(scenarios), [], strategy="merge-base")


# ---------------------------------------------------------------------------------------
# Nothing left behind
# ---------------------------------------------------------------------------------------
def _snapshot(repo: Path) -> dict[str, str]:
    gd = repo / ".git"
    return {
        "refs": run_git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": (gd / "HEAD").read_text(),
        "objects": run_git(repo, "count-objects", "-v"),
        "status": run_git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all"),
        "index": hashlib.sha256((gd / "index").read_bytes()).hexdigest(),
        "config": (gd / "config").read_text(),
        "gitdir": "\n".join(sorted(str(p.relative_to(gd)) for p in gd.rglob("*")
                                   if "objects" not in p.parts or p.is_dir())),
    }


def test_check_leaves_nothing_behind(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clone = sandbox.clone("tensorflow")
    before_first = _snapshot(clone)
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--include-rc", "--json")
    assert run.code == 1, run.err
    after_first = _snapshot(clone)
    # The first run may only add the upstream remote and the tags it checks (refs/tags).
    added = set(after_first["refs"].splitlines()) - set(before_first["refs"].splitlines())
    assert added and all(line.startswith("refs/tags/v") for line in added)
    assert after_first["index"] == before_first["index"] and after_first["status"] == before_first["status"]
    assert after_first["head"] == before_first["head"]

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(predict, "SCRATCH_CANDIDATES", (str(tmp),))
    # A stray variable from a hook must not redirect the simulation's objects either.
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(tmp_path / "elsewhere"))
    run2 = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--include-rc", "--json")
    assert run2.code == 1, run2.err
    assert json.loads(run2.out) == json.loads(run.out)
    monkeypatch.delenv("GIT_OBJECT_DIRECTORY")
    assert _snapshot(clone) == after_first
    assert list(tmp.iterdir()) == []  # the temporary object directory is gone
    assert not (tmp_path / "elsewhere").exists()


def test_simulator_writes_objects_only_to_its_temporary_store(scenarios: Path) -> None:
    repo = Repo(scenarios)
    before = run_git(scenarios, "count-objects", "-v")
    patches = predict.load_patches(repo, repo.lines("rev-list", "--reverse", "refs/tags/v1.0.0..b1.0.0"))
    with predict.Simulator(repo, patches) as sim:
        pred = sim.predict(TagName("v1.1.0"), repo.commit_of("refs/tags/v1.1.0") or "", None)
        objects = Path(sim.repo.extra_env["GIT_OBJECT_DIRECTORY"])
        written = [p for p in objects.rglob("*") if p.is_file()]
        assert written  # the merges did write objects ...
        assert pred.tree and sim.repo.ok("cat-file", "-e", pred.tree)
    assert not objects.exists()  # ... into a directory that is gone now
    assert run_git(scenarios, "count-objects", "-v") == before
    assert git_run(scenarios, "cat-file", "-e", pred.tree).returncode != 0


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------
def test_rc_tags_only_when_asked(sandbox: Sandbox) -> None:
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--json")
    tags = [r["tag"] for r in json.loads(run.out)["results"]]
    assert tags == ["v2.4.1", "v2.5.0", "v2.11.0", "v2.18.0"]
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--json", "--include-rc")
    tags = [r["tag"] for r in json.loads(run.out)["results"]]
    assert "v2.19.0-rc0" in tags and "v2.5.0-rc0" in tags and "v2.4.0-rc1" not in tags


def test_check_json_shape_and_exit_codes(sandbox: Sandbox) -> None:
    ws = str(sandbox.workspace)
    clean = run_cli("-C", ws, "check", "--repo", "serving", "--tags", "2.4.1", "--json")
    assert clean.code == 0, clean.err
    doc = json.loads(clean.out)
    assert (doc["repo"], doc["start"], doc["base"]) == ("serving", "b2.4.0", "2.4.0")
    assert doc["results"][0]["status"] == "clean" and doc["results"][0]["commit"] is None

    conflict = run_cli("-C", ws, "check", "--repo", "serving", "--tags", "2.18.0,2.5.1", "--json")
    assert conflict.code == 1
    results = json.loads(conflict.out)["results"]
    assert [r["tag"] for r in results] == ["2.5.1", "2.18.0"]
    r = results[1]
    assert r["status"] == "conflict" and r["conflicts"] == ["WORKSPACE"]
    assert r["commit"]["subject"] == "Build against the TensorFlow fork"
    assert (r["commit"]["index"], r["commit"]["total"]) == (2, 5)

    both = run_cli("-C", ws, "check", "--tags", "2.4.1", "--json")
    assert both.code == 0, both.err
    assert [d["repo"] for d in json.loads(both.out)["repos"]] == ["tensorflow", "serving"]

    table = run_cli("-C", ws, "check", "--repo", "tensorflow", "--since", "2.11.0")
    assert table.code == 1
    assert "v2.18.0" in table.out and ".bazelrc" in table.out and "v2.5.0" not in table.out


@pytest.mark.parametrize("args, message", [
    (["--tags", "9.9.9"], "upstream has no tag v9.9.9"),
    (["--since", "2.x"], "malformed version"),
    (["--from", "b9.9.9"], "no branch 'b9.9.9'"),
    (["--repo", "nope"], "no repository 'nope'"),
])
def test_bad_input_exits_2(sandbox: Sandbox, args: list[str], message: str) -> None:
    run = run_cli("-C", str(sandbox.workspace), "check", *args)
    assert run.code == 2 and message in run.err, run.err
    assert run.err.count("\n") <= 2


def test_missing_clone_is_cloned_from_origin(sandbox: Sandbox) -> None:
    import shutil

    shutil.rmtree(sandbox.clone("serving"))
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "serving", "--tags", "2.4.1", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["start"] == "b2.4.0"  # the clone checks out origin's HEAD branch
    assert (sandbox.clone("serving") / ".git").is_dir()


def test_check_reads_blobs_in_bulk_not_per_tag(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The anchors on every tag and result are answered from one prefetch: a check over four
    tags reads blobs in one ``cat-file --batch`` per phase (stops' context, anchors, drift,
    the re-application of the patch left behind), not one per tag and anchor (13 before)."""
    monkeypatch.setenv("FORKOPS_DEBUG", "1")
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--json")
    assert len(json.loads(run.out)["results"]) == 4
    processes = re.findall(r"^forkops: git (\S+)", run.err, re.M)
    assert processes.count("cat-file") <= 4, processes


def test_tags_fetched_are_only_the_checked_ones(sandbox: Sandbox) -> None:
    clone = sandbox.clone("serving")
    before = set(run_git(clone, "tag").split())
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "serving", "--tags", "2.11.1")
    assert run.code == 1
    assert set(run_git(clone, "tag").split()) - before == {"2.11.1"}
    assert run_git(clone, "remote", "get-url", "tf").strip() == sandbox.upstream_url("serving")


# ---------------------------------------------------------------------------------------
# A stop's files: moves and the upstream commits behind each conflict
# ---------------------------------------------------------------------------------------
def test_stop_names_moves_and_upstream_context(scenarios: Path) -> None:
    repo = Repo(scenarios)
    base, start = repo.commit_of("refs/tags/v1.0.0") or "", repo.commit_of("refs/heads/b1.0.0") or ""
    patches = predict.load_patches(repo, repo.lines("rev-list", "--reverse", f"{base}..{start}"))
    targets = [(TagName(t), repo.commit_of(f"refs/tags/{t}") or "", Version.parse(t)) for t in ("v1.5.0", "v1.7.0")]
    with predict.Simulator(repo, patches) as sim:
        at_15, at_17 = sim.predict_many(targets, base=base)
        without = sim.predict_many(targets[1:])[0]
    # v1.7.0: upstream moved src/old.cc and edited the line the fork edits
    (moved,) = at_17.conflicts
    assert (moved.path, moved.moved_from, moved.kind) == ("src/moved/new.cc", "src/old.cc", "content")
    assert moved.describe() == "src/old.cc → src/moved/new.cc"
    assert [c.subject for c in moved.context] == ["upstream change for v1.7.0"] and moved.context_scope == "lines"
    assert moved.as_json()["moved_from"] == "src/old.cc"
    (x,) = at_15.conflicts
    assert x.moved_from is None and [c.subject for c in x.context] == ["upstream change for v1.5.0"]
    assert without.conflicts[0].moved_from is None and without.conflicts[0].context == ()  # no base: no context


def test_context_traces_lines_not_the_whole_file(tmp_path: Path) -> None:
    """Of three upstream commits to the conflicting file, only the one that touched the fork's
    lines is named."""
    path = tmp_path / "r"
    subprocess.run(["git", "init", "--quiet", str(path)], check=True)
    gen = Generator(path)
    gen.commit("master", "base", {"f.txt": _lines("f")})
    gen.tag("v1.0.0", "master", "v1.0.0")
    gen.branch("b1.0.0", "master")
    gen.commit("b1.0.0", "fork edits line 20", {"f.txt": _lines("f", l20="fork")}, author="F <f@example.com>")
    gen.commit("master", "upstream edits line 2", {"f.txt": _lines("f", l2="far away")})
    gen.commit("master", "upstream edits line 20", {"f.txt": _lines("f", l2="far away", l20="upstream")})
    gen.commit("master", "upstream edits line 35", {"f.txt": _lines("f", l2="far away", l20="upstream", l35="x")})
    gen.tag("v1.1.0", "master", "v1.1.0")
    gen.flush()
    repo = Repo(path)
    base, start = repo.commit_of("refs/tags/v1.0.0") or "", repo.commit_of("refs/heads/b1.0.0") or ""
    patches = predict.load_patches(repo, [start])
    with predict.Simulator(repo, patches) as sim:
        (pred,) = sim.predict_many([(TagName("v1.1.0"), repo.commit_of("refs/tags/v1.1.0") or "", None)], base=base)
    (c,) = pred.conflicts
    assert [x.subject for x in c.context] == ["upstream edits line 20"] and c.context_scope == "lines"


def test_simulation_commits_are_what_git_commit_tree_writes(scenarios: Path) -> None:
    repo = Repo(scenarios)
    patches = predict.load_patches(repo, repo.lines("rev-list", "--reverse", "refs/tags/v1.0.0..b1.0.0"))
    with predict.Simulator(repo, patches) as sim:
        p = patches[1]
        (ours,) = sim._commits([(p.tree, (p.parent,))])
        theirs = sim.repo.run("commit-tree", p.tree, "-p", p.parent, "-m", "forkops prediction").strip()
        assert ours == theirs
        assert sim.repo.run("cat-file", "-t", ours).strip() == "commit"
        assert sim.repo.ok("fsck", "--no-dangling", "--connectivity-only", ours)


def test_load_stack_is_patch_stack_and_load_patches_in_one_walk(scenarios: Path, tmp_path: Path) -> None:
    """The one-process load equals rev-list --reverse --no-merges + load_patches, also for a
    stack holding a merge (a patch whose parent is neither a patch nor the base)."""
    repo = Repo(scenarios)
    base, start = repo.commit_of("refs/tags/v1.0.0") or "", repo.commit_of("refs/heads/b1.0.0") or ""
    patches, boundary = predict.load_stack(repo, base, start)
    assert patches == predict.load_patches(repo, repo.lines("rev-list", "--reverse", "--no-merges", f"{base}..{start}"))
    assert boundary == {base: repo.run("rev-parse", f"{base}^{{tree}}").strip()}

    path = tmp_path / "merged"
    run_git(tmp_path, "init", "--quiet", "-b", "main", str(path))
    who = ["-c", "user.name=t", "-c", "user.email=t@t"]

    def commit(name: str) -> None:
        (path / name).write_text(name)
        run_git(path, "add", name)
        run_git(path, *who, "commit", "--quiet", "-m", name)

    commit("base")
    run_git(path, "tag", "v1")
    run_git(path, "checkout", "--quiet", "-b", "side")
    commit("side")
    run_git(path, "checkout", "--quiet", "main")
    commit("a")
    run_git(path, *who, "merge", "--quiet", "--no-ff", "-m", "merge side", "side")
    commit("b")
    merged = Repo(path)
    patches, _ = predict.load_stack(merged, "v1", "main")
    assert patches == predict.load_patches(merged, merged.lines("rev-list", "--reverse", "--no-merges", "v1..main"))
    assert sorted(p.subject for p in patches) == ["a", "b", "side"]
    assert patches[-1].parent == merged.commit_of("main^")
