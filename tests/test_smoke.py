"""``forkops smoke`` and ``forkops doctor``.

Docker is the stand-in executable in tests/standins (there is no Docker engine here): its
`docker run` starts a stand-in TF Serving REST server on 127.0.0.1 that, like the patched fork,
loads the mounted model only if it decrypts with the key the test says the image was built
with. The last tests use the real docker client, which finds no engine here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from forkops import smoke
from forkops.crypto import bundled_model
from forkops.docker import Docker, DockerUnavailable
from forkops.errors import BadInput
from forkops.keyfile import KeyMaterial
from forkops.playbook import SmokeSpec
from forkops.playbook import load as load_playbook
from forkops.version import Version, VersionBound
from tests.clihelp import run_cli

STANDINS = Path(__file__).parent / "standins"
Configure = Callable[..., Path]  # standin(server settings, docker settings) -> the stand-in's state folder
KEY = b"Tst-Key-0123ABCD"  # test data, not a real key
MATERIAL = KeyMaterial("aes-128-cbc", KEY, b"7" * 16)
SPEC = load_playbook("serving").smoke or SmokeSpec()
REAL_DOCKER = Path("/usr/local/bin/docker")


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Stand-in docker first on PATH; yields a function to configure the stand-in server."""
    state = tmp_path / "docker-state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_DOCKER_STATE", str(state))

    def configure(server: dict[str, object] | None = None, docker: dict[str, object] | None = None) -> Path:
        (state / "server.json").write_text(json.dumps({"key_hex": KEY.hex(), "load_seconds": 0.3, **(server or {})}))
        (state / "config.json").write_text(json.dumps(docker or {}))
        return state

    configure()
    yield configure
    for info in (state / "containers").glob("*.json") if (state / "containers").exists() else []:
        with contextlib.suppress(ProcessLookupError):  # forkops failed to remove it: kill, then fail below
            os.killpg(json.loads(info.read_text())["pid"], signal.SIGKILL)
    leftover = list((state / "containers").glob("*.json")) if (state / "containers").exists() else []
    assert leftover == [], f"containers not removed: {leftover}"


def calls(state: Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()] if path.exists() else []


def run_smoke(image: str = "tensorflow-serving:2.18.0", *, gpu: bool = False, timeout: float = 120,
              on_status: smoke.Status | None = None, only: str | None = None) -> smoke.SmokeReport:
    options = smoke.SmokeOptions(image, gpu=gpu, timeout=timeout, poll_interval=0.05)
    cases = [c for c in smoke.CASES if only in (None, c.key)]  # fewer containers: faster tests
    return smoke.run(Docker(), SPEC, options, MATERIAL, on_status=on_status, cases=cases)


def by_key(report: smoke.SmokeReport) -> dict[str, smoke.CaseResult]:
    return {r.case.key: r for r in report.results}


# ---------------------------------------------------------------------------------------
# pure decisions
# ---------------------------------------------------------------------------------------
def test_version_from_image_tag() -> None:
    assert smoke.version_from_image("registry.example.com:5000/ml/tensorflow-serving:2.18.0-gpu") == Version(2, 18, 0)
    assert smoke.version_from_image("tensorflow-serving:2.6.1-devel-gpu") == Version(2, 6, 1)
    assert smoke.version_from_image("registry.example.com:5000/tensorflow-serving") is None
    assert smoke.version_from_image("tensorflow-serving:latest") is None


def test_gpu_flags_follow_gpus_all_since() -> None:
    spec = SmokeSpec(gpus_all_since=VersionBound.parse("2.7"))
    assert smoke.gpu_flags(spec, Version(2, 6, 9)) == ("--runtime=nvidia",)
    assert smoke.gpu_flags(spec, Version(2, 7, 0)) == ("--gpus", "all")
    assert smoke.gpu_flags(spec, Version(2, 18, 0)) == ("--gpus", "all")
    with pytest.raises(BadInput, match="--serving-version"):
        smoke.gpu_flags(spec, None)


def test_check_predictions() -> None:
    assert smoke.check_predictions({"predictions": [2.5, 3.0, 4.5 + 5e-7]}, SPEC)[0]
    ok, detail, _ = smoke.check_predictions({"predictions": [3.0, 4.0, 5.5]}, SPEC)
    assert not ok and "expected [2.5, 3.0, 4.5]" in detail
    assert not smoke.check_predictions({"predictions": [2.5, 3.0]}, SPEC)[0]
    assert not smoke.check_predictions({"predictions": ["2.5", 3.0, 4.5]}, SPEC)[0]
    assert not smoke.check_predictions({"error": "x"}, SPEC)[0]


# ---------------------------------------------------------------------------------------
# the round trip against the stand-ins
# ---------------------------------------------------------------------------------------
def test_patched_image_passes_all_three_cases(standin: Configure) -> None:
    state = standin()
    report = run_smoke()
    results = by_key(report)
    assert report.ok, [(r.case.key, r.detail) for r in report.results]
    assert results["encrypted"].predictions == (2.5, 3.0, 4.5)
    assert "exited (code 1)" in results["plaintext"].detail
    assert "exited" in results["wrong-key"].detail
    assert any("Can't decrypt binary proto" in line for line in results["wrong-key"].logs)
    runs = [c for c in calls(state) if c[0] == "run"]
    assert len(runs) == 3
    for argv in runs:
        name, publish, mount = argv[3], argv[5], argv[7]
        assert argv == ["run", "-d", "--name", name, "-p", publish, "-v", mount,
                        "-e", "MODEL_NAME=half_plus_two", "tensorflow-serving:2.18.0"]
        assert publish.startswith("127.0.0.1:") and publish.endswith(":8501")
        assert mount.endswith(":/models/half_plus_two:ro")
        assert ["rm", "-f", name] in calls(state)  # every container removed
        assert not Path(mount.split(":")[0]).exists()  # temporary models cleaned up
    assert KEY.decode() not in json.dumps(calls(state)) and KEY.hex() not in json.dumps(calls(state))


def test_unpatched_image_fails_the_negative_control(standin: Configure) -> None:
    standin({"decrypts": False})  # a server that loads plaintext models: the patch is not live
    report = run_smoke()
    results = by_key(report)
    assert not report.ok
    assert not results["encrypted"].ok and "exited" in results["encrypted"].detail
    assert not results["plaintext"].ok and "became AVAILABLE" in results["plaintext"].detail
    assert results["wrong-key"].ok


def test_slow_start_is_waited_for(standin: Configure, tmp_path: Path) -> None:
    """No reply, then LOADING, then AVAILABLE: the stand-in moves on only after smoke has seen the
    previous state (marker files), so the test does not race the clock however loaded the machine."""
    gate = tmp_path / "gate"
    gate.mkdir()
    standin({"gate_dir": str(gate)})
    statuses: list[str] = []

    def step(case: smoke.Case, text: str) -> None:
        statuses.append(text)
        if text == "waiting for AVAILABLE (no reply yet)":
            (gate / "loading").touch()
        elif text == "waiting for AVAILABLE (LOADING)":
            (gate / "available").touch()

    report = run_smoke(on_status=step, only="encrypted", timeout=600)  # the timeout is only a safety net
    assert report.ok, by_key(report)["encrypted"].detail
    waits = [s for s in statuses if s.startswith("waiting")]
    assert waits[0] == "waiting for AVAILABLE (no reply yet)" and "waiting for AVAILABLE (LOADING)" in waits
    assert statuses[-1] == "predicting"


def test_end_state_counts_as_refused_and_fails_the_positive_case(standin: Configure) -> None:
    standin({"on_load_failure": "end", "key_hex": "00" * 16})  # the image has another key
    report = run_smoke()
    results = by_key(report)
    assert not results["encrypted"].ok and "model state END: DATA_LOSS" in results["encrypted"].detail
    assert results["plaintext"].ok and "END" in results["plaintext"].detail


def test_wrong_predictions_fail(standin: Configure) -> None:
    standin({"predict": "wrong"})
    results = by_key(run_smoke(only="encrypted"))
    assert not results["encrypted"].ok
    assert results["encrypted"].detail == "predicted [3.5, 4.0, 5.5], expected [2.5, 3.0, 4.5] (tolerance 1e-06)"


@pytest.mark.parametrize(("knob", "expect"), [({"predict": "nonjson"}, "predict reply not JSON"),
                                               ({"status_reply": "nonjson"}, "model status not JSON")])
def test_non_json_replies_fail(standin: Configure, knob: dict[str, object], expect: str) -> None:
    standin(knob)
    results = by_key(run_smoke(only="encrypted"))
    assert not results["encrypted"].ok and results["encrypted"].detail.startswith(expect)


def test_timeout_when_never_available(standin: Configure, tmp_path: Path) -> None:
    """The clock moves past the deadline only once smoke has seen LOADING: no race with a slow start."""
    standin({"never_available": True})
    seen: list[str] = []

    def clock() -> float:
        return 1e6 if "waiting for AVAILABLE (LOADING)" in seen else 0.0

    options = smoke.SmokeOptions("tensorflow-serving:2.18.0", timeout=1.0, poll_interval=0.05)
    runner = smoke.Runner(Docker(), SPEC, options, on_status=lambda case, text: seen.append(text), clock=clock)
    models = smoke.prepare_models(bundled_model(gpu=False), MATERIAL, tmp_path / "models")
    result = runner.run_case(smoke.CASES[0], models["encrypted"])
    assert not result.ok
    assert result.detail.startswith("not AVAILABLE within 1 s (last state: LOADING)")


def test_docker_run_failure_fails_every_case_and_still_removes(standin: Configure) -> None:
    state = standin(docker={"run_fails": True})
    report = run_smoke()
    assert not report.ok and all("docker run failed: " in r.detail for r in report.results)
    names = [c[3] for c in calls(state) if c[0] == "run"]
    assert all(["rm", "-f", n] in calls(state) for n in names)


def test_interrupt_removes_the_container(standin: Configure) -> None:
    state = standin({"never_available": True})

    def interrupt(case: smoke.Case, text: str) -> None:
        if text.startswith("waiting"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_smoke(on_status=interrupt)
    runs = [c for c in calls(state) if c[0] == "run"]
    assert len(runs) == 1 and calls(state)[-1] == ["rm", "-f", runs[0][3]]
    port = int(runs[0][5].split(":")[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the stand-in server is gone


@pytest.mark.parametrize(("image", "flags"), [("r/tensorflow-serving:2.6.0-gpu", ["--runtime=nvidia"]),
                                              ("r/tensorflow-serving:2.18.0-gpu", ["--gpus", "all"])])
def test_gpu_flags_in_docker_run(standin: Configure, image: str, flags: list[str]) -> None:
    state = standin()
    report = run_smoke(image, gpu=True, only="wrong-key")
    assert report.ok
    for argv in (c for c in calls(state) if c[0] == "run"):
        assert argv[-1 - len(flags):] == [*flags, image]


# ---------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------
def keys_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(f'[model]\nkey = "{KEY.decode()}"\n')
    path.chmod(mode)
    return path


def test_cli_smoke_json_and_junit(standin: Configure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    standin()
    monkeypatch.chdir(tmp_path)
    junit = tmp_path / "smoke.xml"
    res = run_cli("smoke", "tensorflow-serving:2.18.0", "--keys", str(keys_file(tmp_path)), "--json",
                  "--junit", str(junit), "--timeout", "10")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert data["ok"] and [c["case"] for c in data["cases"]] == ["encrypted", "plaintext", "wrong-key"]
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"


def test_cli_smoke_failure_exits_1_with_table(standin: Configure, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    standin({"decrypts": False})
    monkeypatch.chdir(tmp_path)
    junit = tmp_path / "smoke.xml"
    res = run_cli("smoke", "tensorflow-serving:2.18.0", "--keys", str(keys_file(tmp_path)), "--junit", str(junit))
    assert res.code == 1
    assert "smoke FAILED" in res.out and "last lines of docker logs (encrypted)" in res.out
    assert ET.parse(junit).getroot().get("failures") == "2"


def test_cli_smoke_without_engine_exits_3(standin: Configure, tmp_path: Path) -> None:
    standin(docker={"engine": False})
    res = run_cli("smoke", "img:2.18.0")
    assert res.code == 3 and res.err.startswith("forkops: error: no Docker engine is reachable")
    assert len(res.err.strip().splitlines()) == 1


def test_cli_smoke_without_engine_says_so_in_json_and_junit(standin: Configure, tmp_path: Path) -> None:
    """CI reads these files: no engine is an infrastructure error, not an empty report or a failed test."""
    standin(docker={"engine": False})
    junit = tmp_path / "smoke.xml"
    res = run_cli("-C", str(tmp_path), "smoke", "img:2.18.0", "--json", "--junit", "smoke.xml")
    assert res.code == 3
    assert res.err.startswith("forkops: error: no Docker engine is reachable") and len(res.err.splitlines()) == 1
    data = json.loads(res.out)
    assert data["ok"] is False and data["cases"] == []
    assert data["error"]["kind"] == "infrastructure" and "no Docker engine" in data["error"]["message"]
    suite = ET.parse(junit).getroot()  # relative to -C DIR
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "3")
    errors = [tc.find("error") for tc in suite.iter("testcase")]
    assert [tc.get("name") for tc in suite.iter("testcase")] == ["encrypted", "plaintext", "wrong-key"]
    assert all(e is not None and e.get("type") == "infrastructure" for e in errors)


def test_cli_doctor_with_standin(standin: Configure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    standin(docker={"runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}})
    monkeypatch.chdir(tmp_path)
    res = run_cli("doctor", "--json", "--keys", str(keys_file(tmp_path)))
    assert res.code == 0, res.err
    verdicts = {c["check"]: c["verdict"] for c in json.loads(res.out)}
    assert verdicts == {"git": "ok", "docker client": "ok", "docker engine": "ok", "buildx": "ok",
                        "nvidia runtime": "ok", "keys file": "ok"}


def test_cli_doctor_warns_and_refuses_loose_keys(standin: Configure, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    standin(docker={"buildx": False})
    monkeypatch.chdir(tmp_path)
    res = run_cli("doctor", "--json", "--keys", str(keys_file(tmp_path, 0o644)))
    assert res.code == 2
    checks = {c["check"]: c for c in json.loads(res.out)}
    assert checks["buildx"]["verdict"] == "warn" and checks["nvidia runtime"]["verdict"] == "warn"
    assert checks["keys file"]["verdict"] == "fail" and "too open" in checks["keys file"]["detail"]


def _real_docker_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not REAL_DOCKER.exists():
        pytest.skip("no real docker client at /usr/local/bin/docker")
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    if subprocess.run([str(REAL_DOCKER), "info"], capture_output=True, check=False).returncode == 0:
        pytest.skip("a Docker engine is reachable on this machine")
    assert shutil.which("docker") == str(REAL_DOCKER)


def test_real_docker_client_without_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _real_docker_only(monkeypatch)
    monkeypatch.chdir(tmp_path)
    res = run_cli("smoke", "tensorflow-serving:2.18.0")
    assert res.code == 3
    assert res.err.strip() == ("forkops: error: no Docker engine is reachable: Cannot connect to the Docker daemon "
                               "at unix:///var/run/docker.sock. Is the docker daemon running?")
    doc = run_cli("doctor")
    assert doc.code == 3
    assert "no Docker engine is reachable" in doc.err and "docker engine" in doc.out
    with pytest.raises(DockerUnavailable, match="no Docker engine is reachable"):
        Docker().require_engine()
