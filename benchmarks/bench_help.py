"""CLI start-up cost against its baselines, measured side by side in the same run.

* `forkops --help` against a bare interpreter start (`python -c pass`); issue 2's target:
  median <= 0.15 s wall.
* `forkops status` in a generated sandbox workspace against `git status` in its TensorFlow fork
  plus a bare interpreter start; issue 11's target: ratio <= 2.
* The modules `status --help` imports beyond what `status` uses (the lazy command table's promise).

    python benchmarks/bench_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout: the forkops imported here and by the timed processes is this one.
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
sys.path.insert(0, str(ROOT))


def medians(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each command; the commands take turns so that load spikes hit all."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def modules_after(args: list[str]) -> set[str]:
    code = ("import sys, io, contextlib; from forkops.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): main({args!r})\n"
            "sys.stderr.write(' '.join(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=ENV)
    return set(proc.stderr.split())


def import_costs(args: list[str], names: tuple[str, ...]) -> dict[str, float]:
    """Cumulative import time (ms, one run, -X importtime) of the named modules during ``args``:
    where a command's start-up goes."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "forkops", *args], capture_output=True,
                          text=True, env=ENV, check=False)
    costs: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() in names:
            costs[parts[2].strip()] = int(parts[1]) / 1000
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from forkops import sandbox

    with tempfile.TemporaryDirectory(prefix="forkops-bench-") as tmp:
        ws = sandbox.build(Path(tmp) / "sb").workspace
        py = [sys.executable]
        m = medians({
            "python": [*py, "-c", "pass"],
            "git status": ["git", "-C", str(ws / "tensorflow"), "status"],
            "help": [*py, "-m", "forkops", "--help"],
            "status": [*py, "-m", "forkops", "-C", str(ws), "status"],
            "status help": [*py, "-m", "forkops", "status", "--help"],
        }, args.runs)
        costs = import_costs(["-C", str(ws), "status"], ("typer", "rich.console", "forkops.upgrade"))
    baseline, git_status, helps, status, status_help = m.values()
    print(f"python -c pass (baseline):     median {baseline * 1000:5.0f} ms over {args.runs} runs")
    print(f"git status (sandbox fork):     median {git_status * 1000:5.0f} ms")
    print(f"forkops --help:                median {helps * 1000:5.0f} ms  ratio to python {helps / baseline:.1f}x  "
          f"target <= 150 ms: {'met' if helps <= 0.15 else 'NOT met'}")
    print(f"forkops status --help:         median {status_help * 1000:5.0f} ms")
    ratio = status / (git_status + baseline)
    print(f"forkops status:                median {status * 1000:5.0f} ms  ratio to (git status + python) "
          f"{ratio:.2f}x  target <= 2x: {'met' if ratio <= 2 else 'NOT met'}")
    print("imports during `forkops status` (ms, cumulative, one run): "
          + ", ".join(f"{name} {ms:.0f}" for name, ms in costs.items()))
    heavy = ("typer", "rich", "git", "cryptography", "forkops.sandbox", "forkops.upgrade")
    print(f"heavy modules imported by `forkops --help`: {sorted(modules_after(['--help']) & set(heavy)) or 'none'}")
    # What `status --help` needs: the parser and the status command's own module, nothing else.
    extra = sorted(m for m in modules_after(["status", "--help"])
                   if m.startswith(("forkops", "rich", "git", "cryptography")) and m not in
                   {"forkops", "forkops.cli", "forkops.cli.app", "forkops.cli.common", "forkops.cli.upgrade",
                    "forkops.errors"})
    print(f"modules `forkops status --help` imports beyond its own: {extra or 'none'}")


if __name__ == "__main__":
    main()
