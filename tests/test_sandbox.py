"""The sandbox must look like the real thing: tags on release branches, the patch stack, moves."""

from __future__ import annotations

from pathlib import Path

from forkops import anchors, playbook
from forkops import sandbox as sb_mod
from forkops.git import Repo
from forkops.version import Version
from tests.gitutil import git, git_run


def test_tags_sit_on_release_branches_not_master(sandbox: sb_mod.Sandbox) -> None:
    tf = sandbox.upstream["tensorflow"]
    for tag in ("v2.4.0", "v2.5.0", "v2.11.0", "v2.18.0"):
        assert git(tf, "cat-file", "-t", tag).strip() == "tag"  # annotated
        assert git_run(tf, "merge-base", "--is-ancestor", tag, "master").returncode == 1
        minor = tag.split(".")[1]
        assert git(tf, "branch", "--contains", tag, "--format=%(refname:short)").split() == [f"r2.{minor}"]
        assert git(tf, "log", "-1", "--format=%s", tag).startswith("Update version for ")
    sv = sandbox.upstream["serving"]
    assert git(sv, "cat-file", "-t", "refs/tags/2.18.0").strip() == "commit"  # lightweight
    assert git(sv, "rev-parse", "refs/tags/2.18.0") != git(sv, "rev-parse", "refs/heads/2.18.0")
    assert "2.5.0\n" not in git(sv, "tag") and "2.5.1\n" in git(sv, "tag")


def test_fork_carries_its_patch_stack(sandbox: sb_mod.Sandbox) -> None:
    clone = sandbox.clone("tensorflow")
    subjects = git(clone, "log", "--format=%s", "refs/tags/v2.4.0..b2.4.0").splitlines()
    assert len(subjects) == 5 and subjects[-1] == "Decrypt models in ReadBinaryProto"
    # A plain rebase would replay upstream's release-branch commits too: the trap of SPEC section 1.
    assert "Update version for 2.4.0 release." in git(clone, "log", "--format=%s", "origin/master..b2.4.0")
    assert git(sandbox.clone("serving"), "rev-parse", "--abbrev-ref", "HEAD").strip() == "b2.4.0"


def test_decryption_anchor_moves_like_real_tensorflow(sandbox: sb_mod.Sandbox) -> None:
    (anchor,) = playbook.load("tensorflow").anchors
    repo = Repo(sandbox.upstream["tensorflow"])
    fork = Repo(sandbox.origin["tensorflow"])
    on_fork = anchors.check(fork, "b2.4.0", anchor, Version.parse("2.4.0"))
    assert on_fork.ok and on_fork.path == sb_mod.TF_CORE
    upstream_240 = anchors.check(repo, "v2.4.0", anchor, Version.parse("2.4.0"))
    assert not upstream_240.ok and upstream_240.path == sb_mod.TF_CORE
    at_211 = anchors.check(repo, "v2.11.0", anchor, Version.parse("2.11.0"))
    assert at_211.defined_in == (sb_mod.TF_CORE, sb_mod.TF_TSL) and at_211.path == sb_mod.TF_TSL
    at_218 = anchors.check(repo, "v2.18.0", anchor, Version.parse("2.18.0"))
    assert at_218.path == sb_mod.TF_XLA_TSL
    assert "absl::Status ReadBinaryProto(" in git(repo.path, "show", f"v2.18.0:{sb_mod.TF_XLA_TSL}")
    at_219 = anchors.check(repo, "v2.19.0-rc0", anchor, Version.parse("2.19.0-rc0"))
    assert at_219.defined_in == (sb_mod.TF_XLA,)


def test_rebase_outcomes_match_the_documented_table(sandbox: sb_mod.Sandbox, tmp_path: Path) -> None:
    def rebase(name: str, tag: str, base: str) -> tuple[int, list[str], str]:
        work = tmp_path / f"{name}-{tag}"
        git(tmp_path, "clone", "-q", str(sandbox.origin[name]), str(work))
        git(work, "fetch", "-q", "--no-tags", str(sandbox.upstream[name]), f"refs/tags/{tag}:refs/tags/{tag}")
        proc = git_run(work, "rebase", "--onto", f"refs/tags/{tag}", f"refs/tags/{base}", "b2.4.0")
        unmerged = git(work, "diff", "--name-only", "--diff-filter=U").split()
        where = (work / ".git/rebase-merge/msgnum").read_text().strip() if unmerged else ""
        return proc.returncode, unmerged, where

    assert rebase("tensorflow", "v2.5.0", "v2.4.0") == (0, [], "")
    assert rebase("tensorflow", "v2.18.0", "v2.4.0")[1:] == ([".bazelrc"], "3")
    assert rebase("serving", "2.4.1", "2.4.0") == (0, [], "")
    assert rebase("serving", "2.18.0", "2.4.0")[1:] == (["WORKSPACE"], "2")


def test_resolutions_produce_conflict_free_files() -> None:
    upstream = sb_mod.serving_workspace("2.18.0", patch=True)
    fork = sb_mod.fork_workspace(sb_mod.serving_workspace("2.4.0"), "/x/tf.git", "b2.4.0")
    resolved = sb_mod.resolve("serving", "WORKSPACE", ours=upstream, theirs=fork)
    assert resolved is not None
    assert 'branch = "b2.4.0"' in resolved and "tensorflow_http_archive(" not in resolved
    assert 'patches = ["//third_party/tensorflow:tensorflow.patch"]' in resolved
    assert "<<<<<<<" not in resolved


def test_large_sandbox_has_the_requested_size(tmp_path: Path) -> None:
    sb = sb_mod.build(tmp_path / "big", filler_files=500, filler_commits=400, clone=False)
    count = int(git(sb.upstream["tensorflow"], "rev-list", "--count", "master"))
    assert count > 400
    assert int(git(sb.upstream["tensorflow"], "ls-tree", "-r", "--name-only", "v2.18.0").count("\n")) > 500


def test_dlopen_shape_is_the_public_forks(tmp_path: Path) -> None:
    sb = sb_mod.build(tmp_path / "sb", shape="dlopen")
    tf = sb.clone("tensorflow")
    env_cc = git(tf, "show", f"b2.4.0:{sb_mod.TF_CORE}")
    body = anchors.body_in(env_cc, playbook.load("tensorflow-dlopen").anchors[0])
    assert body is not None
    assert "ReadFileToString(env, fname, &encrypted)" in body  # reads the whole file
    assert 'dlopen("/opt/lib/libcryptfile.so", RTLD_NOW)' in body and 'dlsym(lib, "CBCMode_Decrypt")' in body
    assert "#include <dlfcn.h>" in env_cc
    # No key anywhere in the TensorFlow fork's source: no key sites, no crypt tool, no define.
    assert sb_mod.PLACEHOLDER_KEY.decode() not in git(tf, "grep", "-I", "-h", "-e", ".", "b2.4.0", "--")
    assert "cryptfile.cc" not in git(tf, "ls-tree", "-r", "--name-only", "b2.4.0")
    assert git(tf, "diff", "v2.4.0", "b2.4.0", "--", ".bazelrc") == ""
    on_fork = anchors.check(Repo(tf), "b2.4.0", playbook.load("tensorflow-dlopen").anchors[0], Version.parse("2.4.0"))
    assert on_fork.ok and on_fork.path == sb_mod.TF_CORE
    # The Serving image downloads a prebuilt library.
    docker = git(sb.clone("serving"), "show", f"b2.4.0:{sb_mod.SERVING_DOCKER}/Dockerfile")
    assert f"ARG ENCRYPT_FILE_URL={sb_mod.LIBRARY_URL}\nADD ${{ENCRYPT_FILE_URL}} /opt/lib/libcryptfile.so\n" in docker
    assert 'playbook = "tensorflow-dlopen"' in (sb.workspace / "forkops.toml").read_text()


def test_shape_changes_only_the_forks(tmp_path: Path) -> None:
    """Other tests rely on the default sandbox: upstreams are the same whatever the shape."""
    keys = sb_mod.build(tmp_path / "keys", clone=False)
    dl = sb_mod.build(tmp_path / "dlopen", clone=False, shape="dlopen")
    for name in ("tensorflow", "serving"):
        assert git(keys.upstream[name], "show-ref") == git(dl.upstream[name], "show-ref")
        assert git(keys.origin[name], "rev-parse", "b2.4.0") != git(dl.origin[name], "rev-parse", "b2.4.0")


def test_one_fork_workspace(tmp_path: Path) -> None:
    sb = sb_mod.build(tmp_path / "sb", only="serving")
    assert sorted(p.name for p in sb.workspace.iterdir()) == [".gitignore", "forkops.toml", "serving"]
    from forkops import workspace

    assert [r.name for r in workspace.load(sb.workspace).repos] == ["serving"]
    assert sb.origin["tensorflow"].is_dir()  # the other fork exists, for a second workspace
