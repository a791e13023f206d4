"""``forkops build``: staging and rewrites on real repositories, docker at the process boundary.

The sandbox forks only have ``b2.4.0`` (whose Dockerfiles already say ``ADD .`` and whose
WORKSPACE uses git_repository). For upstream-shaped files the tests commit fixtures on top in
real git: 2.4-style (git clone fetch), 2.18-style (curl | tar, GPU fetch near line 33,
``patch =``) and 2.20-style (``patch`` and ``patch_cmds``). Docker is the stand-in executable in
tests/standins (there is no Docker engine here); it records every invocation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from forkops import build, keys
from forkops import sandbox as sb_mod
from forkops.errors import ConfigError, ExternalError, NeedsPerson
from forkops.playbook import BuildSpec
from forkops.playbook import load as load_playbook
from forkops.version import Version
from tests.clihelp import run_cli
from tests.gitutil import git

STANDINS = Path(__file__).parent / "standins"
SOURCE = str(Path(__file__).resolve().parents[1])  # subprocesses run this checkout, not an installed copy
KEY = b"Tst-Key-0123ABCD"  # test data, not a real key
DOCKER_DIR = sb_mod.SERVING_DOCKER
def _serving_spec() -> BuildSpec:
    spec = load_playbook("serving").build
    assert spec is not None
    return spec


SPEC = _serving_spec()


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
def write_keys(ws: Path) -> Path:
    path = ws / "keys.toml"
    path.write_text(f'[model]\ncipher = "aes-128-cbc"\nkey = "{KEY.decode()}"\n')
    path.chmod(0o600)
    return path


def commit_files(repo: Path, branch: str, start: str, files: dict[str, str], message: str) -> None:
    git(repo, "checkout", "-q", "-b", branch, start)
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    git(repo, "checkout", "-q", start)


def tf_readme_patch(tf: Path) -> str:
    """A real -p1 patch against the TF fork's README (what Serving's tensorflow.patch is)."""
    old = git(tf, "show", "b2.4.0:README.md").splitlines(keepends=True)
    new = [*old, "\n", "Patched by Serving's tensorflow.patch.\n"]
    return "".join(difflib.unified_diff(old, new, "a/README.md", "b/README.md"))


WORKSPACE_2_20 = """workspace(name = "tf_serving")

# ===== TensorFlow dependency =====
load("//tensorflow_serving:repo.bzl", "tensorflow_http_archive")

tensorflow_http_archive(
    name = "org_tensorflow",
    sha256 = "0e9eb1d2ab7a9a1a2b1e0d9e3c4b5a69788f0e8c1d2b3a4f5e6d7c8b9a0f1e2d",
    git_commit = "5bc9d26649cca274750ad3625bd93422617eed4b",  # 2.20.0
    patch = "//third_party/tensorflow:tensorflow.patch",
    patch_cmds = [
        # XLA's copy of a header moved; keep the old include working.
        "echo 'patch_cmds ran' > PATCH_CMDS_RAN",
        \"\"\"sed -i 's/An end-to-end/An end-to-end (patch_cmds)/' README.md\"\"\",
    ],
)

load("//tensorflow_serving:workspace.bzl", "tf_serving_workspace")

tf_serving_workspace()
"""

# A 2.20-style devel file whose curl fetch is split over continuation lines.
DOCKERFILE_2_20_SPLIT = sb_mod.serving_dockerfile_devel(18, gpu=False).replace(
    "RUN curl -sSL --retry 5 https://github.com/tensorflow/serving/tarball/"
    "${TF_SERVING_VERSION_GIT_COMMIT} | tar",
    "RUN curl -sSL --retry 5 \\\n"
    "    https://github.com/tensorflow/serving/tarball/${TF_SERVING_VERSION_GIT_COMMIT} \\\n"
    "    | tar",
)


def style_files(style: str, tf: Path) -> dict[str, str]:
    minor = {"2.4": 4, "2.18": 18, "2.20": 18}[style]
    files = {
        f"{DOCKER_DIR}/Dockerfile.devel": sb_mod.serving_dockerfile_devel(minor, gpu=False),
        f"{DOCKER_DIR}/Dockerfile.devel-gpu": sb_mod.serving_dockerfile_devel(minor, gpu=True),
    }
    if style == "2.4":
        files["WORKSPACE"] = sb_mod.serving_workspace("2.4.0")
    elif style == "2.18":
        files["WORKSPACE"] = sb_mod.serving_workspace("2.18.0", patch=True)
        files["third_party/tensorflow/tensorflow.patch"] = tf_readme_patch(tf)
        files["third_party/tensorflow/BUILD"] = ""
    else:
        files["WORKSPACE"] = WORKSPACE_2_20
        files[f"{DOCKER_DIR}/Dockerfile.devel"] = DOCKERFILE_2_20_SPLIT
        files["third_party/tensorflow/tensorflow.patch"] = tf_readme_patch(tf)
        files["third_party/tensorflow/BUILD"] = ""
    return files


VERSIONS = {"2.4": "2.4.7", "2.18": "2.18.0", "2.20": "2.20.0"}


@pytest.fixture
def ws(sandbox: sb_mod.Sandbox, monkeypatch: pytest.MonkeyPatch) -> sb_mod.Sandbox:
    """The sandbox workspace with a keys file and fork branches for each fixture style."""
    write_keys(sandbox.workspace)
    tf, sv = sandbox.clone("tensorflow"), sandbox.clone("serving")
    for style, version in VERSIONS.items():
        git(tf, "branch", f"b{version}", "b2.4.0")
        commit_files(sv, f"b{version}", "b2.4.0", style_files(style, tf), f"{style}-style build files")
    monkeypatch.chdir(sandbox.workspace)
    return sandbox


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in docker first on PATH; returns its state folder (calls.jsonl, config.json)."""
    state = tmp_path / "docker-state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_DOCKER_STATE", str(state))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return state


def calls(state: Path) -> list[dict[str, Any]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def snapshot(repo: Path) -> dict[str, str]:
    """Every file of the checkout (worktree and .git) -> sha256, plus refs and status."""
    out = {}
    for path in sorted(repo.rglob("*")):
        if path.is_file() and path.name != "index":  # git may refresh the index's stat cache
            out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    out["<refs>"] = git(repo, "for-each-ref")
    out["<status>"] = git(repo, "status", "--porcelain", "--ignored")
    return out


def key_forms() -> list[bytes]:
    return [KEY, keys.encode(KEY, "c-bytes").encode(), keys.encode(KEY, "c-string").encode()]


def files_with_key(root: Path) -> list[str]:
    forms = key_forms()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and any(f in p.read_bytes() for f in forms))


def forks_for(ws: sb_mod.Sandbox, version: str) -> tuple[build.Fork, build.Fork]:
    from forkops import workspace

    found = build.forks(workspace.load(ws.workspace), Version.parse(version))
    assert found is not None and found[1] is not None
    return found[0], found[1]


def material() -> object:
    from forkops import keyfile

    return keyfile.load(Path("keys.toml").resolve())


# ---------------------------------------------------------------------------------------
# pure rewrites
# ---------------------------------------------------------------------------------------
def test_dockerfile_2_4_git_clone_continued_lines_replaced() -> None:
    text = sb_mod.serving_dockerfile_devel(4, gpu=False)
    rw = build.rewrite_dockerfile(text, SPEC, "Dockerfile.devel")
    assert "git clone" not in rw.text and "git remote add upstream" not in rw.text
    assert "git checkout ${TF_SERVING_VERSION_GIT_COMMIT}" not in rw.text  # the whole continued RUN
    assert rw.text.count("ADD . /tensorflow-serving") == 1
    # The replacement sits where the fetch was: right after WORKDIR /tensorflow-serving.
    lines = rw.text.splitlines()
    add = lines.index("ADD . /tensorflow-serving")
    assert lines[add - 2] == "WORKDIR /tensorflow-serving"
    assert "bazel build" in rw.text and rw.text.endswith('CMD ["/bin/bash"]\n')


def test_dockerfile_2_18_gpu_fetch_near_line_33() -> None:
    text = sb_mod.serving_dockerfile_devel(18, gpu=True)
    line_no = next(i for i, line in enumerate(text.splitlines(), 1) if "tarball" in line)
    assert 25 <= line_no <= 40, line_no  # the fixture is what the issue describes
    rw = build.rewrite_dockerfile(text, SPEC, "Dockerfile.devel-gpu")
    assert "tarball" not in rw.text and "ADD . /tensorflow-serving" in rw.text
    assert rw.text.splitlines()[line_no] == "ADD . /tensorflow-serving"  # after the forkops comment
    assert "apt-get install" in rw.text  # the toolchain after the fetch is untouched


def test_dockerfile_fetch_split_over_continuations() -> None:
    assert "tarball/${TF_SERVING_VERSION_GIT_COMMIT} \\\n    | tar" in DOCKERFILE_2_20_SPLIT  # really split
    rw = build.rewrite_dockerfile(DOCKERFILE_2_20_SPLIT, SPEC, "Dockerfile.devel")
    assert "tarball" not in rw.text and "| tar" not in rw.text and "ADD . /tensorflow-serving" in rw.text


def test_dockerfile_already_rewritten_is_reported_not_an_error() -> None:
    text = sb_mod.fork_dockerfile_devel(sb_mod.serving_dockerfile_devel(4, gpu=False))
    rw = build.rewrite_dockerfile(text, SPEC, "Dockerfile.devel")
    assert rw.already and rw.text == text and "already" in rw.note


def test_dockerfile_without_fetch_is_an_error_naming_file_and_patterns() -> None:
    text = "FROM ubuntu:22.04\nRUN wget https://example.com/src.tgz && tar xzf src.tgz\n"
    with pytest.raises(NeedsPerson) as err:
        build.rewrite_dockerfile(text, SPEC, "tensorflow_serving/tools/docker/Dockerfile.devel-gpu")
    assert "Dockerfile.devel-gpu" in err.value.message and "git\\s+clone" in err.value.message


def test_workspace_2_4_http_archive_becomes_local_repository() -> None:
    rw = build.rewrite_workspace(sb_mod.serving_workspace("2.4.0"), SPEC, "WORKSPACE", "/tensorflow-serving/tensorflow")
    assert rw.rule == "tensorflow_http_archive" and not rw.carried
    assert 'local_repository(\n    name = "org_tensorflow",\n    path = "/tensorflow-serving/tensorflow",\n)' in rw.text
    assert "git_commit =" not in rw.text and "tf_serving_workspace()" in rw.text


def test_workspace_2_18_patch_is_carried_with_strip_1() -> None:
    rw = build.rewrite_workspace(sb_mod.serving_workspace("2.18.0", patch=True), SPEC, "WORKSPACE", "/t/tf")
    assert rw.carried.files == (("third_party/tensorflow/tensorflow.patch", ("-p1",)),)
    assert "patch =" not in rw.text


def test_workspace_2_20_patch_cmds_are_carried() -> None:
    rw = build.rewrite_workspace(WORKSPACE_2_20, SPEC, "WORKSPACE", "/t/tf")
    assert len(rw.carried.commands) == 2 and rw.carried.commands[0].startswith("echo")
    assert "patch_cmds" not in rw.text and "sed -i" not in rw.text


def test_workspace_fork_git_repository_with_patches_uses_patch_args() -> None:
    text = sb_mod.fork_workspace(sb_mod.serving_workspace("2.18.0", patch=True), "/x/tf.git", "b2.18.0")
    rw = build.rewrite_workspace(text, SPEC, "WORKSPACE", "/t/tf")
    assert rw.rule == "git_repository"
    assert rw.carried.files == (("third_party/tensorflow/tensorflow.patch", ("-p0",)),)  # Bazel's default


def test_workspace_local_repository_at_the_path_is_already_rewritten() -> None:
    text = 'workspace(name = "tf_serving")\nlocal_repository(name = "org_tensorflow", path = "/t/tf")\n'
    rw = build.rewrite_workspace(text, SPEC, "WORKSPACE", "/t/tf")
    assert rw.already and rw.text == text


def test_workspace_without_the_rule_is_an_error() -> None:
    with pytest.raises(NeedsPerson, match='WORKSPACE: no repository rule with name = "org_tensorflow"'):
        build.rewrite_workspace('workspace(name = "x")\n', SPEC, "WORKSPACE", "/t/tf")


# ---------------------------------------------------------------------------------------
# staging on real repositories
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["2.4", "2.18", "2.20"])
def test_stage_upstream_styles(ws: sb_mod.Sandbox, tmp_path: Path, style: str) -> None:
    tf_clone, sv_clone = ws.clone("tensorflow"), ws.clone("serving")
    before = {p: snapshot(p) for p in (tf_clone, sv_clone)}
    serving, tensorflow = forks_for(ws, VERSIONS[style])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    st = build.stage(serving, tensorflow, material(), ("cpu", "gpu"), scratch_parent=scratch)  # type: ignore[arg-type]
    try:
        assert stat.S_IMODE(st.root.stat().st_mode) == 0o700
        ctx = st.context
        assert not (ctx / ".git").exists() and not (ctx / "tensorflow" / ".git").exists()
        # The TF fork's tree is inside, byte for byte apart from the key sites and patches.
        assert (ctx / "tensorflow/tensorflow/tools/cryptfile/cryptfile.cc").is_file()
        assert (ctx / "tensorflow_serving/model_servers/server.cc").is_file()
        workspace = (ctx / "WORKSPACE").read_text()
        assert 'path = "/tensorflow-serving/tensorflow"' in workspace and "git_commit =" not in workspace
        for name in ("Dockerfile.devel", "Dockerfile.devel-gpu"):
            text = (ctx / DOCKER_DIR / name).read_text()
            assert "ADD . /tensorflow-serving" in text
            assert "git clone" not in text and "tarball" not in text
        readme = (ctx / "tensorflow/README.md").read_text()
        if style in ("2.18", "2.20"):
            assert "Patched by Serving's tensorflow.patch." in readme
        if style == "2.20":
            assert (ctx / "tensorflow/PATCH_CMDS_RAN").read_text() == "patch_cmds ran\n"
            assert "An end-to-end (patch_cmds)" in readme
        # The key is in the staged TF tree's sites, and in the staged Serving .bazelrc (Bazel does
        # not read a local_repository's .bazelrc); nowhere else.
        assert st.key_sites >= 4
        with_key = files_with_key(st.root)
        assert with_key and all(p.startswith("context/tensorflow/") or p == "context/.bazelrc" for p in with_key)
        assert "context/tensorflow/.bazelrc" in with_key
        assert f"build --define=MODEL_ENCRYPT_KEY={KEY.decode()}\n" in (ctx / ".bazelrc").read_text()
        assert "context/tensorflow/tensorflow/tools/cryptfile/cryptfile.cc" in with_key
        assert any("workspace" in n.lower() and "local_repository" in n for n in st.notes)
    finally:
        st.remove()
    assert not st.root.exists()
    for repo, snap in before.items():
        assert snapshot(repo) == snap  # the user's checkouts: byte-identical, refs and status unchanged
        assert files_with_key(repo) == []


def test_stage_fork_branch_already_local(ws: sb_mod.Sandbox, tmp_path: Path) -> None:
    serving, tensorflow = forks_for(ws, "2.4.0")
    st = build.stage(serving, tensorflow, material(), ("cpu",), scratch_parent=tmp_path)  # type: ignore[arg-type]
    try:
        notes = "\n".join(st.notes)
        assert "already builds from local source" in notes
        assert "git_repository -> local_repository" in notes
    finally:
        st.remove()


def test_stage_failure_leaves_nothing(ws: sb_mod.Sandbox, tmp_path: Path) -> None:
    sv = ws.clone("serving")
    commit_files(sv, "b2.19.0", "b2.4.0", {f"{DOCKER_DIR}/Dockerfile.devel": "FROM ubuntu\nRUN make\n"}, "no fetch")
    git(ws.clone("tensorflow"), "branch", "b2.19.0", "b2.4.0")
    serving, tensorflow = forks_for(ws, "2.19.0")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(NeedsPerson, match=r"Dockerfile\.devel: no source fetch"):
        build.stage(serving, tensorflow, material(), ("cpu",), scratch_parent=scratch)  # type: ignore[arg-type]
    assert list(scratch.iterdir()) == []  # the scratch folder (with the key) is gone


# ---------------------------------------------------------------------------------------
# docker commands at the process boundary
# ---------------------------------------------------------------------------------------
def build_calls(state: Path) -> list[list[str]]:
    return [c["argv"] for c in calls(state) if "build" in c["argv"][:2]]


def test_build_cpu_commands(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.18.0", "--registry", "registry.example.com/ml")
    assert res.code == 0, res.err
    runs = calls(standin)
    assert runs[0]["argv"][0] == "version"
    argv = build_calls(standin)
    assert len(argv) == 2
    ctx = argv[0][-1]
    sha = git(ws.clone("serving"), "rev-parse", "b2.18.0").strip()
    labels = ["--build-arg", "TF_SERVING_VERSION_GIT_BRANCH=b2.18.0", "--build-arg",
              f"TF_SERVING_VERSION_GIT_COMMIT={sha}"]
    assert argv[0] == ["build", "--file", f"{ctx}/{DOCKER_DIR}/Dockerfile.devel", "--tag",
                       "registry.example.com/ml/tensorflow-serving:2.18.0-devel", *labels, ctx]
    assert argv[1] == ["build", "--file", f"{ctx}/{DOCKER_DIR}/Dockerfile", "--tag",
                       "registry.example.com/ml/tensorflow-serving:2.18.0", "--build-arg",
                       "TF_SERVING_BUILD_IMAGE=registry.example.com/ml/tensorflow-serving:2.18.0-devel", *labels, ctx]
    devel_call = next(c for c in calls(standin) if c["argv"] == argv[0])
    assert "ADD . /tensorflow-serving" in str(devel_call["dockerfile_text"])
    # The context docker received carries the key define in Serving's own .bazelrc.
    assert f"build --define=MODEL_ENCRYPT_KEY={KEY.decode()}\n" in str(devel_call["context_bazelrc"])
    assert devel_call["context_has_tensorflow"] and not devel_call["context_has_git"]
    assert devel_call["BUILDKIT_PROGRESS"] == "plain"
    assert not Path(ctx).exists()  # staged folder removed afterwards
    assert "registry.example.com/ml/tensorflow-serving:2.18.0" in res.out


def test_build_all_gpu_commands_and_no_key_in_any_argument(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.18.0", "--all")
    assert res.code == 0, res.err
    argv = build_calls(standin)
    tags = [a[a.index("--tag") + 1] for a in argv]
    assert tags == ["tensorflow-serving:2.18.0-devel", "tensorflow-serving:2.18.0",
                    "tensorflow-serving:2.18.0-devel-gpu", "tensorflow-serving:2.18.0-gpu"]
    files = [Path(a[a.index("--file") + 1]).name for a in argv]
    assert files == ["Dockerfile.devel", "Dockerfile", "Dockerfile.devel-gpu", "Dockerfile.gpu"]
    assert "TF_SERVING_BUILD_IMAGE=tensorflow-serving:2.18.0-devel-gpu" in argv[3]
    everything = json.dumps([c["argv"] for c in calls(standin)]).encode()
    assert not any(form in everything for form in key_forms())
    assert KEY.decode() not in res.out + res.err


def test_build_buildx_with_builder_and_cache(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.18.0", "--gpu", "--builder", "ci", "--cache-from", "type=registry,ref=r/c:gpu",
                  "--cache-to", "type=registry,ref=r/c:gpu,mode=max")
    assert res.code == 0, res.err
    devel, serving = build_calls(standin)
    front = ["buildx", "build", "--builder", "ci", "--load", "--progress=plain"]
    assert devel[:10] == [*front, "--cache-from", "type=registry,ref=r/c:gpu",
                          "--cache-to", "type=registry,ref=r/c:gpu,mode=max"]
    assert devel[10] == "--file" and devel[11].endswith("/Dockerfile.devel-gpu")
    assert devel[12:14] == ["--tag", "tensorflow-serving:2.18.0-devel-gpu"]
    assert serving[:6] == front and "--cache-to" not in serving  # the cache is the devel build's
    assert serving[serving.index("--tag") + 1] == "tensorflow-serving:2.18.0-gpu"


def test_build_dry_run_prints_commands_and_runs_no_docker(ws: sb_mod.Sandbox, standin: Path) -> None:
    (standin / "config.json").write_text(json.dumps({"engine": False}))
    res = run_cli("build", "2.4.7", "--dry-run", "--all", "--keep")
    assert res.code == 0, res.err
    assert calls(standin) == []  # not even `docker version`
    staged = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        assert "docker build --file" in res.out and res.out.count("docker build") == 4
        assert f"{staged}/context/{DOCKER_DIR}/Dockerfile.devel-gpu" in res.out
        assert stat.S_IMODE(staged.stat().st_mode) == 0o700
        assert "kept the staged folder" in res.out
    finally:
        shutil.rmtree(staged)


def test_build_failure_shows_log_tail_and_removes_stage(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    (standin / "config.json").write_text(json.dumps({"fail_tags": ["tensorflow-serving:2.18.0-devel"]}))
    res = run_cli("build", "2.18.0")
    assert res.code == 3
    assert "did not complete successfully" in res.err  # the tail of the build log
    log = Path(re.search(r"full log: (\S+\.log)", res.err).group(1))  # type: ignore[union-attr]
    assert "ERROR: failed to solve" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert len(build_calls(standin)) == 1  # the serving image is not attempted
    assert not any(p.name.startswith("forkops-build-") and p.is_dir() for p in (tmp_path / "tmp").iterdir())


def test_build_without_engine_exits_3_before_staging(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    (standin / "config.json").write_text(json.dumps({"engine": False}))
    res = run_cli("build", "2.18.0")
    assert res.code == 3
    assert res.err.strip().splitlines() == [
        "forkops: error: no Docker engine is reachable: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running?"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_build_missing_branch_is_bad_input(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.99.0", "--dry-run")
    assert res.code == 2 and "no branch b2.99.0" in res.err


def start_slow_build(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path, **popen: Any) -> subprocess.Popen[Any]:
    """Start `forkops build 2.18.0` as a real process whose stand-in docker hangs in `build` until
    it is killed, and return once staging is done and `docker build` runs (so a test can interrupt
    it). Events, not durations: a loaded machine makes it slower, never wrong."""
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "docker").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = build ]; then echo started; touch {standin}/build-started; '
        f'while [ ! -e {standin}/build-release ]; do sleep 0.05; done; exit 1; fi\n'
        f'exec {sys.executable} {STANDINS}/docker "$@"\n')
    (slow / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{slow}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": SOURCE}
    proc = subprocess.Popen([sys.executable, "-m", "forkops", "build", "2.18.0"], cwd=ws.workspace, env=env,
                            **popen)
    deadline = time.monotonic() + 600  # a safety net only: the loop ends on the marker or on exit
    try:
        while not (standin / "build-started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the build did not reach docker build"
            time.sleep(0.05)
    except BaseException:
        (standin / "build-release").touch()
        if popen.get("start_new_session"):
            os.killpg(proc.pid, 9)
        else:
            proc.kill()
        proc.wait()
        raise
    return proc


def test_build_interrupt_removes_stage(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    """SIGINT during `docker build` (a real subprocess): the staged folder with the key is removed."""
    # A shell starts background jobs with SIGINT ignored (CI launched with `&`), and Python then
    # installs no KeyboardInterrupt handler: give the child the terminal's default, as a user's has.
    proc = start_slow_build(ws, standin, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert any(p.is_dir() for p in (tmp_path / "tmp").iterdir())
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=600)  # forkops terminates the hanging docker build itself
    finally:
        (standin / "build-release").touch()  # a forkops that did not: end the stand-in anyway
    assert proc.returncode == 130, err
    assert err.endswith("forkops: interrupted\n")
    left = [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()]
    assert left == []


# ---------------------------------------------------------------------------------------
# carried patches: missing tools are exit 3, a patch that does not apply is exit 1
# ---------------------------------------------------------------------------------------
def patch_trees(tmp_path: Path, patch_text: str) -> tuple[Path, Path, build.CarriedPatches]:
    serving, tf = tmp_path / "serving", tmp_path / "tf"
    (serving / "third_party/tensorflow").mkdir(parents=True)
    tf.mkdir()
    (tf / "README.md").write_text("one\ntwo\nthree\n")
    (serving / "third_party/tensorflow/tensorflow.patch").write_text(patch_text)
    return serving, tf, build.CarriedPatches((("third_party/tensorflow/tensorflow.patch", ("-p1",)),))


def test_missing_patch_or_bash_is_an_external_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serving, tf, carried = patch_trees(tmp_path, "")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # neither patch nor bash can be found
    with pytest.raises(ExternalError, match=r"^patch is not installed") as err:
        build.apply_carried(carried, serving_root=serving, tf_root=tf, path="WORKSPACE")
    assert err.value.exit_code == 3
    with pytest.raises(ExternalError, match=r"^bash is not installed"):
        build.apply_carried(build.CarriedPatches((), ("true",)), serving_root=serving, tf_root=tf, path="WORKSPACE")


def test_patch_that_does_not_apply_names_file_and_first_failing_hunk(tmp_path: Path) -> None:
    stale = ("--- a/README.md\n+++ b/README.md\n@@ -1,3 +1,3 @@\n one\n-zwei\n+two and a half\n three\n"
             "@@ -10,2 +10,2 @@\n-ten\n+TEN\n eleven\n")
    serving, tf, carried = patch_trees(tmp_path, stale)
    with pytest.raises(NeedsPerson) as err:
        build.apply_carried(carried, serving_root=serving, tf_root=tf, path="WORKSPACE")
    assert err.value.exit_code == 1
    assert err.value.message == ("WORKSPACE: patch third_party/tensorflow/tensorflow.patch does not apply to the "
                                 "TensorFlow fork: README.md: Hunk #1 FAILED at 1.")
    assert (tf / "README.md").read_text() == "one\ntwo\nthree\n"


def test_build_with_stale_serving_patch_exits_1(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    sv = ws.clone("serving")
    stale = "--- a/README.md\n+++ b/README.md\n@@ -1,1 +1,1 @@\n-No such line in the fork\n+Patched\n"
    git(sv, "checkout", "-q", "b2.18.0")
    (sv / "third_party/tensorflow/tensorflow.patch").write_text(stale)
    git(sv, "commit", "-q", "-am", "a patch that no longer applies")
    git(sv, "checkout", "-q", "b2.4.0")
    res = run_cli("build", "2.18.0")
    assert res.code == 1, res.err
    assert "patch third_party/tensorflow/tensorflow.patch does not apply" in res.err
    assert "README.md: Hunk #1 FAILED" in res.err
    assert build_calls(standin) == []
    assert [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()] == []


# ---------------------------------------------------------------------------------------
# the key define reaches the Serving build's own .bazelrc
# ---------------------------------------------------------------------------------------
def test_key_define_appended_to_existing_serving_bazelrc(ws: sb_mod.Sandbox, standin: Path) -> None:
    sv = ws.clone("serving")
    serving_rc = "# Serving's own options\nbuild --action_env=PYTHON_BIN_PATH=/usr/bin/python3\nbuild -c opt"
    git(sv, "checkout", "-q", "b2.18.0")
    (sv / ".bazelrc").write_text(serving_rc)  # no final newline: the define must still be its own line
    git(sv, "add", ".bazelrc")
    git(sv, "commit", "-q", "-m", "serving .bazelrc")
    git(sv, "checkout", "-q", "b2.4.0")
    before = {p: snapshot(p) for p in (ws.clone("tensorflow"), sv)}
    res = run_cli("build", "2.18.0")
    assert res.code == 0, res.err
    assert "--define=MODEL_ENCRYPT_KEY to the staged Serving tree" in res.out
    rc = str(next(c for c in calls(standin) if "build" in c["argv"][:2])["context_bazelrc"])
    assert rc.startswith(serving_rc + "\n")
    assert rc.splitlines()[-1] == f"build --define=MODEL_ENCRYPT_KEY={KEY.decode()}"
    for repo, snap in before.items():  # the user's checkouts: untouched, no key anywhere
        assert snapshot(repo) == snap and files_with_key(repo) == []
    everything = json.dumps([c["argv"] for c in calls(standin)]).encode()
    assert not any(form in everything for form in key_forms())
    assert KEY.decode() not in res.out + res.err


def test_hex_key_cannot_be_a_serving_define(tmp_path: Path) -> None:
    from forkops import keyfile

    tf, serving = tmp_path / "tf", tmp_path / "serving"
    tf.mkdir()
    serving.mkdir()
    (tf / ".bazelrc").write_text("build --define=MODEL_ENCRYPT_KEY=placeholder\n")
    (serving / ".bazelrc").write_text("build -c opt\n")
    hexed = keyfile.KeyMaterial("aes-128-cbc", bytes(range(0x80, 0x90)), keyfile.DEFAULT_IV, None, key_is_hex=True)
    with pytest.raises(ConfigError) as err:
        build.carry_bazel_defines(tf, serving, load_playbook("tensorflow"), hexed)
    assert err.value.message.startswith(".bazelrc:1: key site 'bazelrc key define' refused: a Bazel define")
    assert (serving / ".bazelrc").read_text() == "build -c opt\n"  # nothing written
    assert bytes(range(0x80, 0x90)).hex() not in err.value.message


# ---------------------------------------------------------------------------------------
# the build log never holds the key
# ---------------------------------------------------------------------------------------
def announce_rc(value: str) -> str:
    return ("INFO: Reading rc options for 'build' from /tensorflow-serving/.bazelrc: 'build' options: "
            f"--define=grpc_no_ares=true --define=MODEL_ENCRYPT_KEY={value} --copt=-O2")


def test_redactor_replaces_every_encoding_with_the_fingerprint() -> None:
    from forkops import keyfile
    from forkops.secrets import Matcher

    iv = b"Iv-0123456789abc"
    mat = keyfile.KeyMaterial("aes-128-cbc", KEY, iv, None)
    from forkops.secrets import StreamRedactor

    fp, ivfp = mat.key_fingerprint, mat.iv_fingerprint
    arr = ", ".join(f"0x{b:02X}" for b in KEY)
    lines = {
        announce_rc(KEY.decode()): announce_rc(f"<key {fp}>"),
        f"key hex {KEY.hex().upper()} end": f"key hex <key {fp}> end",
        f"spaced {' '.join(KEY.hex()[i:i + 2] for i in range(0, 32, 2))}.": f"spaced <key {fp}>.",
        f"cc:12: static const char kKey[] = {{{arr}}};": f"cc:12: static const char kKey[] = {{<key {fp}>}};",
        "esc " + "".join(f"\\x{b:02x}" for b in KEY) + " and iv " + iv.decode():
            f"esc <key {fp}> and iv <iv {ivfp}>",
        "decimal = {" + ",".join(str(b) for b in KEY) + "}": f"decimal = {{<key {fp}>}}",
        "uint8 kKey " + ",\t ".join(str(b) for b in KEY) + ";": f"uint8 kKey <key {fp}>;",
        "#5 DONE 0.1s": "#5 DONE 0.1s",
    }
    for line, want in lines.items():
        redact = StreamRedactor(mat)
        got = b"".join([*redact.feed((line + "\n").encode()), *redact.flush()])
        assert got == (want + "\n").encode(), line
        assert Matcher(mat).find(got) == []


def test_run_builds_redacts_log_status_and_tail(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    from forkops.docker import Docker
    from forkops.secrets import Matcher

    (standin / "config.json").write_text(json.dumps({
        "build_lines": [announce_rc(KEY.decode()), f"ERROR: key {KEY.hex()} rejected",
                        # a tool that wrapped the key over two output lines
                        f"cc: note: {KEY.hex()[:16]}", f"{KEY.hex()[16:]} <- here"],
        "fail_tags": ["tensorflow-serving:2.18.0-devel"]}))
    mat = material()
    step = build.BuildStep("cpu", "devel", "tensorflow-serving:2.18.0-devel",
                           ("build", "--tag", "tensorflow-serving:2.18.0-devel", str(tmp_path)))
    log = tmp_path / "build.log"
    seen: list[str] = []
    with pytest.raises(build.BuildFailed) as err:
        build.run_builds(Docker(), [step], log=log, material=mat,  # type: ignore[arg-type]
                         on_line=lambda _s, _i, line: seen.append(line))
    fp = mat.key_fingerprint  # type: ignore[attr-defined]
    assert seen[0] == announce_rc(f"<key {fp}>") and seen[1] == f"ERROR: key <key {fp}> rejected"
    assert err.value.tail[:2] == seen[:2]
    matcher = Matcher(mat)  # type: ignore[arg-type]
    for text in (log.read_text(), "\n".join(seen), "\n".join(err.value.tail), str(err.value)):
        assert matcher.find(text.encode()) == [] and f"<key {fp}>" in log.read_text()
        assert KEY.hex()[:16] not in text and KEY.hex()[16:] not in text  # split halves masked too


def test_build_failure_output_and_log_never_hold_the_key(ws: sb_mod.Sandbox, standin: Path) -> None:
    from forkops.secrets import Matcher

    (standin / "config.json").write_text(json.dumps({
        "build_lines": ["#1 [internal] load build definition", announce_rc(KEY.decode())],
        "fail_tags": ["tensorflow-serving:2.18.0-devel"]}))
    res = run_cli("build", "2.18.0")
    assert res.code == 3
    log = Path(re.search(r"full log: (\S+\.log)", res.err).group(1))  # type: ignore[union-attr]
    text = log.read_text()
    fp = material().key_fingerprint  # type: ignore[attr-defined]
    assert announce_rc(f"<key {fp}>") in text  # the line is there, the key is not
    assert announce_rc(f"<key {fp}>") in " ".join(res.err.split())  # in the failure tail
    matcher = Matcher(material())  # type: ignore[arg-type]
    for data in (text, res.out, res.err):
        assert matcher.find(data.encode()) == []
        assert not any(form in data.encode() for form in key_forms())


# ---------------------------------------------------------------------------------------
# staging folders left by a killed build
# ---------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_stages_only_removes_folders_of_dead_builds(tmp_path: Path) -> None:
    def folder(name: str, owner: str | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "secret").write_bytes(KEY)
        if owner is not None:
            (path / build.OWNER_FILE).write_text(owner)
        return path

    me = f"{os.getpid()} {build._start_time(os.getpid())}\n"
    dead = folder("forkops-build-dead", f"{dead_pid()} -\n")
    recycled = folder("forkops-build-recycled", f"{os.getpid()} 1\n")  # our pid, another start time
    alive = folder("forkops-build-alive", me)
    kept = folder("forkops-build-kept", "kept\n")
    unknown = folder("forkops-build-noowner", None)
    other = folder("someone-else", f"{dead_pid()} -\n")
    (tmp_path / "forkops-build-2.18.0-x.log").write_text("a log file, not a staging folder")
    removed = build.remove_stale_stages(tmp_path)
    assert sorted(removed) == sorted([dead, recycled])
    assert not dead.exists() and not recycled.exists()
    assert all(p.exists() for p in (alive, kept, unknown, other, tmp_path / "forkops-build-2.18.0-x.log"))


def test_killed_build_folder_is_removed_by_the_next_build(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    """kill -9 cannot be caught: the folder with the key stays until the next build removes it."""
    proc = start_slow_build(ws, standin, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.killpg(proc.pid, 9)  # the build and its stand-in docker child: the group started here
    proc.wait()
    left = [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()]
    assert len(left) == 1 and left[0].name.startswith("forkops-build-")
    assert files_with_key(left[0])  # the key really was left behind
    res = run_cli("build", "2.18.0", "--dry-run")
    assert res.code == 0, res.err
    assert not left[0].exists()
    assert f"removed 1 staging folder(s) left by killed builds: {left[0]}" in " ".join(res.out.split())
    assert [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()] == []


def test_kept_stage_survives_the_next_build(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    res = run_cli("build", "2.18.0", "--dry-run", "--keep")
    assert res.code == 0, res.err
    kept = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        assert (kept / build.OWNER_FILE).read_text() == "kept\n"
        assert run_cli("build", "2.18.0", "--dry-run").code == 0
        assert kept.exists()
    finally:
        shutil.rmtree(kept)


# ---------------------------------------------------------------------------------------
# the public fork's shape: ReadBinaryProto dlopen()s the library, the Serving image ADDs it
# ---------------------------------------------------------------------------------------
def upgrade_resolving(ws: Path, version: str, shape: sb_mod.Shape) -> None:
    """`forkops upgrade VERSION` in ``ws``, resolving each stop the way the sandbox defines."""
    res = run_cli("upgrade", version)
    for _ in range(8):
        if res.code != 1:
            break
        for name in ("tensorflow", "serving"):
            repo = ws / name
            if not (repo / ".git").exists():
                continue
            for path in git(repo, "diff", "--name-only", "--diff-filter=U").split():
                def side(n: int, path: str = path, repo: Path = repo) -> str | None:
                    proc = subprocess.run(["git", "-C", str(repo), "show", f":{n}:{path}"], capture_output=True,
                                          text=True)
                    return proc.stdout if proc.returncode == 0 else None

                text = sb_mod.resolve(name, path, ours=side(2), theirs=side(3), shape=shape)
                assert text is not None
                (repo / path).write_text(text)
                git(repo, "add", path)
        res = run_cli("upgrade", "--continue")
    assert res.code == 0, res.out + res.err


def secret_forms(mat: Any) -> list[bytes]:
    """The key in every encoding the guard knows, as bytes to look for (test data)."""
    return [mat.key, mat.key.hex().encode(), mat.key.hex().upper().encode(),
            keys.encode(mat.key, "c-bytes").encode(), keys.encode(mat.key, "c-string").encode(),
            "".join(f"\\x{b:02x}" for b in mat.key).encode()]


def holds_key(data: bytes, mat: Any) -> bool:
    from forkops.secrets import Matcher

    return bool(Matcher(mat).find(data)) or any(f in data for f in secret_forms(mat))


@pytest.fixture
def dlopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace made by `forkops init` from dlopen-shaped forks, with a keys file."""
    sb = sb_mod.build(tmp_path / "sb", shape="dlopen", clone=False)
    ws = tmp_path / "ws"
    args = ["init", str(ws)]
    for name in ("tensorflow", "serving"):
        args += [f"--{name}-origin", str(sb.origin[name]), f"--{name}-upstream", sb.upstream_url(name)]
    res = run_cli(*args)
    assert res.code == 0, res.err
    assert "tensorflow: playbook tensorflow-dlopen: ReadBinaryProto in" in res.out
    write_keys(ws)
    monkeypatch.chdir(ws)
    return ws


def test_dlopen_fork_init_upgrade_build_dry_run(dlopen: Path, standin: Path, tmp_path: Path) -> None:
    from forkops import cryptlib

    mat = material()
    # set-key on this shape: no key site to write, so it says where the key goes, installs the
    # guard in both clones anyway (it needs only keys.toml) and exits 0.
    res = run_cli("set-key")
    assert res.code == 0, res.out + res.err
    assert "libcryptfile.so" in " ".join(res.out.split())
    for name in ("tensorflow", "serving"):
        hooks = dlopen / name / ".git" / "hooks"
        assert (hooks / "commit-msg").is_file() and (hooks / "pre-push").is_file(), name
    assert not holds_key((res.out + res.err).encode(), mat)
    upgrade_resolving(dlopen, "2.18.0", "dlopen")
    # The decryption patch followed ReadBinaryProto to where 2.18 compiles it.
    xla = git(dlopen / "tensorflow", "show", f"b2.18.0:{sb_mod.TF_XLA_TSL}")
    assert 'dlopen("/opt/lib/libcryptfile.so"' in xla and "CBCMode_Decrypt" in xla
    res = run_cli("build", "2.18.0", "--all", "--dry-run", "--keep")
    assert res.code == 0, res.err
    staged = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        ctx = staged / "context"
        for name in ("Dockerfile", "Dockerfile.gpu"):
            text = (ctx / DOCKER_DIR / name).read_text()
            assert "ENCRYPT_FILE_URL" not in text and "ADD ${" not in text  # no download of somebody's library
            assert ("RUN --mount=type=secret,id=forkops_cryptfile_key,target=/run/secrets/cryptfile_key.h,"
                    "required=true") in text
            assert "-include /run/secrets/cryptfile_key.h /forkops/cryptfile.c -lcrypto" in text
            assert "COPY forkops_cryptlib/cryptfile.c /forkops/cryptfile.c" in text
            final = text.split("FROM ", 3)[-1]  # the last stage receives the library
            assert "COPY --from=forkops_cryptlib /forkops/out/ /opt/lib/" in final
            assert text.index("AS forkops_cryptlib") < text.index("COPY --from=forkops_cryptlib")
        assert (ctx / "forkops_cryptlib/cryptfile.c").read_bytes() == cryptlib.SOURCE.read_bytes()
        # The key: only in the secret, 0600, in the 0700 folder beside the context.
        with_key = sorted(str(p.relative_to(staged)) for p in staged.rglob("*")
                          if p.is_file() and holds_key(p.read_bytes(), mat))
        assert with_key == ["secrets/cryptfile_key.h"]
        secret = staged / "secrets/cryptfile_key.h"
        assert secret.read_bytes() == cryptlib.key_header(mat)  # type: ignore[arg-type]
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE((staged / "secrets").stat().st_mode) == 0o700
        assert stat.S_IMODE(staged.stat().st_mode) == 0o700
        # The commands: the secret by path on the serving builds only (BuildKit), no key in any.
        lines = [x.strip() for x in res.out.splitlines() if "docker build" in x]
        assert len(lines) == 4
        for line in lines:
            is_serving = "--tag tensorflow-serving:2.18.0-devel" not in line
            assert (f"--secret id=forkops_cryptfile_key,src={secret}" in line) == is_serving
            assert line.startswith("DOCKER_BUILDKIT=1 docker build") == is_serving
        assert not holds_key((res.out + res.err).encode(), mat)
        assert "no key site" not in res.out and "decryption library /opt/lib/libcryptfile.so: compiled" in res.out
    finally:
        shutil.rmtree(staged)


def test_dlopen_staged_library_stage_really_compiles_with_the_secret(dlopen: Path, standin: Path,
                                                                     tmp_path: Path) -> None:
    """Run the staged stage's compile RUN here (gcc + libssl-dev, the paths mapped onto the
    staging folder): the library it makes decrypts what `forkops encrypt` wrote."""
    import ctypes

    mat = material()
    res = run_cli("build", "2.4.0", "--dry-run", "--keep")
    assert res.code == 0, res.err
    staged = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        text = (staged / "context" / DOCKER_DIR / "Dockerfile").read_text()
        run = next(i.text for i in build.instructions(text) if i.text.startswith("RUN --mount=type=secret"))
        shell = run.split(" ", 2)[2]  # after "RUN --mount=..."
        out = tmp_path / "out"
        shell = (shell.replace("/run/secrets/cryptfile_key.h", str(staged / "secrets/cryptfile_key.h"))
                 .replace("/forkops/cryptfile.c", str(staged / "context/forkops_cryptlib/cryptfile.c"))
                 .replace("/forkops/out", str(out)))
        subprocess.run(["sh", "-c", shell], check=True, capture_output=True)
        assert run_cli("encrypt", sb_mod.__file__, "-o", str(tmp_path / "enc"), "--raw").code == 0
        lib = ctypes.CDLL(str(out / "libcryptfile.so"))
        lib.CBCMode_Decrypt.restype = ctypes.c_ulong
        lib.CBCMode_Decrypt.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_ulong]
        cipher = (tmp_path / "enc").read_bytes()
        plain = ctypes.c_char_p()
        n = lib.CBCMode_Decrypt(cipher, ctypes.byref(plain), len(cipher))
        assert ctypes.string_at(plain, n) == Path(sb_mod.__file__).read_bytes()
        assert not holds_key(shell.encode(), mat)  # the command line holds a path, never the key
    finally:
        shutil.rmtree(staged)


def test_dlopen_build_runs_serving_with_the_secret_and_buildkit(dlopen: Path, standin: Path) -> None:
    res = run_cli("build", "2.4.0", "--registry", "r.example/ml")
    assert res.code == 0, res.err
    devel, serving = [c for c in calls(standin) if "build" in c["argv"][:2]]
    assert devel["DOCKER_BUILDKIT"] is None and "--secret" not in devel["argv"]
    assert serving["DOCKER_BUILDKIT"] == "1"
    argv = serving["argv"]
    secret = argv[argv.index("--secret") + 1]
    assert re.fullmatch(r"id=forkops_cryptfile_key,src=\S+/secrets/cryptfile_key\.h", secret)
    context = Path(argv[-1])
    assert Path(secret.split("src=")[1]).parent.parent == context.parent  # beside the context, not in it
    assert "COPY --from=forkops_cryptlib" in str(serving["dockerfile_text"])
    everything = json.dumps([[c["argv"], c["env"]] for c in calls(standin)]).encode()  # command lines, environment
    assert not holds_key(everything, material())
    assert not context.parent.exists()  # the staging folder with the secret is gone


def test_cryptlib_option_ships_the_users_library_as_a_secret(dlopen: Path, standin: Path, tmp_path: Path) -> None:
    lib = tmp_path / "libcryptfile.so"
    lib.write_bytes(b"\x7fELF users library with the key " + KEY)
    res = run_cli("build", "2.4.0", "--dry-run", "--keep", "--cryptlib", str(lib))
    assert res.code == 0, res.err
    staged = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        text = (staged / "context" / DOCKER_DIR / "Dockerfile").read_text()
        assert "RUN --mount=type=secret,id=forkops_cryptlib,target=/run/secrets/libcryptfile.so" in text
        assert "gcc" not in text and not (staged / "context/forkops_cryptlib").exists()
        assert (staged / "secrets/libcryptfile.so").read_bytes() == lib.read_bytes()
        assert f"--secret id=forkops_cryptlib,src={staged}/secrets/libcryptfile.so" in res.out
        assert [p for p in (staged / "context").rglob("*") if p.is_file() and KEY in p.read_bytes()] == []
    finally:
        shutil.rmtree(staged)


def test_cryptlib_option_on_a_key_site_fork_is_bad_input(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path) -> None:
    lib = tmp_path / "libcryptfile.so"
    lib.write_bytes(b"\x7fELF")
    res = run_cli("build", "2.18.0", "--dry-run", "--cryptlib", str(lib))
    assert res.code == 2 and "--cryptlib: these forks have no decryption library" in res.err
    assert [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()] == []
    res = run_cli("build", "2.18.0", "--dry-run", "--cryptlib", str(tmp_path / "missing.so"))
    assert res.code == 2 and "no such file" in res.err


def test_library_stage_rewrite_of_a_copied_library_and_a_file_without_one() -> None:
    text = ("ARG BASE=ubuntu:22.04\nFROM ${BASE} AS base\nRUN true\nFROM ubuntu:22.04\n"
            "COPY --chown=0:0 third_party/libcryptfile.so /opt/lib/libcryptfile.so\nCMD [\"x\"]\n")
    rw = build.add_library_stage(text, SPEC, "Dockerfile", library="/opt/lib/libcryptfile.so", mode="compile",
                                 compile_argv=["gcc", "x.c"])
    assert rw.replaced == ("COPY --chown=0:0 third_party/libcryptfile.so /opt/lib/libcryptfile.so",)
    assert rw.text.startswith("ARG BASE=ubuntu:22.04\n")  # global ARGs stay first
    assert "FROM ubuntu:22.04 AS forkops_cryptlib" in rw.text  # the receiving stage's base image
    assert "third_party/libcryptfile.so" not in rw.text
    plain = "FROM ubuntu:22.04\nCMD [\"x\"]"
    rw = build.add_library_stage(plain, SPEC, "Dockerfile", library="/usr/lib/crypt/libx.so", mode="prebuilt",
                                 compile_argv=[])
    assert rw.replaced == () and rw.text.endswith("COPY --from=forkops_cryptlib /forkops/out/ /usr/lib/crypt/\n")
    assert "cp /run/secrets/libx.so /forkops/out/libx.so" in rw.text
    flagged = "FROM ubuntu:22.04\nADD --chmod=755 https://x.example/libcryptfile.so /opt/lib/libcryptfile.so\n"
    rw = build.add_library_stage(flagged, SPEC, "Dockerfile", library="/opt/lib/libcryptfile.so", mode="compile",
                                 compile_argv=["gcc"])
    assert len(rw.replaced) == 1 and "x.example" not in rw.text
    # An ARG another instruction still uses stays.
    shared = ("FROM ubuntu:22.04\nARG ENCRYPT_FILE_URL=https://x/libcryptfile.so\n"
              "ADD ${ENCRYPT_FILE_URL} /opt/lib/libcryptfile.so\nLABEL source=${ENCRYPT_FILE_URL}\n")
    rw = build.add_library_stage(shared, SPEC, "Dockerfile", library="/opt/lib/libcryptfile.so", mode="compile",
                                 compile_argv=["gcc"])
    assert rw.dropped_args == () and "ARG ENCRYPT_FILE_URL" in rw.text


# ---------------------------------------------------------------------------------------
# builds at scale: Bazel options, remote cache, push; no key in any build arg
# ---------------------------------------------------------------------------------------
def test_bazel_options_remote_cache_and_push(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.18.0", "--all", "--registry", "r.example/ml", "--remote-cache", "grpc://cache:9092",
                  "--bazel-option=--jobs=200", "--bazel-option", "--remote_timeout=600", "--push")
    assert res.code == 0, res.err
    argv = [c["argv"] for c in calls(standin) if c["argv"][0] != "version"]
    kinds = [(a[0], a[a.index("--tag") + 1] if "--tag" in a else a[-1]) for a in argv]
    assert kinds == [("build", "r.example/ml/tensorflow-serving:2.18.0-devel"),
                     ("build", "r.example/ml/tensorflow-serving:2.18.0"),
                     ("push", "r.example/ml/tensorflow-serving:2.18.0"),
                     ("build", "r.example/ml/tensorflow-serving:2.18.0-devel-gpu"),
                     ("build", "r.example/ml/tensorflow-serving:2.18.0-gpu"),
                     ("push", "r.example/ml/tensorflow-serving:2.18.0-gpu")]  # never the devel image
    opts = "TF_SERVING_BAZEL_OPTIONS=--remote_cache=grpc://cache:9092 --jobs=200 --remote_timeout=600"
    assert opts in argv[0] and opts in argv[3]
    assert not any(a.startswith("TF_SERVING_BAZEL_OPTIONS") for a in argv[1])
    assert "pushed r.example/ml/tensorflow-serving:2.18.0-gpu" in res.out


def test_every_build_arg_is_free_of_the_key(ws: sb_mod.Sandbox, standin: Path) -> None:
    res = run_cli("build", "2.18.0", "--all", "--bazel-option=--jobs=8", "--remote-cache", "https://c.example")
    assert res.code == 0, res.err
    build_args = [a[i + 1] for a in build_calls(standin) for i, x in enumerate(a) if x == "--build-arg"]
    assert len(build_args) == 4 * 2 + 2 + 2  # branch+commit per build, devel image per serving, options per devel
    assert not holds_key("\n".join(build_args).encode(), material())


@pytest.mark.parametrize(("args", "message"), [
    (["--bazel-option", f"--define=MODEL_ENCRYPT_KEY={KEY.decode()}"], "--bazel-option: holds key material"),
    (["--bazel-option", f"--action_env=K={KEY.hex()}"], "--bazel-option: holds key material"),
    (["--bazel-option", "--jobs 8"], "one Bazel option per --bazel-option"),
    (["--remote-cache", "https://user:token@cache.example.com"], "a URL with credentials"),
    (["--remote-cache", "cache:9092"], "expected a URL"),
    (["--push"], "--push needs --registry"),
])
def test_refused_build_options_change_nothing(ws: sb_mod.Sandbox, standin: Path, tmp_path: Path, args: list[str],
                                             message: str) -> None:
    res = run_cli("build", "2.18.0", *args)
    assert res.code == 2 and message in res.err, res.err
    assert len(res.err.strip().splitlines()) <= 2  # the error (and a hint)
    assert KEY.decode() not in res.err and KEY.hex() not in res.err
    assert calls(standin) == [] and list((tmp_path / "tmp").iterdir()) == []


def test_push_failure_is_exit_3_after_the_serving_build(ws: sb_mod.Sandbox, standin: Path) -> None:
    (standin / "config.json").write_text(json.dumps({"fail_push": ["r.example/ml/tensorflow-serving:2.18.0"]}))
    res = run_cli("build", "2.18.0", "--registry", "r.example/ml", "--push")
    assert res.code == 3
    assert "docker push of r.example/ml/tensorflow-serving:2.18.0 failed" in " ".join(res.err.split())


# ---------------------------------------------------------------------------------------
# roles: declared in the playbooks, never guessed
# ---------------------------------------------------------------------------------------
def test_a_third_fork_changes_nothing(ws: sb_mod.Sandbox, standin: Path) -> None:
    """A third repository (another TensorFlow-like fork without a role) must not change the build."""
    before = run_cli("build", "2.18.0", "--dry-run")
    assert before.code == 0, before.err
    pb = ws.workspace / "crypt.toml"
    pb.write_text((Path(build.__file__).parents[2] / "playbooks/tensorflow.toml").read_text()
                  .replace('name = "tensorflow"', 'name = "crypt-tool"').replace('role = "tensorflow"', ""))
    subprocess.run(["git", "clone", "-q", str(ws.origin["tensorflow"]), str(ws.workspace / "crypt")], check=True)
    git(ws.workspace / "crypt", "branch", "b2.18.0", "b2.4.0")
    with (ws.workspace / "forkops.toml").open("a") as fh:
        fh.write(f'\n[repos.crypt]\npath = "crypt"\norigin = "{ws.origin["tensorflow"]}"\n'
                 f'upstream = "{ws.upstream_url("tensorflow")}"\nplaybook = "crypt.toml"\n')
    after = run_cli("build", "2.18.0", "--dry-run")
    assert after.code == 0, after.err

    def normal(text: str) -> list[str]:
        return [re.sub(r"forkops-build-\w+", "STAGE", x) for x in text.splitlines()]

    assert normal(after.out) == normal(before.out)


def test_two_serving_roles_is_bad_input(ws: sb_mod.Sandbox, standin: Path) -> None:
    with (ws.workspace / "forkops.toml").open("a") as fh:
        fh.write(f'\n[repos.serving2]\npath = "serving"\norigin = "{ws.origin["serving"]}"\n'
                 f'upstream = "{ws.upstream_url("serving")}"\nplaybook = "serving"\n')
    res = run_cli("build", "2.18.0", "--dry-run")
    assert res.code == 2 and 'several repositories have role = "serving" (serving, serving2)' in res.err


def test_a_build_playbook_without_a_role_is_refused_not_guessed(ws: sb_mod.Sandbox, standin: Path) -> None:
    mine = ws.workspace / "my-serving.toml"
    mine.write_text((Path(build.__file__).parents[2] / "playbooks/serving.toml").read_text()
                    .replace('role = "serving"', ""))
    text = (ws.workspace / "forkops.toml").read_text()
    (ws.workspace / "forkops.toml").write_text(text.replace('playbook = "serving"', 'playbook = "my-serving.toml"'))
    res = run_cli("build", "2.18.0", "--dry-run")
    assert res.code == 2
    assert res.err.splitlines() == ["forkops: error: serving: its playbook 'my-serving.toml' has [build] but no role",
                                    'forkops: hint: add role = "serving" at its top (the fork it builds against has '
                                    'role = "tensorflow")']


def test_dlopen_hex_key_and_custom_iv_stay_in_the_secret(dlopen: Path, standin: Path) -> None:
    """A full-entropy key_hex key and a non-default IV: in the secret only, nowhere in the context."""
    from forkops import keyfile

    (dlopen / "keys.toml").write_text('[model]\ncipher = "aes-256-cbc"\n'
                                      f'key_hex = "{bytes(range(0xa0, 0xc0)).hex()}"\n'
                                      f'iv_hex = "{bytes(range(0x10, 0x20)).hex()}"\n')
    mat = keyfile.load(dlopen / "keys.toml")
    res = run_cli("build", "2.4.0", "--all", "--dry-run", "--keep")
    assert res.code == 0, res.err
    staged = Path(re.search(r"staged folder: (\S+)", res.out).group(1))  # type: ignore[union-attr]
    try:
        secret = staged / "secrets/cryptfile_key.h"
        assert "CRYPTFILE_KEY_LEN 32" in secret.read_text()
        assert holds_key(secret.read_bytes(), mat)
        for path in (staged / "context").rglob("*"):
            if path.is_file():
                assert not holds_key(path.read_bytes(), mat), path
        assert not holds_key((res.out + res.err).encode(), mat)
    finally:
        shutil.rmtree(staged)
