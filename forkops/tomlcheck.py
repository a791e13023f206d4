"""Typed reading of TOML tables that reports every problem at once.

Each problem is formatted ``file: key.path: problem`` (pre-commit's clientlib style); unknown
keys become warnings, not errors, so a newer file still loads in an older forkops.
"""

from __future__ import annotations

import builtins
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from forkops.errors import BadInput, ConfigError
from forkops.version import VersionBound


def load_toml(path: Path, label: str | None = None) -> dict[str, Any]:
    """Parse a TOML file (forkops.toml, keys.toml, playbooks: every config goes through here).

    Anything that is not a readable regular file of valid UTF-8 TOML is a one-line BadInput /
    ConfigError naming the file: a syntax error (with its line), invalid UTF-8 (with the byte
    offset), nesting too deep for the parser, a FIFO or a directory.
    """
    name = label or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadInput(f"{name}: not a regular file")
            os.set_blocking(fd, True)
            data = fh.read()
    except FileNotFoundError:
        raise BadInput(f"{name}: no such file") from None
    except OSError as exc:
        raise BadInput(f"{name}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: invalid UTF-8 at byte {exc.start}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError([f"{name}: not valid TOML: arrays or tables nested too deeply"]) from None


class Checker:
    """Collects problems and warnings while reading one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.file}: {key}: {text}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def table(self, data: Any, key: str) -> Table:
        if not isinstance(data, dict):
            self.problem(key, f"expected a table, got {_kind(data)}")
            data = {}
        return Table(self, data, key)


class Table:
    """One TOML table under a dotted key; every getter records what it read."""

    def __init__(self, checker: Checker, data: dict[builtins.str, Any], prefix: builtins.str) -> None:
        self.checker = checker
        self.data = data
        self.prefix = prefix
        self._seen: set[builtins.str] = set()

    def key(self, name: builtins.str) -> builtins.str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: builtins.str) -> bool:
        return name in self.data

    def _get(self, name: builtins.str, *, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if required:
                self.checker.problem(self.key(name), "missing")
            return None
        return self.data[name]

    def str(self, name: builtins.str, default: builtins.str | None = None, *, required: bool = False) -> builtins.str:
        value = self._get(name, required=required and default is None)
        if value is None:
            return default or ""
        if not isinstance(value, str):
            self.checker.problem(self.key(name), f"expected a string, got {_kind(value)}")
            return default or ""
        if required and not value.strip():
            self.checker.problem(self.key(name), "must not be empty")
        return value

    def choice(
        self, name: builtins.str, choices: tuple[builtins.str, ...], default: builtins.str | None = None
    ) -> builtins.str:
        value = self.str(name, default, required=default is None)
        if value and value not in choices:
            self.checker.problem(self.key(name), f"{value!r} is not one of {', '.join(choices)}")
        return value

    def regex(
        self, name: builtins.str, *, required: bool = True, groups: tuple[builtins.str, ...] = ()
    ) -> builtins.str:
        value = self.str(name, required=required)
        if not value:
            return value
        try:
            compiled = re.compile(value, re.MULTILINE)
        except re.error as exc:
            self.checker.problem(self.key(name), f"invalid regular expression: {exc}")
            return value
        for group in groups:
            if group not in compiled.groupindex:
                self.checker.problem(self.key(name), f"regular expression needs a (?P<{group}>...) group")
        return value

    def pattern(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str:
        value = self.str(name, default, required=default is None)
        if value and value.count("{version}") != 1:
            self.checker.problem(self.key(name), f"{value!r} must contain {{version}} exactly once")
        return value

    def bound(self, name: builtins.str) -> VersionBound | None:
        value = self._get(name, required=False)
        if value is None:
            return None
        try:
            return VersionBound.parse(str(value))
        except BadInput:
            self.checker.problem(self.key(name), f"{value!r} is not a version bound like 2.11 or 2.11.2")
            return None

    def int(self, name: builtins.str, default: builtins.int) -> builtins.int:
        value = self._get(name, required=False)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.checker.problem(self.key(name), f"expected an integer, got {_kind(value)}")
            return default
        return value

    def float(self, name: builtins.str, default: builtins.float) -> builtins.float:
        value = self._get(name, required=False)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.checker.problem(self.key(name), f"expected a number, got {_kind(value)}")
            return default
        return builtins.float(value)

    def floats(self, name: builtins.str, default: list[builtins.float]) -> list[builtins.float]:
        value = self._get(name, required=False)
        if value is None:
            return list(default)
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            self.checker.problem(self.key(name), "expected a list of numbers")
            return list(default)
        return [builtins.float(v) for v in value]

    def strs(
        self, name: builtins.str, default: list[builtins.str] | None = None, *, required: bool = False
    ) -> list[builtins.str]:
        value = self._get(name, required=required and default is None)
        if value is None:
            return list(default or [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.checker.problem(self.key(name), "expected a string or a list of strings")
            return list(default or [])
        if required and not value:
            self.checker.problem(self.key(name), "must not be empty")
        return list(value)

    def sub(self, name: builtins.str, *, required: bool = False) -> Table:
        value = self._get(name, required=required)
        return self.checker.table({} if value is None else value, self.key(name))

    def subs(self, name: builtins.str) -> Iterator[Table]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, required=False)
        if value is None:
            return
        if not isinstance(value, list):
            self.checker.problem(self.key(name), f"expected an array of tables, got {_kind(value)}")
            return
        for i, item in enumerate(value):
            yield self.checker.table(item, f"{self.key(name)}[{i}]")

    def finish(self) -> None:
        """Warn about keys nobody read (typos, or options of a newer forkops)."""
        for name in sorted(set(self.data) - self._seen):
            self.checker.warnings.append(f"{self.checker.file}: {self.key(name)}: unknown key, ignored")


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
