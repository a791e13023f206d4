"""``forkops init``: writes forkops.toml and clones the forks (local paths only, no network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from forkops import workspace
from forkops.sandbox import Sandbox
from tests.clihelp import run_cli


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
        rerere = subprocess.run(["git", "-C", str(ws / name), "config", "rerere.enabled"],
                                capture_output=True, text=True, check=True).stdout
        assert rerere.strip() == "true"
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
    assert not (tmp_path / "ws").exists()  # refused before anything was made
