"""``forkops init``: writes forkops.toml and clones the forks (local paths only, no network)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from forkops import workspace
from forkops.sandbox import Sandbox
from tests.clihelp import run_cli
from tests.gitutil import git


def test_init_writes_config_and_clones(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    res = run_cli("init", str(ws), "--tensorflow-origin", str(sandbox.origin["tensorflow"]),
                  "--serving-origin", str(sandbox.origin["serving"]),
                  "--tensorflow-upstream", sandbox.upstream_url("tensorflow"),
                  "--serving-upstream", sandbox.upstream_url("serving"))
    assert res.code == 0, res.err
    loaded = workspace.load_file(ws / "forkops.toml")
    assert [(r.name, r.origin, r.upstream, r.playbook) for r in loaded.repos] == [
        ("tensorflow", str(sandbox.origin["tensorflow"]), sandbox.upstream_url("tensorflow"), "tensorflow"),
        ("serving", str(sandbox.origin["serving"]), sandbox.upstream_url("serving"), "serving"),
    ]
    for name in ("tensorflow", "serving"):
        head = subprocess.run(["git", "-C", str(ws / name), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout
        origin = subprocess.run(["git", "-C", str(sandbox.origin[name]), "rev-parse", "b2.4.0"],
                                capture_output=True, text=True, check=True).stdout
        assert head == origin
        # forkops changes no git config of the clone: upgrade passes rerere per command (-c)
        local = subprocess.run(["git", "-C", str(ws / name), "config", "--local", "--list"],
                               capture_output=True, text=True, check=True).stdout
        assert "rerere" not in local
    assert "keys.toml" in (ws / ".gitignore").read_text().splitlines()
    # a second init refuses to overwrite
    res = run_cli("init", str(ws), "--org", "acme")
    assert res.code == 2 and "already exists" in res.err


def test_init_org_defaults_no_clone(tmp_path: Path) -> None:
    res = run_cli("init", str(tmp_path / "ws"), "--org", "acme", "--no-clone")
    assert res.code == 0, res.err
    loaded = workspace.load_file(tmp_path / "ws" / "forkops.toml")
    assert [(r.origin, r.upstream) for r in loaded.repos] == [
        ("https://github.com/acme/tensorflow", "https://github.com/tensorflow/tensorflow"),
        ("https://github.com/acme/serving", "https://github.com/tensorflow/serving"),
    ]
    assert not (tmp_path / "ws" / "tensorflow").exists()


@pytest.mark.parametrize("args", [
    ["--no-clone"],  # no origins and no terminal to ask on
    ["--org", "acme", "--serving-origin", "x", "--no-clone"],
    ["--tensorflow-origin", "x", "--no-clone"],  # the serving origin is missing
])
def test_init_bad_input_writes_nothing(tmp_path: Path, args: list[str]) -> None:
    res = run_cli("init", str(tmp_path / "ws"), *args)
    assert res.code == 2, res.out + res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()  # not even the folder


def test_init_malformed_url_in_an_existing_folder_leaves_it_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("mine")
    res = run_cli("init", str(tmp_path / "ws"), "--tensorflow-origin", " padded", "--serving-origin", "x",
                  "--no-clone")
    assert res.code == 2 and "not a URL or path git accepts" in res.err, res.err
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["notes.txt"]


def init_args(sb: Sandbox, ws: Path, *names: str) -> list[str]:
    args = ["init", str(ws)]
    for name in names or ("tensorflow", "serving"):
        args += [f"--{name}-origin", str(sb.origin[name]), f"--{name}-upstream", sb.upstream_url(name)]
    return args


def test_init_detects_the_dlopen_shape_and_says_why(tmp_path: Path) -> None:
    from forkops import sandbox

    sb = sandbox.build(tmp_path / "sb", shape="dlopen", clone=False)
    ws = tmp_path / "ws"
    res = run_cli(*init_args(sb, ws))
    assert res.code == 0, res.err
    assert [(r.name, r.playbook) for r in workspace.load_file(ws / "forkops.toml").repos] == [
        ("tensorflow", "tensorflow-dlopen"), ("serving", "serving")]
    line = next(x for x in res.out.splitlines() if x.startswith("tensorflow: playbook"))
    assert line.startswith("tensorflow: playbook tensorflow-dlopen: ReadBinaryProto in "
                           "tensorflow/core/platform/env.cc on b2.4.0 calls CBCMode_Decrypt")
    assert "the key goes into that library at build time" in line


def test_init_detects_key_sites_on_the_default_shape(sandbox: Sandbox, tmp_path: Path) -> None:
    res = run_cli(*init_args(sandbox, tmp_path / "ws"))
    assert res.code == 0, res.err
    assert "tensorflow: playbook tensorflow: ReadBinaryProto in tensorflow/core/platform/env.cc on b2.4.0 " \
           "decrypts in place" in res.out
    assert workspace.load_file(tmp_path / "ws" / "forkops.toml").repo("tensorflow").playbook == "tensorflow"


def test_init_on_an_unpatched_fork_assumes_key_sites_and_says_so(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    res = run_cli("init", str(ws), "--only", "tensorflow", "--tensorflow-origin",
                  str(sandbox.upstream["tensorflow"]))  # upstream itself: ReadBinaryProto does not decrypt
    assert res.code == 0, res.err
    assert "tensorflow: playbook tensorflow: ReadBinaryProto in third_party/xla/xla/tsl/platform/env.cc on HEAD " \
           "does not decrypt yet" in " ".join(res.out.split())  # upstream master: the 2.19+ location


@pytest.mark.parametrize("only", ["serving", "tensorflow"])
def test_init_only_one_fork(sandbox: Sandbox, tmp_path: Path, only: str) -> None:
    ws = tmp_path / "ws"
    res = run_cli(*init_args(sandbox, ws, only)[:2], "--only", only, *init_args(sandbox, ws, only)[2:])
    assert res.code == 0, res.err
    assert [r.name for r in workspace.load_file(ws / "forkops.toml").repos] == [only]
    assert sorted(p.name for p in ws.iterdir()) == sorted([".gitignore", "forkops.toml", only])
    other = "tensorflow" if only == "serving" else "serving"
    res = run_cli("init", str(tmp_path / "ws2"), "--only", only, f"--{other}-origin", "x", "--no-clone")
    assert res.code == 2 and f"--{other}-origin given with --only {only}" in res.err
    res = run_cli("init", str(tmp_path / "ws3"), "--only", "crypt", "--org", "acme")
    assert res.code == 2 and "--only 'crypt': expected one of tensorflow, serving" in res.err
    res = run_cli("init", str(tmp_path / "ws4"), "--only", only, "--org", "acme", "--no-clone")
    assert res.code == 0
    assert [r.origin for r in workspace.load_file(tmp_path / "ws4" / "forkops.toml").repos] == [
        f"https://github.com/acme/{only}"]


def test_failed_clone_shows_gits_message_writes_nothing_and_can_be_retried(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    bad = str(tmp_path / "no-such-fork.git")
    res = run_cli("init", str(ws), "--tensorflow-origin", str(sandbox.origin["tensorflow"]),
                  "--serving-origin", bad)
    assert res.code == 3
    assert f"fatal: repository '{bad}' does not exist" in res.err
    assert "no error output" not in res.err
    assert not ws.exists()  # the TensorFlow clone it made is gone too
    res = run_cli(*init_args(sandbox, ws))  # simply retried
    assert res.code == 0, res.err
    assert (ws / "forkops.toml").is_file()


def test_failed_clone_keeps_what_was_there_before(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "clone", "-q", str(sandbox.origin["tensorflow"]), str(ws / "tensorflow")], check=True)
    (ws / ".gitignore").write_text("build/\n")
    res = run_cli("init", str(ws), "--tensorflow-origin", str(sandbox.origin["tensorflow"]),
                  "--serving-origin", str(tmp_path / "missing"))
    assert res.code == 3
    assert (ws / "tensorflow" / ".git").is_dir()  # an existing clone is not init's to remove
    assert not (ws / "serving").exists() and not (ws / "forkops.toml").exists()
    assert (ws / ".gitignore").read_text() == "build/\n"


def test_init_help_documents_every_url_option() -> None:
    res = run_cli("init", "--help")
    assert res.code == 0
    text = " ".join(res.out.split())
    for option, words in (("--tensorflow-origin URL", "Your TensorFlow fork"),
                          ("--serving-origin URL", "Your TensorFlow Serving fork"),
                          ("--tensorflow-upstream URL", "Upstream TensorFlow (default: https://github.com/tensorflow/tensorflow)"),
                          ("--serving-upstream URL", "Upstream TensorFlow Serving"),
                          ("--only REPO", "tensorflow or serving")):
        assert option in text and words in text, option


def test_interrupt_after_the_clones_removes_what_init_made(sandbox: Sandbox, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after both clones, before forkops.toml: both clones and the folder go."""
    from forkops import init as engine

    root = tmp_path / "ws"
    repos = engine.plan(root, {"tensorflow": str(sandbox.origin["tensorflow"]),
                               "serving": str(sandbox.origin["serving"])}, {})

    def interrupted(*_args: object, **_kwargs: object) -> None:
        assert (root / "tensorflow" / ".git").is_dir() and (root / "serving" / ".git").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_detect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.create(root, repos, clone=True)
    assert not root.exists()


def test_init_result_as_json(sandbox: Sandbox, tmp_path: Path) -> None:
    from forkops import init as engine

    root = tmp_path / "ws"
    repos = engine.plan(root, {"tensorflow": str(sandbox.origin["tensorflow"])}, {})
    result = engine.create(root, repos, clone=True)
    data = result.as_json()
    assert data["repos"] == ["tensorflow"] and data["cloned"] == ["tensorflow"]
    assert data["detections"] == [{"repo": "tensorflow", "playbook": "tensorflow",
                                   "reason": result.detections[0].reason}]
    assert "decrypts in place" in result.detections[0].reason


@pytest.mark.parametrize("command", ["init", "check", "upgrade"])
def test_every_clone_if_missing_refuses_a_folder_in_the_way_alike(sandbox: Sandbox, tmp_path: Path,
                                                                  command: str) -> None:
    """init, check and upgrade clone a missing fork through one function: a non-empty folder that
    is not a repository stops each the same way (exit 2, nothing cloned into it, left as it was)."""
    ws = tmp_path / "ws" if command == "init" else sandbox.workspace
    in_the_way = ws / "serving"
    shutil.rmtree(in_the_way, ignore_errors=True)
    in_the_way.mkdir(parents=True)
    (in_the_way / "notes.txt").write_text("mine\n")
    args = {"init": init_args(sandbox, ws), "check": ["-C", str(ws), "check", "--repo", "serving"],
            "upgrade": ["-C", str(ws), "upgrade", "2.4.1", "--repo", "serving"]}[command]
    res = run_cli(*args)
    assert res.code == 2, res.out + res.err
    assert f"{in_the_way} exists and is not a git repository" in res.err
    assert sorted(p.name for p in in_the_way.iterdir()) == ["notes.txt"]


def test_ensure_clone_clones_into_an_empty_folder_and_keeps_an_existing_clone(sandbox: Sandbox,
                                                                             tmp_path: Path) -> None:
    from forkops.init import ensure_clone

    rc = workspace.RepoConfig("serving", tmp_path / "serving", str(sandbox.origin["serving"]),
                              sandbox.upstream_url("serving"), "serving")
    rc.path.mkdir()
    repo = ensure_clone(rc)
    assert repo.rev_parse("HEAD") == git(sandbox.origin["serving"], "rev-parse", "b2.4.0").strip()
    (rc.path / "work.txt").write_text("uncommitted\n")
    assert ensure_clone(replace(rc, origin=str(tmp_path / "missing"))).path == rc.path  # not cloned again
    assert (rc.path / "work.txt").read_text() == "uncommitted\n"
