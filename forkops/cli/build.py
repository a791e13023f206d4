"""CLI commands: ``build`` and ``smoke`` (images from local source, the encrypted-model round
trip; ``doctor`` in cli/doctor.py says whether this machine can do either).

Engines: :mod:`forkops.build`, :mod:`forkops.smoke`, :mod:`forkops.docker`. This module loads the
workspace and keys, draws the one-line live status and the summary tables, and writes JUnit.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkops.cli.common import JsonOption, KeysOption, console, cwd, err_console, load_workspace, print_json
from forkops.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.playbook import SmokeSpec



def _keys(explicit: Path | None, root: Path | None) -> KeyMaterial:
    from forkops import keyfile

    material = keyfile.find(explicit, root)
    assert material is not None  # required
    return material


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A CI cancel (SIGTERM) cleans up like Ctrl-C: containers removed, scratch deleted."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (in-process tests): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fit(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_cmd(
    version: Annotated[str, typer.Argument(metavar="X.Y.Z", help="Release whose fork branches bX.Y.Z to build.")],
    gpu: Annotated[bool, typer.Option("--gpu", help="Build the GPU images (Dockerfile.devel-gpu, .gpu).")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Build the CPU and the GPU images.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Stage and print the docker commands only.")] = False,
    builder: Annotated[str | None, typer.Option("--builder", metavar="NAME", help="buildx builder (BuildKit).")] = None,
    cache_from: Annotated[list[str] | None, typer.Option("--cache-from", metavar="REF",
                                                         help="BuildKit cache source for the devel build.")] = None,
    cache_to: Annotated[list[str] | None, typer.Option("--cache-to", metavar="REF",
                                                       help="BuildKit cache export for the devel build.")] = None,
    bazel_option: Annotated[list[str] | None, typer.Option(
        "--bazel-option", metavar="OPT",
        help="Bazel option for the devel build (TF_SERVING_BAZEL_OPTIONS); repeatable, e.g. "
             "--bazel-option=--remote_executor=grpc://rbe:8980.")] = None,
    remote_cache: Annotated[str | None, typer.Option(
        "--remote-cache", metavar="URL", help="Bazel remote cache for the devel build (--remote_cache=URL).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the serving images (never the devel image: it holds "
                                                      "the staged sources). Needs --registry.")] = False,
    cryptlib: Annotated[Path | None, typer.Option(
        "--cryptlib", metavar="FILE",
        help="Ship this decryption library (dlopen shape) instead of compiling one with your key.")] = None,
    registry: Annotated[str | None, typer.Option("--registry", metavar="R", help="Tag as R/tensorflow-serving:...")]
    = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the staged folder (it holds the key).")] = False,
    keys: KeysOption = None,
) -> None:
    """Stage the Serving fork with the TensorFlow fork inside (key in the copy only) and build the
    devel and serving images.

    The forks are the repositories whose playbooks have role = "serving" and the role its [build]
    builds against ("tensorflow"); without a local TensorFlow fork, Serving's own org_tensorflow pin
    is kept (Bazel fetches it). Key sites (playbook tensorflow): the key goes into the staged
    TensorFlow tree, and its Bazel define also into the staged Serving .bazelrc. Decryption library
    (playbook tensorflow-dlopen): the serving image builds libcryptfile.so in a stage of its own
    with the key as a BuildKit secret (never a build arg), replacing ADD ${ENCRYPT_FILE_URL}. The
    build log (0600) shows the key's fingerprint wherever the key would appear. Staging folders
    (forkops-build-* in the temp folder) left by a killed build are removed by the next build.

    Exit 1: a patch the Serving WORKSPACE applied to TensorFlow does not apply (the patch file
    and its first failing hunk are named), or a file to rewrite is not as expected. Exit 2: bad
    input (no bX.Y.Z branch, a key_hex key with a Bazel define site, a Bazel option holding the
    key). Exit 3: docker, patch or bash missing, no Docker engine, or a docker build or push failed.
    """
    from forkops import build as engine
    from forkops.docker import Docker
    from forkops.version import Version

    ver = Version.parse(version)
    variants = ("cpu", "gpu") if all_ else ("gpu",) if gpu else ("cpu",)
    ws = load_workspace()
    material = _keys(keys, ws.root)
    options = engine.BuildOptions(ver, variants, registry, builder, tuple(cache_from or ()), tuple(cache_to or ()),
                                  tuple(bazel_option or ()), remote_cache, push)
    engine.check_options(options, material)
    found = engine.forks(ws, ver)
    if found is None:
        err_console().print(f'forkops: note: no repository in {ws.file} has a playbook with role = "serving": '
                            "there is no image to build (`forkops build` builds the Serving fork; a TensorFlow "
                            "fork of the dlopen shape needs only `forkops cryptlib build`)", markup=False)
        return
    serving, tensorflow = found
    spec = serving.playbook.build
    assert spec is not None
    docker = Docker()
    if not dry_run:
        docker.require_engine()  # before the (long) staging: exit 3 with one line
    out, err = console(), err_console()
    against = f" with {tensorflow.name} {tensorflow.branch}" if tensorflow else ""
    from forkops import lock

    # The lock covers staging only (git archive of the branches): the docker build that follows
    # reads the staged copy, so an hours-long build does not block the workspace.
    staging = f"staging {serving.name} {serving.branch}{against}..."
    with lock.workspace_lock(ws, f"forkops build {ver}"), err.status(staging):
        lock.refuse_while_upgrading(ws, "build")
        stage = engine.stage(serving, tensorflow, material, variants, prebuilt_library=cryptlib)
    try:
        for note in stage.notes:
            out.print(f"  {note}", markup=False)
        steps = engine.commands(spec, options, stage.context, serving, stage.secrets)
        if dry_run:
            gone = "" if keep else " (removed afterwards; --keep keeps it for inspection)"
            out.print(f"staged folder: {stage.root}{gone}", markup=False)
            out.print("would run:")
            for step in steps:
                env = "".join(f"{k}={v} " for k, v in step.env)
                out.print("  " + env + shlex.join(["docker", *step.args]), markup=False)
            return
        log = engine.new_log(ver)
        with _sigterm_as_interrupt(), err.status("docker build") as status:
            def show(step: engine.BuildStep, index: int, line: str) -> None:
                status.update(f"[{index + 1}/{len(steps)}] {step.label}: {_fit(line)}")

            try:
                report = engine.run_builds(docker, steps, log=log, material=material, on_line=show)
            except engine.BuildFailed as exc:
                status.stop()
                err.print(f"[red]{exc.what} failed[/red]; last lines of the build log:")
                for line in exc.tail:
                    err.print(f"  {line}", markup=False)
                err.print(f"full log: {log}", markup=False)
                raise
        for step, secs in zip(report.steps, report.seconds, strict=False):
            if step.is_build:
                df = Path(step.args[step.args.index("--file") + 1]).name
                out.print(f"[green]built[/green] {step.tag}  ({df}, {secs:.0f} s)")
            else:
                out.print(f"[green]pushed[/green] {step.tag}  ({secs:.0f} s)")
        out.print(f"build log: {log}", markup=False)
    finally:
        if keep:
            stage.keep()
            out.print(f"kept the staged folder {stage.root} (it holds the key: delete it when done)", markup=False)
        else:
            stage.remove()


def _smoke_spec() -> tuple[SmokeSpec, Path | None]:
    """The serving playbook's [smoke] (the workspace's if there is one) and the workspace root."""
    from forkops import playbook, workspace
    from forkops.playbook import SmokeSpec

    try:
        workspace.find(cwd())
    except BadInput:  # no workspace: the built-in serving playbook's settings
        return playbook.load("serving").smoke or SmokeSpec(), None
    ws = load_workspace()
    for repo in ws.repos:
        pb = ws.playbook(repo)
        if pb.smoke is not None:
            return pb.smoke, ws.root
    return SmokeSpec(), ws.root


def smoke_cmd(
    image: Annotated[str, typer.Argument(help="Serving image to test, e.g. tensorflow-serving:2.18.0.")],
    gpu: Annotated[bool, typer.Option("--gpu", help="GPU image: GPU model, --gpus all / --runtime=nvidia.")] = False,
    model: Annotated[Path | None, typer.Option("--model", metavar="DIR",
                                               help="Plaintext model base folder (default: bundled half_plus_two).")]
    = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="S", help="Seconds to wait for AVAILABLE.")] = 120.0,
    junit: Annotated[Path | None, typer.Option("--junit", metavar="FILE", help="Write JUnit XML.")] = None,
    serving_version: Annotated[str | None, typer.Option("--serving-version", metavar="X.Y.Z",
                                                        help="Serving version when the tag does not say.")] = None,
    keys: KeysOption = None,
    json_: JsonOption = False,
) -> ExitCode:
    """Serve the encrypted half_plus_two from IMAGE and check the prediction; the plaintext model and
    one encrypted under another key must not load."""
    from forkops import smoke as engine
    from forkops.docker import Docker
    from forkops.version import Version

    if timeout <= 0:
        raise BadInput("--timeout must be a positive number of seconds")
    docker = Docker()
    spec, root = _smoke_spec()
    report = engine.without_engine(docker, image)  # exit 3 first: nothing else matters without an engine
    if report is None:
        material = _keys(keys, root)
        options = engine.SmokeOptions(image, gpu, Version.parse(serving_version) if serving_version else None,
                                      timeout)
        with _sigterm_as_interrupt(), err_console().status("smoke") as status:
            report = engine.run(docker, spec, options, material, model=model,
                                on_status=lambda case, text: status.update(f"{case.key}: {text}"))
    if junit is not None:
        junit.write_text(engine.junit_xml(report))
    if json_:
        print_json(report.as_json())
    elif report.infrastructure is None:
        _smoke_table(report)
    report.raise_for_infrastructure()  # no engine: exit 3, after --json/--junit said so
    return ExitCode.OK if report.ok else ExitCode.NEEDS_PERSON


def _smoke_table(report: Any) -> None:
    from rich.table import Table

    out = console()
    flags = f" ({' '.join(report.gpu_flags)})" if report.gpu_flags else ""
    table = Table(title=f"forkops smoke {report.image}{flags}")
    for col in ("case", "expected", "result", "detail", "seconds"):
        table.add_column(col)
    for r in report.results:
        verdict = "[green]pass[/green]" if r.ok else "[red]FAIL[/red]"
        table.add_row(r.case.title, "serves" if r.case.must_serve else "refuses", verdict, r.detail,
                      f"{r.seconds:.1f}")
    out.print(table)
    for r in report.results:
        if not r.ok and r.logs:
            out.print(f"last lines of docker logs ({r.case.key}):")
            for line in r.logs:
                out.print(f"  {line}", markup=False)
    out.print("[green]smoke passed[/green]" if report.ok else "[red]smoke FAILED[/red]")


def register(app: typer.Typer) -> None:
    app.command("build")(build_cmd)
    app.command("smoke")(smoke_cmd)
