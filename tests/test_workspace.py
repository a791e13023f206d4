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


def test_unexpected_error_prints_one_line_and_keeps_the_details(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
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


# ---------------------------------------------------------------------------------------
# one-fork workspaces: every command works on the repositories the workspace has
# ---------------------------------------------------------------------------------------
def one_fork_workspace(tmp_path: Path, only: str, monkeypatch: pytest.MonkeyPatch, shape: str = "keys") -> Path:
    from forkops import sandbox

    sb = sandbox.build(tmp_path / "sb", clone=False, shape=shape)  # type: ignore[arg-type]
    ws = tmp_path / "ws"
    res = run_cli("init", str(ws), "--only", only, f"--{only}-origin", str(sb.origin[only]),
                  f"--{only}-upstream", sb.upstream_url(only))
    assert res.code == 0, res.err
    assert [r.name for r in workspace.load_file(ws / "forkops.toml").repos] == [only]
    keys = ws / "keys.toml"
    keys.write_text('[model]\ncipher = "aes-128-cbc"\nkey = "Tst-Key-0123ABCD"\n')
    keys.chmod(0o600)
    monkeypatch.chdir(ws)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # build scratch inside the test folder
    return ws


@pytest.mark.parametrize("only", ["serving", "tensorflow"])
def test_one_fork_workspace_check_nightly_upgrade_encrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         only: str) -> None:
    ws = one_fork_workspace(tmp_path, only, monkeypatch)
    tag = "2.4.1" if only == "serving" else "v2.4.1"
    res = run_cli("check", "--tags", tag)
    assert res.code == 0, res.out + res.err
    assert f"{only}: all 1 tags rebase cleanly" in res.out
    res = run_cli("nightly", "--report-dir", str(tmp_path / "report"))
    assert res.code in (0, 1), res.err  # 1: a newly incompatible upstream tag (the sandbox has them)
    report = (tmp_path / "report" / "report.json").read_text()
    assert f'"{only}"' in report and ("serving" if only == "tensorflow" else '"tensorflow"') not in report
    res = run_cli("upgrade", "2.4.1")
    assert res.code == 0, res.out + res.err
    assert f"upgrade to 2.4.1 done ({only})" in res.out
    res = run_cli("set-key")
    assert res.code == 0, res.out + res.err
    hooks = ws / only / ".git" / "hooks"
    for hook in ("commit-msg", "pre-push"):
        (hooks / hook).unlink()
    res = run_cli("guard", "install")
    assert res.code == 0, res.out + res.err
    assert (hooks / "commit-msg").is_file() and (hooks / "pre-push").is_file()
    from forkops import crypto

    res = run_cli("encrypt", str(crypto.bundled_model(gpu=False)), "-o", str(tmp_path / "enc"))
    assert res.code == 0, res.err
    assert not (ws / ("tensorflow" if only == "serving" else "serving")).exists()


def test_serving_only_build_keeps_servings_own_tensorflow_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_fork_workspace(tmp_path, "serving", monkeypatch, shape="dlopen")
    res = run_cli("build", "2.4.0", "--dry-run", "--keep")
    assert res.code == 0, res.err
    text = " ".join(res.out.split())
    assert ('no local fork with role "tensorflow" in the workspace: org_tensorflow stays as WORKSPACE pins it, '
            "git_repository (branch = 'b2.4.0'") in text
    assert "Bazel fetches it at build time" in text
    staged = Path(text.split("staged folder: ")[1].split()[0])
    try:
        ctx = staged / "context"
        assert not (ctx / "tensorflow").exists()
        ws_text = (ctx / "WORKSPACE").read_text()
        assert 'branch = "b2.4.0"' in ws_text and "local_repository" not in ws_text  # untouched
        # The Serving Dockerfile downloaded the library: it is built with your key instead.
        docker = (ctx / "tensorflow_serving/tools/docker/Dockerfile").read_text()
        assert "ENCRYPT_FILE_URL" not in docker and "COPY --from=forkops_cryptlib" in docker
        assert [p.name for p in (staged / "secrets").iterdir()] == ["cryptfile_key.h"]
    finally:
        import shutil

        shutil.rmtree(staged)


def test_tensorflow_only_build_says_there_is_nothing_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_fork_workspace(tmp_path, "tensorflow", monkeypatch)
    res = run_cli("build", "2.4.0", "--dry-run")
    assert res.code == 0, res.err
    assert 'has a playbook with role = "serving": there is no image to build' in " ".join(res.err.split())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("forkops-build-")]
