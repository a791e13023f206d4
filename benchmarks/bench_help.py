"""`forkops --help` start-up time against a bare Python interpreter start, same run.

Target (issue 2): median <= 0.15 s wall for `forkops --help` on the CI machine. Prints the
median of N runs for each command and the ratio forkops/python, plus the modules that a
lazy-import regression would pull in.

    python benchmarks/bench_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_modules_loaded() -> list[str]:
    code = ("import sys, io, contextlib; from forkops.cli import main; "
            "contextlib.redirect_stdout(io.StringIO()).__enter__(); main(['--help']); "
            "sys.stderr.write(' '.join(m for m in ('typer', 'rich', 'git', 'cryptography', 'forkops.sandbox', "
            "'forkops.upgrade') if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stderr.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    baseline = median_wall([sys.executable, "-c", "pass"], args.runs)
    forkops = median_wall([sys.executable, "-m", "forkops", "--help"], args.runs)
    command = median_wall([sys.executable, "-m", "forkops", "playbook", "show", "serving"], args.runs)
    print(f"python -c pass (baseline): median {baseline * 1000:.0f} ms over {args.runs} runs")
    print(f"forkops --help:            median {forkops * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio forkops/baseline:    {forkops / baseline:.1f}x   target: forkops <= 150 ms -> "
          f"{'met' if forkops <= 0.15 else 'NOT met'}")
    print(f"for comparison, a command that builds the typer app (playbook show serving): "
          f"median {command * 1000:.0f} ms")
    print(f"heavy modules imported by the CLI at start-up: {heavy_modules_loaded() or 'none'}")


if __name__ == "__main__":
    main()
