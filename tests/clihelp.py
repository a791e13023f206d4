"""Run the real CLI in-process and capture what a user would see."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from forkops.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Result(code, out.getvalue(), err.getvalue())
