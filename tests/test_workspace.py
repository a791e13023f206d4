from __future__ import annotations

from pathlib import Path

import pytest

from forkops import workspace
from forkops.errors import BadInput, ConfigError
from tests.clihelp import run_cli

GOOD = """
[repos.tensorflow]
path = "tensorflow"
origin = "https://github.com/ORG/tensorflow"
upstream = "https://github.com/tensorflow/tensorflow"
playbook = "tensorflow"

[repos.serving]
path = "serving"
origin = "file:///srv/git/serving.git"
upstream = "/srv/mirror/serving"
playbook = "serving"
"""


def test_found_by_walking_up(tmp_path: Path) -> None:
    (tmp_path / "forkops.toml").write_text(GOOD)
    deep = tmp_path / "serving" / "tensorflow_serving" / "tools"
    deep.mkdir(parents=True)
    ws = workspace.load(deep)
    assert ws.root == tmp_path.resolve()
    assert [r.name for r in ws.repos] == ["tensorflow", "serving"]
    assert ws.repo("serving").path == (tmp_path / "serving").resolve()
    assert ws.repo("serving").origin == "file:///srv/git/serving.git"
    with pytest.raises(BadInput, match="no repository 'nope'"):
        ws.repo("nope")


def test_missing_workspace_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no forkops\\.toml"):
        workspace.find(tmp_path)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "forkops.toml").write_text(
        '[repos.serving]\npath = "../outside"\norigin = " padded"\nplaybook = "missing.toml"\ncolour = 1\n'
        '[repos."bad name"]\norigin = "x"\nupstream = "y"\nplaybook = "serving"\n'
    )
    with pytest.raises(ConfigError) as info:
        workspace.load(tmp_path)
    problems = info.value.problems
    for key in ("repos.serving.upstream", "repos.serving.path", "repos.serving.origin",
                "repos.serving.playbook", "repos.bad name"):
        assert any(p.startswith(f"forkops.toml: {key}: ") for p in problems), (key, problems)


def test_render_round_trips(tmp_path: Path) -> None:
    repos = [workspace.RepoConfig("tensorflow", tmp_path / "tensorflow", "/o/tf", "https://u/tf", "tensorflow"),
             workspace.RepoConfig("serving", tmp_path / "serving", 'C:\\odd "path"', "https://u/s", "serving")]
    (tmp_path / "forkops.toml").write_text(workspace.render(repos, tmp_path))
    ws = workspace.load(tmp_path)
    assert [(r.name, r.path, r.origin) for r in ws.repos] == [(r.name, r.path.resolve(), r.origin) for r in repos]


def test_cli_global_options(tmp_path: Path) -> None:
    res = run_cli("--version")
    assert res.code == 0 and res.out.startswith("forkops ")
    res = run_cli("-C", str(tmp_path / "missing"), "playbook", "show", "serving")
    assert res.code == 2 and res.err.startswith("forkops: error: -C ")
    res = run_cli("no-such-command")
    assert res.code == 2
    res = run_cli("--help")
    assert res.code == 0 and "playbook" in res.out


def test_unexpected_error_prints_one_line_and_keeps_the_details(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from forkops import playbook

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(playbook, "load", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = run_cli("playbook", "show", "serving")
    assert res.code == 3
    (line,) = res.err.splitlines()
    assert line.startswith("forkops: internal error (RuntimeError); details in ")
    log = Path(line.rsplit(" ", 1)[1])
    assert log.parent == tmp_path and "RuntimeError: boom" in log.read_text()
    assert "Traceback" not in res.err
