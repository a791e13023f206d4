"""The environment and the trace of every git process forkops starts.

Shared by :mod:`forkops.git` and by the guard hooks (:mod:`forkops.guard_hook`), which run on
every commit and cannot afford importing :mod:`forkops.git` (dataclasses, pathlib).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence

# Variables that point git at a different repository, index or object store. Inherited from
# a hook or a wrapper they would make forkops act on the wrong repository.
LOCATION_VARS = frozenset({
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_PREFIX", "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_QUARANTINE_PATH",
})


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.setdefault("GIT_EDITOR", "true")  # never open an editor under forkops
    if extra:
        env.update(extra)
    return env


def trace(argv: Sequence[str], cwd: object, code: int, started: float) -> None:
    """One stderr line per git command when FORKOPS_DEBUG=1 (the overhead of forkops is its
    git processes: this is how they are counted)."""
    if os.environ.get("FORKOPS_DEBUG") == "1":
        where = f" (in {cwd})" if cwd is not None else ""
        ms = (time.perf_counter() - started) * 1000
        print(f"forkops: git {' '.join(argv)}{where} -> {code} [{ms:.0f} ms]", file=sys.stderr)
