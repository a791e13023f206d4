"""``forkops smoke``: prove that an image serves an encrypted model, and only that.

Three cases, each in its own container, with the model mounted read-only at
``/models/<model_name>``:

* ``encrypted``: half_plus_two encrypted with the workspace key must become AVAILABLE and
  predict ``[1.0, 2.0, 5.0] -> [2.5, 3.0, 4.5]`` (within the playbook's tolerance);
* ``plaintext`` and ``wrong-key`` (encrypted under a random key) must NOT become AVAILABLE:
  this proves the decryption patch is live (an unpatched server loads the plaintext model).

Invariants: every container is named up front and removed with ``docker rm -f`` whatever
happens (failure, timeout, Ctrl-C); HTTP goes only to 127.0.0.1 (proxies ignored); the key
never reaches a docker argument or a file other than the encrypted model.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from xml.etree import ElementTree as ET

from forkops.docker import Docker, DockerUnavailable
from forkops.errors import BadInput, ForkopsError
from forkops.playbook import SmokeSpec
from forkops.version import Version

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial

LOG_TAIL = 20
_TAG_VERSION = re.compile(r"(\d+\.\d+\.\d+(?:-rc\d+)?)")


CaseKey = Literal["encrypted", "plaintext", "wrong-key"]


@dataclass(frozen=True)
class Case:
    key: CaseKey
    title: str
    must_serve: bool


CASES = (
    Case("encrypted", "model encrypted with the workspace key", must_serve=True),
    Case("plaintext", "plaintext model (negative control)", must_serve=False),
    Case("wrong-key", "model encrypted under another key (negative control)", must_serve=False),
)


@dataclass(frozen=True)
class CaseResult:
    case: Case
    ok: bool
    detail: str
    seconds: float = 0.0
    logs: tuple[str, ...] = ()
    predictions: tuple[float, ...] | None = None

    def as_json(self) -> dict[str, object]:
        return {"case": self.case.key, "must_serve": self.case.must_serve, "ok": self.ok, "detail": self.detail,
                "seconds": round(self.seconds, 3),
                "predictions": list(self.predictions) if self.predictions is not None else None}


@dataclass(frozen=True)
class SmokeReport:
    """What ``smoke`` found. ``infrastructure`` is set when no case could run (no Docker engine):
    the report then says so, in JSON and JUnit, instead of there being no report at all."""

    image: str
    gpu_flags: tuple[str, ...]
    results: tuple[CaseResult, ...] = ()
    infrastructure: ForkopsError | None = None

    @property
    def ok(self) -> bool:
        return self.infrastructure is None and bool(self.results) and all(r.ok for r in self.results)

    def as_json(self) -> dict[str, object]:
        error = None if self.infrastructure is None else {"kind": "infrastructure",
                                                          "message": self.infrastructure.message}
        return {"image": self.image, "ok": self.ok, "gpu_flags": list(self.gpu_flags), "error": error,
                "cases": [r.as_json() for r in self.results]}

    def raise_for_infrastructure(self) -> None:
        """Raise the error that kept the cases from running (exit 3), if there was one."""
        if self.infrastructure is not None:
            raise self.infrastructure


# ---------------------------------------------------------------------------------------
# Pure decisions
# ---------------------------------------------------------------------------------------
def version_from_image(image: str) -> Version | None:
    """``reg/tensorflow-serving:2.18.0-gpu`` -> 2.18.0 (None when the tag carries no version)."""
    name = image.rsplit("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    m = _TAG_VERSION.search(tag)
    return Version.parse(m.group(1)) if m else None


def gpu_flags(spec: SmokeSpec, version: Version | None) -> tuple[str, ...]:
    """``--gpus all`` from ``gpus_all_since`` (2.7) on, ``--runtime=nvidia`` before."""
    if spec.gpus_all_since is None:
        return ("--gpus", "all")
    if version is None:
        raise BadInput("--gpu: cannot tell the Serving version from the image tag (needed to choose "
                       "--gpus all or --runtime=nvidia); pass --serving-version X.Y.Z")
    return ("--gpus", "all") if spec.gpus_all_since.compare(version) <= 0 else ("--runtime=nvidia",)


def model_states(reply: object) -> list[tuple[str, str]]:
    """[(state, error message)] from a GET /v1/models/NAME reply; [] if it has none yet."""
    if not isinstance(reply, dict):
        return []
    states = []
    for entry in reply.get("model_version_status") or []:
        if isinstance(entry, dict):
            status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
            states.append((str(entry.get("state", "")), str(status.get("error_message", "")) if status else ""))
    return states


def check_predictions(reply: object, spec: SmokeSpec) -> tuple[bool, str, list[float] | None]:
    if not isinstance(reply, dict) or not isinstance(reply.get("predictions"), list):
        return False, f"predict reply has no predictions list: {_short(json.dumps(reply))}", None
    got = reply["predictions"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in got):
        return False, f"predictions are not numbers: {_short(json.dumps(got))}", None
    values = [float(v) for v in got]
    want = list(spec.expected)
    if len(values) != len(want) or any(abs(a - b) > spec.tolerance for a, b in zip(values, want, strict=True)):
        return False, f"predicted {values}, expected {want} (tolerance {spec.tolerance:g})", values
    return True, f"predicted {values}", values


# ---------------------------------------------------------------------------------------
# HTTP to the container (127.0.0.1 only)
# ---------------------------------------------------------------------------------------
class BadReply(Exception):
    """The server answered, but not as TF Serving does (not JSON)."""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _request(port: int, path: str, body: object | None = None, timeout: float = 5.0) -> object:
    """JSON from http://127.0.0.1:PORT/PATH. OSError when nothing answers; BadReply on non-JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:  # TF Serving answers errors in JSON too (404 while loading)
        raw = exc.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadReply(f"not JSON: {_short(raw.decode('utf-8', 'replace'))!r}") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmokeOptions:
    image: str
    gpu: bool = False
    serving_version: Version | None = None
    timeout: float = 120.0
    poll_interval: float = 0.5


@dataclass(frozen=True)
class _Outcome:
    kind: str  # "available" | "exited" | "end" | "timeout" | "bad-reply" | "not-started"
    detail: str
    logs: tuple[str, ...] = ()


Status = Callable[[Case, str], None]


class Runner:
    """Runs the cases against one image; every container it starts, it removes."""

    def __init__(self, docker: Docker, spec: SmokeSpec, options: SmokeOptions, *,
                 on_status: Status | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.docker = docker
        self.spec = spec
        self.options = options
        self.on_status = on_status or (lambda case, text: None)
        self.clock = clock
        version = options.serving_version or version_from_image(options.image)
        self.gpu_flags = gpu_flags(spec, version) if options.gpu else ()

    def run_case(self, case: Case, model_dir: Path) -> CaseResult:
        started = self.clock()
        name = f"forkops-smoke-{case.key}-{secrets.token_hex(4)}"
        port = free_port()
        mount = f"/models/{self.spec.model_name}"
        args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{self.spec.rest_port}",
                "-v", f"{model_dir}:{mount}:ro", "-e", f"MODEL_NAME={self.spec.model_name}",
                *self.gpu_flags, self.options.image]
        try:
            self.on_status(case, "starting container")
            res = self.docker.run(*args, timeout=None)
            if not res.ok:
                outcome = _Outcome("not-started", f"docker run failed: {res.last_line()}")
            else:
                outcome = self._wait(case, name, port, started)
            result = self._judge(case, outcome, port)
        finally:
            # Named up front, so even a Ctrl-C during `docker run` leaves nothing behind.
            self.docker.run("rm", "-f", name, timeout=60)
        return replace(result, seconds=self.clock() - started)

    def _wait(self, case: Case, name: str, port: int, started: float) -> _Outcome:
        deadline = started + self.options.timeout
        last = "no reply yet"
        while True:
            state = self.docker.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, timeout=30)
            words = state.stdout.split()
            if state.ok and words and words[0] in ("exited", "dead"):
                code = words[1] if len(words) > 1 else "?"
                return _Outcome("exited", f"container exited (code {code}) before the model was AVAILABLE",
                                self._logs(name))
            try:
                states = model_states(_request(port, f"/v1/models/{self.spec.model_name}"))
            except BadReply as exc:
                return _Outcome("bad-reply", f"model status {exc}", self._logs(name))
            except OSError:
                states = []  # not listening yet: the server is still starting
            if any(s == "AVAILABLE" for s, _ in states):
                return _Outcome("available", "AVAILABLE")
            if states and all(s == "END" for s, _ in states):
                errors = "; ".join(e for _, e in states if e) or "no error message"
                return _Outcome("end", f"model state END: {_short(errors, 120)}", self._logs(name))
            if states:
                last = "/".join(s for s, _ in states)
            self.on_status(case, f"waiting for AVAILABLE ({last})")
            if self.clock() >= deadline:
                return _Outcome("timeout", f"not AVAILABLE within {self.options.timeout:g} s (last state: {last})",
                                self._logs(name))
            time.sleep(self.options.poll_interval)

    def _judge(self, case: Case, outcome: _Outcome, port: int) -> CaseResult:
        logs = outcome.logs
        if outcome.kind in ("not-started", "bad-reply"):
            return CaseResult(case, False, outcome.detail, logs=logs)
        if not case.must_serve:
            if outcome.kind == "available":
                return CaseResult(case, False, "became AVAILABLE: the image serves models the decryption patch "
                                  "should refuse (is the patch compiled in?)", logs=logs)
            return CaseResult(case, True, f"refused as it must: {outcome.detail}", logs=logs)
        if outcome.kind != "available":
            return CaseResult(case, False, outcome.detail, logs=logs)
        self.on_status(case, "predicting")
        try:
            reply = _request(port, f"/v1/models/{self.spec.model_name}:predict",
                             {"instances": list(self.spec.instances)}, timeout=30)
        except BadReply as exc:
            return CaseResult(case, False, f"predict reply {exc}", logs=logs)
        except OSError as exc:
            return CaseResult(case, False, f"predict request failed: {exc}", logs=logs)
        ok, detail, values = check_predictions(reply, self.spec)
        return CaseResult(case, ok, detail, logs=logs, predictions=tuple(values) if values is not None else None)

    def _logs(self, name: str) -> tuple[str, ...]:
        res = self.docker.run("logs", "--tail", str(LOG_TAIL), name, timeout=30)
        return tuple((res.stdout + res.stderr).splitlines()[-LOG_TAIL:])


# ---------------------------------------------------------------------------------------
# The whole smoke test
# ---------------------------------------------------------------------------------------
def prepare_models(model: Path, material: KeyMaterial, dest: Path) -> dict[str, Path]:
    """The three model folders (encrypted, plaintext, wrong-key) below ``dest``."""
    from forkops import crypto  # lazy: cryptography is slow to import

    models = {"plaintext": dest / "plaintext", "encrypted": dest / "encrypted", "wrong-key": dest / "wrong-key"}
    shutil.copytree(model, models["plaintext"])
    crypto.encrypt_path(model, models["encrypted"], material)
    # A random key of the same length: the ciphertext is well-formed but undecryptable with
    # the image's key. It lives only in memory.
    other = material._replace(key=secrets.token_bytes(len(material.key)))
    crypto.encrypt_path(model, models["wrong-key"], other)
    return models


def without_engine(docker: Docker, image: str) -> SmokeReport | None:
    """The report of a smoke test that cannot run because no Docker engine is reachable (None
    when one is): checked first, as nothing else (keys, models) matters without it."""
    try:
        docker.require_engine()
    except DockerUnavailable as exc:
        return SmokeReport(image, (), infrastructure=exc)
    return None


def run(
    docker: Docker,
    spec: SmokeSpec,
    options: SmokeOptions,
    material: KeyMaterial,
    *,
    model: Path | None = None,
    cases: Sequence[Case] = CASES,
    on_status: Status | None = None,
) -> SmokeReport:
    """Run ``cases``; the caller decides what a failure means (the CLI exits 1). Without a Docker
    engine no case runs and the report carries that as ``infrastructure``."""
    runner = Runner(docker, spec, options, on_status=on_status)
    not_run = without_engine(docker, options.image)
    if not_run is not None:
        return not_run
    if model is None:
        from forkops import crypto

        model = crypto.bundled_model(gpu=options.gpu)
    if not model.is_dir():
        raise BadInput(f"--model {model}: not a model folder")
    scratch = Path(tempfile.mkdtemp(prefix="forkops-smoke-"))
    try:
        # The container's server (often another uid) must read the models; they hold
        # ciphertext or public test data, never the key.
        os.chmod(scratch, 0o755)
        models = prepare_models(model, material, scratch)
        results = tuple(runner.run_case(case, models[case.key]) for case in cases)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return SmokeReport(options.image, runner.gpu_flags, results)


def junit_xml(report: SmokeReport, cases: Sequence[Case] = CASES) -> str:
    """JUnit XML: a failing case is a ``failure``; when no case could run (``infrastructure``)
    every case is an ``error`` carrying why, which CI shows apart from a failed smoke test."""
    broken = report.infrastructure
    suite = ET.Element("testsuite", name="forkops smoke", tests=str(len(cases) if broken else len(report.results)),
                       failures=str(sum(not r.ok for r in report.results)), errors=str(len(cases) if broken else 0),
                       time=f"{sum(r.seconds for r in report.results):.3f}")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="image", value=report.image)
    if broken is not None:
        for case in cases:
            tc = ET.SubElement(suite, "testcase", classname="forkops.smoke", name=case.key, time="0.000")
            ET.SubElement(tc, "error", type="infrastructure", message=broken.message).text = (
                f"not run: {broken.message}")
    for r in report.results:
        tc = ET.SubElement(suite, "testcase", classname="forkops.smoke", name=r.case.key, time=f"{r.seconds:.3f}")
        if not r.ok:
            ET.SubElement(tc, "failure", message=r.detail).text = "\n".join(r.logs)
        elif r.logs:
            ET.SubElement(tc, "system-out").text = "\n".join(r.logs)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
