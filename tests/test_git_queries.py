"""forkops.git's merged queries answer exactly what the separate git commands they replace did.

Each test builds a real repository with the case that could break the merged form (a rename in
``git status``, a tag named like the branch, a packed ref, a file git takes for text with a NUL
deep inside, a folder named like the ref) and compares with git's own answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forkops.errors import GitError
from forkops.git import Repo
from tests.gitutil import git


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "r"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    (path / "a.txt").write_text("one\n")
    (path / "b with space.txt").write_text("two\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return Repo(path)


def test_worktree_changes_lists_renames_by_new_path_and_untracked_only_when_asked(repo: Repo) -> None:
    git(repo.path, "mv", "a.txt", "renamed.txt")
    (repo.path / "b with space.txt").write_text("changed\n")
    (repo.path / "new dir").mkdir()
    (repo.path / "new dir" / "n.txt").write_text("untracked\n")
    (repo.path / ".gitignore").write_text("ignored.txt\n")
    (repo.path / "ignored.txt").write_text("ignored\n")

    changed, untracked = repo.worktree_changes(untracked=True)
    assert sorted(changed) == ["a.txt", "b with space.txt", "renamed.txt"]  # both names of the rename
    # every untracked file one by one (git's default collapses folders), ignored ones never
    expected = git(repo.path, "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    assert sorted(untracked) == sorted(p for p in expected if p) == [".gitignore", "new dir/n.txt"]
    assert repo.worktree_changes() == (changed, [])


def test_head_info_gives_full_ref_names_detached_and_unborn(repo: Repo, tmp_path: Path) -> None:
    sha = git(repo.path, "rev-parse", "HEAD").strip()
    git(repo.path, "branch", "-m", "b2.18.0")
    git(repo.path, "tag", "b2.18.0")  # `symbolic-ref --short` would say heads/b2.18.0
    assert repo.head_info() == (sha, "refs/heads/b2.18.0")
    git(repo.path, "checkout", "-q", "--detach")
    assert repo.head_info() == (sha, None)
    git(tmp_path, "init", "-q", str(tmp_path / "empty"))
    assert Repo(tmp_path / "empty").head_info() == (None, None)


def test_is_repo_without_a_process_only_for_a_git_folder_git_would_accept(repo: Repo, tmp_path: Path) -> None:
    sub = repo.path / "sub"
    sub.mkdir()
    assert Repo(sub).is_repo() and Repo(sub).git_dir == repo.git_dir == (repo.path / ".git").resolve()
    # a stray empty .git folder is not a repository: git looks further up, and so does forkops
    (sub / "inner").mkdir()
    (sub / "inner" / ".git").mkdir()
    assert Repo(sub / "inner").git_dir == repo.git_dir
    (tmp_path / "plain" / ".git").mkdir(parents=True)
    assert not Repo(tmp_path / "plain").is_repo()
    with pytest.raises(GitError):
        _ = Repo(tmp_path / "plain").git_dir


def test_loose_ref_reads_only_what_git_would_say(repo: Repo) -> None:
    sha = git(repo.path, "rev-parse", "HEAD").strip()
    assert repo.loose_ref("refs/heads/main") == sha
    git(repo.path, "pack-refs", "--all")
    assert repo.loose_ref("refs/heads/main") is None  # packed: ask git
    assert repo.loose_ref("HEAD") is None  # symbolic
    assert repo.loose_ref("refs/heads/nope") is None


def test_tip_containing_exact_ref_only(repo: Repo) -> None:
    first = git(repo.path, "rev-parse", "HEAD").strip()
    git(repo.path, "checkout", "-q", "-b", "side")
    git(repo.path, "commit", "-q", "--allow-empty", "-m", "side")
    side = git(repo.path, "rev-parse", "HEAD").strip()
    git(repo.path, "checkout", "-q", "main")
    git(repo.path, "branch", "main-2", side)  # a longer name that contains side is not main
    assert repo.tip_containing("refs/heads/main", side) == (first, False)
    assert repo.tip_containing("refs/heads/side", first) == (side, True)
    assert repo.tip_containing("refs/heads/missing", first) == (None, False)


def test_commits_with_patch_ids_match_the_separate_queries(repo: Repo) -> None:
    # a file git takes for text although a NUL sits past the first 8000 bytes: its diff line
    # holds a NUL and must not pass for a commit's line
    (repo.path / "late-nul.txt").write_bytes(b"x" * 9000 + b"\n" + b"a\0b " + b"f" * 40 + b"\n")
    git(repo.path, "add", "-A")
    git(repo.path, "commit", "-q", "-m", "late nul")
    git(repo.path, "commit", "-q", "--allow-empty", "-m", "empty")
    (repo.path / "a.txt").write_text("one\nmore\n")
    git(repo.path, "commit", "-q", "-am", "more")
    shas = git(repo.path, "rev-list", "HEAD").split()
    infos, ids = repo.commits_with_patch_ids(shas)
    assert infos == repo.commit_infos(shas)
    diff = git(repo.path, "diff-tree", "--stdin", "-p", "--no-color", "--no-renames", input="\n".join(shas) + "\n")
    expected = {c: p for p, c in (line.split() for line in
                                  git(repo.path, "patch-id", "--stable", input=diff).splitlines())}
    assert ids == expected and shas[1] not in ids  # the empty commit has no patch id


def test_set_remote_adds_then_repoints(repo: Repo) -> None:
    assert repo.set_remote("tf", "file:///one") is True
    assert repo.set_remote("tf", "file:///one") is False  # already exactly that: nothing written
    assert repo.set_remote("tf", "file:///two") is True
    assert git(repo.path, "remote", "get-url", "tf").strip() == "file:///two"
    assert git(repo.path, "config", "remote.tf.tagOpt").strip() == "--no-tags"


@pytest.mark.parametrize(("subcommand", "question"), [
    ("merge-base", lambda r: r.is_ancestor("HEAD", "HEAD")),
    ("rev-parse", lambda r: r.rev_parse("refs/heads/main")),
    ("symbolic-ref", lambda r: r.full_head_ref()),
    ("cat-file", lambda r: r.show_file("HEAD", "a.txt")),
    ("diff", lambda r: r.index_matches_head()),
])
def test_a_git_killed_by_a_signal_is_no_answer(repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               subcommand: str, question: object) -> None:
    """A question whose failing exit means "no" or "none" (is it an ancestor, where is HEAD,
    is anything staged): git killed while answering (an OOM kill, here strace's injected
    SIGKILL at its first file opened) is a GitError, never that answer."""
    from tests import crashkit

    if not crashkit.strace_works():
        pytest.skip("strace is missing or cannot trace here (CI installs it)")
    killer = crashkit.Killer(tmp_path / "kit", mode="rename", at=1, k=1, match=f"* {subcommand} *",
                             syscall="openat")
    for name, value in killer.env(repo.path).items():
        monkeypatch.setenv(name, value)
    assert callable(question)
    with pytest.raises(GitError):
        question(repo)
    assert killer.fired
