"""The process boundary to the ``docker`` command-line client.

Every docker invocation in forkops goes through :class:`Docker`, so the tests can put a
stand-in ``docker`` executable first on ``PATH`` and record exactly what forkops runs.
Invariants: no argument ever carries key material (callers pass paths and tags only), and a
missing client or an unreachable engine is an :class:`DockerUnavailable` (exit 3) with one
line saying which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from forkops.errors import ExternalError

TAIL_LINES = 25


class LineFilter(Protocol):
    """A stream filter over output lines (forkops.secrets.StreamRedactor): lines in, released
    lines out, possibly later; ``flush`` releases what it still holds."""

    def feed(self, line: bytes) -> list[bytes]: ...

    def flush(self) -> list[bytes]: ...


class DockerUnavailable(ExternalError):
    """No docker client on PATH, or no Docker engine reachable from it: exit 3."""


class DockerFailed(ExternalError):
    """A docker command failed; carries its last output lines and the full log's path."""

    def __init__(self, what: str, returncode: int, tail: Sequence[str], log: Path | None = None) -> None:
        self.what = what
        self.returncode = returncode
        self.tail = list(tail)
        self.log = log
        where = f"; full log: {log}" if log else ""
        last = self.tail[-1].strip() if self.tail else "no output"
        super().__init__(f"{what} failed (exit {returncode}): {last}{where}")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1].strip() if text else f"exit {self.returncode}"


@dataclass(frozen=True)
class Engine:
    client: str
    server: str


class Docker:
    """Runs the docker client found on ``PATH`` (or ``executable``)."""

    def __init__(self, executable: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        self.executable = executable or shutil.which("docker")
        self.env = dict(env) if env is not None else None

    def _argv(self, args: Sequence[str]) -> list[str]:
        if not self.executable:
            raise DockerUnavailable("docker is not installed (no `docker` on PATH)")
        return [self.executable, *args]

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        env.update(extra or {})
        return env

    def run(self, *args: str, timeout: float | None = 60, env: Mapping[str, str] | None = None) -> Result:
        """Run ``docker ARGS`` and capture its output (never raises on a non-zero exit)."""
        try:
            proc = subprocess.run(
                self._argv(args), capture_output=True, text=True, timeout=timeout,
                env=self._env(env), stdin=subprocess.DEVNULL, check=False,
            )
        except FileNotFoundError:
            raise DockerUnavailable(f"docker is not installed ({self.executable} not found)") from None
        except subprocess.TimeoutExpired:
            return Result(124, "", f"docker {args[0] if args else ''} timed out after {timeout} s")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def check(self, *args: str, what: str, timeout: float | None = 60) -> str:
        """Run ``docker ARGS``; return stdout, or raise DockerFailed with its last lines."""
        res = self.run(*args, timeout=timeout)
        if not res.ok:
            raise DockerFailed(what, res.returncode, (res.stderr or res.stdout).splitlines()[-TAIL_LINES:])
        return res.stdout

    def stream(
        self,
        args: Sequence[str],
        *,
        log: Path,
        on_line: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
        redact: LineFilter | None = None,
    ) -> tuple[int, list[str]]:
        """Run ``docker ARGS`` with stdout+stderr appended to ``log`` line by line.

        Returns (exit code, last lines). ``on_line`` sees every line (for a live status).
        ``redact`` sees the raw output (bytes, before decoding) as a stream of lines and releases
        them rewritten: only what it releases reaches the log, ``on_line`` and the returned tail
        (so a secret split over several lines is caught).
        A KeyboardInterrupt terminates the child before propagating.
        """
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        argv = self._argv(args)

        def emit(fh: TextIO, raws: Iterable[bytes]) -> None:
            for raw in raws:
                line = raw.decode("utf-8", "replace")
                fh.write(line)
                fh.flush()
                tail.append(line.rstrip("\r\n"))
                if on_line is not None:
                    on_line(line.rstrip("\r\n"))

        def release(raw: bytes) -> list[bytes]:
            return [raw] if redact is None else redact.feed(raw)

        def drain() -> list[bytes]:
            return [] if redact is None else redact.flush()

        with log.open("a", encoding="utf-8") as fh:
            header = ("$ docker " + " ".join(args) + "\n").encode()
            for raw in (*release(header), *drain()):
                fh.write(raw.decode("utf-8", "replace"))
            fh.flush()
            try:
                # Bytes, so redaction sees the output exactly as docker wrote it.
                proc = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self._env(env),
                )
            except FileNotFoundError:
                raise DockerUnavailable(f"docker is not installed ({self.executable} not found)") from None
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    emit(fh, release(raw))
                code = proc.wait()
            except BaseException:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            finally:
                emit(fh, drain())
        return code, list(tail)

    # -- facts ---------------------------------------------------------------------------
    def client_version(self) -> str:
        res = self.run("version", "--format", "{{.Client.Version}}", timeout=20)
        version = res.stdout.strip()
        if not version:
            raise DockerUnavailable(f"the docker client does not work: {res.last_line()}")
        return version

    def engine(self) -> Engine:
        """Client and engine versions; DockerUnavailable when no engine is reachable."""
        res = self.run("version", "--format", "{{.Client.Version}} {{.Server.Version}}", timeout=20)
        parts = res.stdout.split()
        if res.ok and len(parts) == 2:
            return Engine(parts[0], parts[1])
        raise DockerUnavailable(f"no Docker engine is reachable: {res.last_line()}")

    def require_engine(self) -> Engine:
        return self.engine()
