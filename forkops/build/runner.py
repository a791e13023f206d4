"""Running the docker commands: one log (0600) for the whole build, every line redacted.

Invariant: build output passes through :class:`forkops.secrets.StreamRedactor` before it reaches
the log, the live status line or an error's tail.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.build.images import BuildStep
from forkops.docker import Docker, DockerFailed
from forkops.version import Version

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial


@dataclass
class BuildReport:
    steps: list[BuildStep]
    log: Path | None = None
    seconds: list[float] = field(default_factory=list)


class BuildFailed(DockerFailed):
    """A docker build failed; ``tail`` holds its last lines, ``log`` the full log."""


def run_builds(
    docker: Docker,
    steps: Sequence[BuildStep],
    *,
    log: Path,
    material: KeyMaterial,
    on_line: Callable[[BuildStep, int, str], None] | None = None,
) -> BuildReport:
    """Run each step in order; stop at the first failure with BuildFailed.

    Build output is redacted as a stream (:class:`forkops.secrets.StreamRedactor`: a secret split
    over lines is caught too) before the log, ``on_line`` and the failure tail see it.
    """
    report = BuildReport(list(steps), log)
    from forkops.secrets import Matcher, StreamRedactor

    matcher = Matcher(material)
    # BUILDKIT_PROGRESS=plain: line-oriented output from BuildKit; the classic builder ignores it.
    env = {"BUILDKIT_PROGRESS": "plain"}
    for index, step in enumerate(steps):
        started = time.monotonic()

        def forward(line: str, step: BuildStep = step, index: int = index) -> None:
            if on_line is not None:
                on_line(step, index, line)

        code, tail = docker.stream(step.args, log=log, on_line=forward, env={**env, **dict(step.env)},
                                   redact=StreamRedactor(matcher))
        report.seconds.append(time.monotonic() - started)
        if code != 0:
            what = f"docker build of {step.tag} ({step.label})" if step.is_build else f"docker push of {step.tag}"
            raise BuildFailed(what, code, tail, log)
    return report


def new_log(version: Version) -> Path:
    """A private (0600) log file for the whole build; it outlives the scratch folder."""
    fd, name = tempfile.mkstemp(prefix=f"forkops-build-{version}-", suffix=".log")
    os.close(fd)
    return Path(name)
