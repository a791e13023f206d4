"""What a whole two-fork upgrade asks of git: nothing once the run is recorded done.

A kill after the run's ``done`` mark cannot be undone by ``--abort`` (a finished run is not
aborted), so the command must not still be working in git then: the last report's accounting of
every branch happens before the mark. A ``git`` wrapper first on forkops' PATH notes, for each call,
whether the run file already said done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from forkops.sandbox import Sandbox
from tests.gitutil import resolve_all
from tests.test_upgrade import ROOT

WRAPPER = """#!/bin/sh
if grep -q '"phase": "done"' "$RUN_FILE" 2>/dev/null; then state=after-done; else state=running; fi
printf '%s %s\\n' "$state" "$*" >> "$CALLS"
exec "$REAL_GIT" "$@"
"""


def test_no_git_after_the_run_is_recorded_done(sandbox: Sandbox, tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(WRAPPER)
    (bin_dir / "git").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls),
           "RUN_FILE": str(sandbox.workspace / ".forkops" / "run.json"),
           "REAL_GIT": shutil.which("git") or "git",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def forkops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forkops", *args], cwd=sandbox.workspace, env=env,
                              capture_output=True, text=True, check=False)

    res = forkops("upgrade", "2.18.0")
    commands = 1
    while res.returncode == 1 and commands < 8:  # each stop resolved as a person would, then --continue
        for name in ("tensorflow", "serving"):
            resolve_all(sandbox.clone(name))
        res = forkops("upgrade", "--continue")
        commands += 1
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done" in res.stdout and commands > 1  # stops, then a --continue that finished the run
    logged = calls.read_text().splitlines()
    assert logged and logged[-1].startswith("running")
    assert [line for line in logged if line.startswith("after-done")] == []
