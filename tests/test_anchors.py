"""Anchors on real trees: a patch left behind is re-applied by a three-way merge, or not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from forkops import anchors, playbook
from forkops.git import Repo
from forkops.sandbox import PLACEHOLDER_KEY, TF_CORE, TF_TSL, Generator, Sandbox, fork_env_cc, tf_env_cc
from forkops.secrets import MASKED_SITE as MASKED
from forkops.version import Version
from tests.clihelp import run_cli
from tests.gitutil import git
from tests.test_upgrade import cli, status_json


def _bytes_of(data: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in data)


def _commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for path, text in files.items():
        target = repo / path
        if text is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", message], check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _repo(tmp_path: Path, tsl_text: str) -> tuple[Repo, str, str, str]:
    """base (old file), start (old file patched), live (old patched file left behind + new copy)."""
    path = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    base = _commit(path, {TF_CORE: tf_env_cc("core")}, "base")
    start = _commit(path, {TF_CORE: fork_env_cc(tf_env_cc("core"))}, "the fork's patch")
    live = _commit(path, {TF_TSL: tsl_text}, "upstream moved it (and the rebase kept the patch behind)")
    return Repo(path), base, start, live


def test_left_behind_patch_is_reapplicable(tmp_path: Path) -> None:
    (anchor,) = playbook.load("tensorflow").anchors
    repo, base, start, live = _repo(tmp_path, tf_env_cc("tsl"))
    res = anchors.check(repo, live, anchor, Version.parse("2.11.0"))
    assert not res.ok and res.path == TF_TSL and res.left_behind == (TF_CORE,)
    after = anchors.with_reapply(repo, res, anchor, base=base, start=start, live=live)
    assert after.ok and after.reapply_from == TF_CORE and "re-applies" in after.detail
    merged, why = anchors.retarget(repo, res, base=base, start=start, live=live)
    assert merged is not None and why == ""
    assert b"decryptCBC(encrypted, key" in merged and b"namespace tsl {" in merged


def test_conflicting_move_is_not_reapplicable(tmp_path: Path) -> None:
    (anchor,) = playbook.load("tensorflow").anchors
    # Upstream rewrote the very lines the fork's patch replaces: the merge conflicts.
    moved = tf_env_cc("tsl").replace("  std::unique_ptr<RandomAccessFile> file;\n",
                                     "  std::unique_ptr<RandomAccessFile> file = nullptr;  // rewritten\n")
    repo, base, start, live = _repo(tmp_path, moved)
    res = anchors.check(repo, live, anchor, Version.parse("2.11.0"))
    after = anchors.with_reapply(repo, res, anchor, base=base, start=start, live=live)
    assert not after.ok and after.reapply_from is None
    assert "re-applying fails" in after.detail and "conflicting" in after.detail


@pytest.mark.parametrize("grep_when_changed", [anchors.GREP_WHEN_CHANGED, 0])
def test_locate_answers_like_git_grep_on_every_tree(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                                    grep_when_changed: int) -> None:
    """The chain of release tags (each derived from the one before) answers exactly what one
    `git grep -l -F` per tree answers, through every move of env.cc; also when every tree is
    grepped because it changed "too much"."""
    monkeypatch.setattr(anchors, "GREP_WHEN_CHANGED", grep_when_changed)
    upstream = Repo(sandbox.upstream["tensorflow"])
    tags = [t for t in upstream.lines("tag", "--sort=version:refname") if t.startswith("v2.")]
    chain: list[tuple[str, str | None]] = [(f"refs/tags/{t}", f"refs/tags/{tags[i - 1]}" if i else None)
                                           for i, t in enumerate(tags)]
    chain.append((upstream.run("rev-parse", "master^{tree}").strip(), "refs/tags/v2.11.0"))
    symbols = ["ReadBinaryProto", "Status::OK"]
    located = anchors.locate(upstream, chain, symbols)
    for tree, _ref in chain:
        for symbol in symbols:
            assert located.files[(tree, symbol)] == upstream.grep_files(tree, symbol, fixed=True), (tree, symbol)
            for path in located.files[(tree, symbol)]:
                assert located.blobs[(tree, path)] == upstream.show_file(tree, path)


# ---------------------------------------------------------------------------------------
# check: anchors that help
# ---------------------------------------------------------------------------------------
def _tag_conflicting_move(sb: Sandbox) -> None:
    """Upstream v2.12.0 (from v2.11.0) rewrites the lines of the live tsl env.cc that the
    fork's decryption patch changes: the rebase is clean (the patch lands in the dead core
    copy) and re-applying it to the live file conflicts."""
    upstream = sb.upstream["tensorflow"]
    gen = Generator(upstream, start_time=2_000_000_000)
    v211 = subprocess.run(["git", "-C", str(upstream), "rev-parse", "v2.11.0^{commit}"], check=True,
                          capture_output=True, text=True).stdout.strip()
    gen.load_branch("r2.12", v211, {})
    gen.commit("r2.12", "Rewrite ReadBinaryProto's file handling", {TF_TSL: tf_env_cc("tsl").replace(
        "  std::unique_ptr<RandomAccessFile> file;\n",
        "  std::unique_ptr<RandomAccessFile> file = nullptr;  // rewritten\n")})
    gen.tag("v2.12.0", "r2.12", "TensorFlow 2.12.0")
    gen.flush()


def test_check_warns_about_a_dead_patched_copy(sandbox: Sandbox) -> None:
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.11.0", "--json")
    assert run.code == 0, run.err
    (r,) = json.loads(run.out)["results"]
    (a,) = r["anchors"]
    assert a["ok"] and a["path"] == TF_TSL and a["dead_copies"] == [TF_CORE]
    assert r["warnings"] == [f"decrypt-in-ReadBinaryProto: a patched copy stays in {TF_CORE}, "
                             f"which is not the live definition ({TF_TSL})"]
    table = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.11.0")
    assert table.code == 0 and f"warning: {r['warnings'][0]}" in table.out.replace("\n", " ")
    clean = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.4.1", "--json")
    (r241,) = json.loads(clean.out)["results"]
    assert r241["warnings"] == [] and r241["anchors"][0]["path"] == TF_CORE


def test_failed_anchor_names_the_missing_fork_commit_masked(sandbox: Sandbox) -> None:
    _tag_conflicting_move(sandbox)
    run = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.12.0", "--json")
    assert run.code == 1, run.err
    doc = json.loads(run.out)
    (r,) = doc["results"]
    assert r["status"] == "clean" and not r["compatible"]
    (a,) = r["anchors"]
    assert not a["ok"] and "conflicting" in a["detail"]
    decrypt = next(p for p in doc["patches"] if p["subject"] == "Decrypt models in ReadBinaryProto")
    assert [(m["sha"], m["path"]) for m in a["missing"]] == [(decrypt["sha"], TF_CORE)]
    diff = a["missing"][0]["diff"]
    assert "+Status decryptCBC(" in diff and MASKED in diff
    assert _bytes_of(PLACEHOLDER_KEY) not in diff  # the key site's value never shows


def test_reapply_conflict_gives_the_live_file_with_markers(tmp_path: Path) -> None:
    (anchor,) = playbook.load("tensorflow").anchors
    moved = tf_env_cc("tsl").replace("  std::unique_ptr<RandomAccessFile> file;\n",
                                     "  std::unique_ptr<RandomAccessFile> file = nullptr;  // rewritten\n")
    repo, base, start, live = _repo(tmp_path, moved)
    res = anchors.check(repo, live, anchor, Version.parse("2.11.0"))
    done = anchors.merge_into_live(repo, res, base=base, start=start, live=live)
    assert done.old == TF_CORE and done.conflicts >= 1 and done.merged is not None
    text = done.merged.decode()
    assert f"<<<<<<< {TF_TSL}\n" in text and f">>>>>>> {TF_CORE} with the patches\n" in text
    assert "decryptCBC(encrypted, key" in text and "namespace tsl {" in text
    assert anchors.retarget(repo, res, base=base, start=start, live=live)[0] is None


# ---------------------------------------------------------------------------------------
# upgrade: anchors that help
# ---------------------------------------------------------------------------------------
def test_upgrade_notes_the_dead_copy_with_git_rm(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli(sandbox, "upgrade", "2.11.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 0, res.out + res.err
    tf = sandbox.clone("tensorflow")
    command = f"git -C {tf} rm {TF_CORE}"
    assert command in res.out.replace("\n", "")  # at completion
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "done"
    assert any(command in note and f"not the live definition ({TF_TSL})" in note for note in data["notes"])


def test_upgrade_anchor_failure_helps(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    _tag_conflicting_move(sandbox)
    tf = sandbox.clone("tensorflow")
    res = cli(sandbox, "upgrade", "2.12.0", "--repo", "tensorflow", monkeypatch=monkeypatch)
    assert res.code == 1, res.out + res.err
    data = status_json(sandbox, monkeypatch)
    assert data["state"] == "anchor-failed"
    failure = data["failure"]
    decrypt = git(tf, "log", "--format=%H", "--grep=Decrypt models in ReadBinaryProto", "v2.4.0..b2.4.0").split()
    assert failure["fork_commits"] == [{"sha": decrypt[0], "subject": "Decrypt models in ReadBinaryProto"}]
    assert "+Status decryptCBC(" in failure["change"] and MASKED in failure["change"]
    assert _bytes_of(PLACEHOLDER_KEY) not in failure["change"] and _bytes_of(PLACEHOLDER_KEY) not in res.out
    assert decrypt[0][:12] in res.out and "Decrypt models in ReadBinaryProto" in res.out
    # the three-way merge result, conflict markers and all, is in the live file for the person
    live = (tf / TF_TSL).read_text()
    assert f"<<<<<<< {TF_TSL}" in live and "decryptCBC(encrypted, key" in live
    assert f"merge result with conflict markers is in {TF_TSL}" in failure["message"]
    assert git(tf, "status", "--porcelain", "--", TF_TSL).startswith(" M")  # written, not committed


def test_rerere_forgets_a_resolution_that_dropped_the_patch(tmp_path: Path) -> None:
    """A person resolved env.cc by taking upstream's side (the patch is gone); git's rerere
    recorded it. forget_dropping_resolutions removes exactly that entry; the resolution of an
    unrelated file stays."""
    (anchor,) = playbook.load("tensorflow").anchors
    path = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "config", "rerere.enabled", "true"], check=True)
    base = _commit(path, {TF_CORE: tf_env_cc("core"), "other.cc": _lines_text("base")}, "base")
    subprocess.run(["git", "-C", str(path), "checkout", "-qb", "fork"], check=True)
    _commit(path, {TF_CORE: fork_env_cc(tf_env_cc("core")), "other.cc": _lines_text("fork")}, "fork")
    subprocess.run(["git", "-C", str(path), "checkout", "-qb", "up", base], check=True)
    upstream = tf_env_cc("core").replace("  std::unique_ptr<RandomAccessFile> file;\n",
                                         "  std::unique_ptr<RandomAccessFile> file = nullptr;  // upstream\n")
    _commit(path, {TF_CORE: upstream, "other.cc": _lines_text("upstream")}, "upstream")
    merge = subprocess.run(["git", "-C", str(path), "merge", "-q", "fork"], capture_output=True, check=False)
    assert merge.returncode != 0
    (path / TF_CORE).write_text(upstream)  # upstream's side: the decryption is gone
    (path / "other.cc").write_text(_lines_text("resolved"))
    _commit(path, {}, "merge, resolved")
    cache = path / ".git" / "rr-cache"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and all((cache / e / "postimage").is_file() for e in entries)
    removed = anchors.forget_dropping_resolutions(Repo(path), anchor)
    assert len(removed) == 1 and sorted(p.name for p in cache.iterdir()) == sorted(set(entries) - set(removed))
    assert not (cache / removed[0]).exists()
    assert anchors.forget_dropping_resolutions(Repo(path), anchor) == []


def _lines_text(tag: str) -> str:
    return "".join(f"line {i}\n" for i in range(10)) + f"{tag}\n"
