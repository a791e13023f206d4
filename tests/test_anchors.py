"""Anchors on real trees: a patch left behind is re-applied by a three-way merge, or not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from forkops import anchors, playbook
from forkops.git import Repo
from forkops.sandbox import TF_CORE, TF_TSL, Sandbox, fork_env_cc, tf_env_cc
from forkops.version import Version


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
