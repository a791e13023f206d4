"""One exception tree and one exit-code enum; ``forkops.cli`` maps them to exit codes.

Every error forkops expects carries a one-line message that is safe to print: it never
contains key material (callers pass fingerprints, never keys).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    OK = 0
    NEEDS_PERSON = 1  # conflicts, a failed anchor, a failed smoke test: someone must look
    BAD_INPUT = 2  # usage, malformed input, a state forkops refuses to start from
    EXTERNAL = 3  # git, docker, openssl or the network failed (or forkops itself crashed)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, what shells report)


class ForkopsError(Exception):
    """Base of every error forkops expects. ``str(err)`` is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.EXTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(ForkopsError):
    """The user asked for something malformed or impossible: exit 2."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(BadInput):
    """A configuration file (forkops.toml, a playbook, keys.toml) is invalid.

    Holds every problem found, each formatted ``file: key: problem``.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid configuration"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class NeedsPerson(ForkopsError):
    """forkops stopped where a person must decide (conflict, failed anchor): exit 1."""

    exit_code = ExitCode.NEEDS_PERSON


class Interrupted(ForkopsError):
    """Ctrl-C or SIGTERM stopped the command: exit 130."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")


class ExternalError(ForkopsError):
    """An external tool or the network failed: exit 3."""

    exit_code = ExitCode.EXTERNAL


class GitError(ExternalError):
    """A git command failed. Carries the command, its exit status and its stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"git {' '.join(self.args_[:3])}... failed ({returncode}): {last}")
