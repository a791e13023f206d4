"""CLI start-up cost against its baselines, measured side by side in the same run.

* `forkops --help` against a bare interpreter start (`python -c pass`); issue 2's target:
  median <= 0.15 s wall.
* `forkops status` in a generated sandbox workspace against `git status` in its TensorFlow fork
  plus a bare interpreter start; issue 11's target: ratio <= 2 (wall medians). The same ratio
  of CPU time (user + sys of the child, mean) is printed too: it moves less when the machine is
  busy. `forkops status` at a conflict (an upgrade stopped in a second sandbox) is shown beside
  it, without a target: it reads the stop and asks git for the conflict's context.
* The modules `status --help` imports beyond what `status` uses (the lazy command table's promise).

Byte code is cached as in an installed forkops (pip compiles it): the timed processes write and
read it under a temporary PYTHONPYCACHEPREFIX even where PYTHONDONTWRITEBYTECODE is set, and one
untimed round warms it up. Without that every run would compile forkops's sources again.

    python benchmarks/bench_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout: the forkops imported here and by the timed processes is this one.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(cache)}


def measure(cmds: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(median wall, mean CPU) seconds of each command; the commands take turns so that load
    spikes hit all, after one untimed round (byte code, file cache)."""
    wall: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for i in range(runs + 1):
        for name, cmd in cmds.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i:
                wall[name].append(elapsed)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {name: (statistics.median(wall[name]), statistics.mean(cpu[name])) for name in cmds}


def modules_after(args: list[str], env: dict[str, str]) -> set[str]:
    code = ("import sys, io, contextlib; from forkops.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): main({args!r})\n"
            "sys.stderr.write(' '.join(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return set(proc.stderr.split())


def import_costs(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Cumulative import time (ms, one run, -X importtime) of the top-level imports of ``args``
    beyond a bare interpreter's: where a command's start-up goes."""
    def top(argv: list[str]) -> dict[str, float]:
        proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                              env=env, check=False)
        costs: dict[str, float] = {}
        for line in proc.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
                costs[parts[2].strip()] = int(parts[1]) / 1000
        return costs

    baseline = top(["-c", "pass"])
    return {name: ms for name, ms in top(["-m", "forkops", *args]).items() if name not in baseline}


def stopped_workspace(root: Path, env: dict[str, str]) -> Path:
    """A second sandbox whose upgrade stopped at a conflict (TensorFlow, 2.18.0: .bazelrc)."""
    from forkops import sandbox

    ws = sandbox.build(root).workspace
    proc = subprocess.run([sys.executable, "-m", "forkops", "-C", str(ws), "upgrade", "2.18.0"], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 1:
        raise SystemExit(f"the upgrade did not stop at a conflict (exit {proc.returncode}): {proc.stderr}")
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from forkops import sandbox

    with tempfile.TemporaryDirectory(prefix="forkops-bench-") as tmp:
        env = timed_env(Path(tmp) / "pycache")
        ws = sandbox.build(Path(tmp) / "sb").workspace
        stopped = stopped_workspace(Path(tmp) / "stopped", env)
        py = [sys.executable]
        m = measure({
            "python": [*py, "-c", "pass"],
            "git status": ["git", "-C", str(ws / "tensorflow"), "status"],
            "help": [*py, "-m", "forkops", "--help"],
            "status help": [*py, "-m", "forkops", "status", "--help"],
            "status": [*py, "-m", "forkops", "-C", str(ws), "status"],
            "status stopped": [*py, "-m", "forkops", "-C", str(stopped), "status"],
        }, args.runs, env)
        costs = import_costs(["-C", str(ws), "status"], env)
        help_modules = modules_after(["--help"], env)
        status_help_modules = modules_after(["status", "--help"], env)
    (baseline, base_cpu), (git_status, git_cpu), (helps, _), (status_help, _), (status, cpu), (stop, stop_cpu) = (
        m.values())
    print(f"python -c pass (baseline):     median {baseline * 1000:5.0f} ms over {args.runs} runs  "
          f"(CPU {base_cpu * 1000:.0f} ms)")
    print(f"git status (sandbox fork):     median {git_status * 1000:5.0f} ms  (CPU {git_cpu * 1000:.0f} ms)")
    print(f"forkops --help:                median {helps * 1000:5.0f} ms  ratio to python {helps / baseline:.1f}x  "
          f"target <= 150 ms: {'met' if helps <= 0.15 else 'NOT met'}")
    print(f"forkops status --help:         median {status_help * 1000:5.0f} ms")
    ratio = status / (git_status + baseline)
    print(f"forkops status:                median {status * 1000:5.0f} ms  ratio to (git status + python) "
          f"{ratio:.2f}x  target <= 2x: {'met' if ratio <= 2 else 'NOT met'}")
    print(f"  the same in CPU time:        mean   {cpu * 1000:5.0f} ms  ratio {cpu / (git_cpu + base_cpu):.2f}x")
    print(f"forkops status at a conflict:  median {stop * 1000:5.0f} ms  ratio {stop / (git_status + baseline):.2f}x"
          f"  (CPU {stop_cpu * 1000:.0f} ms, ratio {stop_cpu / (git_cpu + base_cpu):.2f}x; no target)")
    print("imports of `forkops status` beyond python's own (ms, cumulative, one run): "
          + ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(costs.items(), key=lambda kv: -kv[1])))
    heavy = ("typer", "rich", "git", "cryptography", "forkops.sandbox", "forkops.upgrade")
    print(f"heavy modules imported by `forkops --help`: {sorted(help_modules & set(heavy)) or 'none'}")
    # What `status --help` needs: the parser and the status command's own module, nothing else.
    extra = sorted(m for m in status_help_modules
                   if m.startswith(("forkops", "rich", "git", "cryptography")) and m not in
                   {"forkops", "forkops.cli", "forkops.cli.app", "forkops.cli.common", "forkops.cli.context",
                    "forkops.cli.upgrade", "forkops.errors"})
    print(f"modules `forkops status --help` imports beyond its own: {extra or 'none'}")


if __name__ == "__main__":
    main()
