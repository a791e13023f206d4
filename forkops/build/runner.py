"""Running the docker commands: one log (0600) for the whole build, every line redacted.

Invariant: build output passes through :class:`LogRedactor` before it reaches the log, the live
status line or an error's tail.
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


class LogRedactor:
    """Replaces the key (and a non-default IV) in a line of build output with ``<key FP>``.

    Bazel echoes rc options (``--announce_rc``: ``--define=MODEL_ENCRYPT_KEY=...``) and a
    compiler error may quote a key site, so every line of build output passes through here
    before it reaches the log, the live status or the failure tail. Detection is
    :class:`forkops.guard.Matcher` (every encoding the guard knows); the spans are located the
    same way (raw bytes as they are; hex, ``\\xNN`` and byte arrays case- and
    whitespace-insensitively). Invariant: a returned line never holds a secret the Matcher
    finds; if a hit cannot be located, the whole line is withheld.
    """

    def __init__(self, material: KeyMaterial) -> None:
        from forkops.guard import Matcher

        self.matcher = Matcher(material)

    def __call__(self, line: bytes) -> bytes:
        from forkops.guard import squeeze

        if not self.matcher.find(line):
            return line
        body = line.rstrip(b"\r\n")
        end = line[len(body):]
        keep = [i for i, c in enumerate(body) if c not in b" \t\r\n\f\v"]  # norm index -> line index
        norm = body.lower().translate(None, b" \t\r\n\f\v")
        spans: list[tuple[int, int, str]] = []
        for n in self.matcher.needles:
            label = f"<{n.what} {n.fingerprint}>"
            spans += [(a, a + len(n.raw), label) for a in _occurrences(body, n.raw)]
            found = [(a, a + len(f)) for f in (n.hex, n.escaped) for a in _occurrences(norm, f)]
            spans += [(keep[a], keep[b - 1] + 1, label) for a, b in found if b > a]
            squeezed, where = squeeze(body)
            spans += [(where[m.start()], where[m.end() - 1] + 1, label) for m in n.array.finditer(squeezed)]
        out, pos = bytearray(), 0
        for a, b, label in sorted(spans):
            if b <= pos:
                continue
            out += body[pos:max(a, pos)] + label.encode()
            pos = b
        out += body[pos:]
        if self.matcher.find(bytes(out)):
            fps = ", ".join(f"{n.what} {n.fingerprint}" for n in self.matcher.needles)
            return f"<line withheld: it holds key material ({fps})>".encode() + end
        return bytes(out) + end


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    found, i = [], data.find(needle)
    while needle and i >= 0:
        found.append(i)
        i = data.find(needle, i + 1)
    return found


def run_builds(
    docker: Docker,
    steps: Sequence[BuildStep],
    *,
    log: Path,
    material: KeyMaterial,
    on_line: Callable[[BuildStep, int, str], None] | None = None,
) -> BuildReport:
    """Run each step in order; stop at the first failure with BuildFailed.

    Every output line is redacted (:class:`LogRedactor`) before the log, ``on_line`` and the
    failure tail see it.
    """
    report = BuildReport(list(steps), log)
    redact = LogRedactor(material)
    # BUILDKIT_PROGRESS=plain: line-oriented output from BuildKit; the classic builder ignores it.
    env = {"BUILDKIT_PROGRESS": "plain"}
    for index, step in enumerate(steps):
        started = time.monotonic()

        def forward(line: str, step: BuildStep = step, index: int = index) -> None:
            if on_line is not None:
                on_line(step, index, line)

        code, tail = docker.stream(step.args, log=log, on_line=forward, env={**env, **dict(step.env)},
                                   redact=redact)
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
