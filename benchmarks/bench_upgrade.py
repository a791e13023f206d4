"""forkops upgrade vs the documented raw git commands, on identical generated forks of two sizes.

Baseline (SPEC section 1, measured in the same run on identical fresh clones):

    git remote add tf <upstream>
    git fetch tf refs/tags/v2.5.0:refs/tags/v2.5.0
    git branch tf2.5.0 refs/tags/v2.5.0
    git branch b2.5.0 b2.4.0
    git rebase --onto tf2.5.0 v2.4.0 b2.5.0

forkops: ``python -m forkops upgrade 2.5.0 --repo tensorflow`` (the process, start-up included),
which also checks the worktree and identity, asks upstream and origin for their refs, records
state and backups, accounts for every stack commit, scans the run's commits for the key, runs
the anchors and prints the range-diff. Each run starts from a fresh clone (not timed).

Sizes (files in the tree at the tag): ``small`` 653 files (target forkops/raw <= 1.5: git's own
work is small, so forkops' fixed costs show) and ``large`` 35,000 files, TensorFlow-sized
(target <= 1.2). Prints the medians, the ratio, the CPU time (user + sys of the processes: steadier
than wall time on a shared machine) and the number of git processes forkops ran
(``FORKOPS_DEBUG=1`` traces each one) against the 5 of the raw flow.

    python benchmarks/bench_upgrade.py [--sizes small,large] [--dir DIR] [--runs 5]

``--dir`` keeps the generated sandboxes (the large one takes minutes) for later runs.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forkops import sandbox
from forkops.git import git_env

VERSION = "2.5.0"
ROOT = Path(__file__).resolve().parents[1]
# name -> (filler files, filler commits, target ratio); the sandbox adds 8 files of its own.
SIZES = {"small": (645, 2000, 1.5), "large": (34_992, 20_000, 1.2)}


def children_cpu() -> float:
    """CPU seconds (user + sys) of every finished child process so far: on a shared machine
    wall time is noisy, CPU time much less."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], env=git_env(), check=True, capture_output=True)


def fresh_clone(sb: sandbox.Sandbox, into: Path) -> Path:
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    clone = into / "tensorflow"
    subprocess.run(["git", "clone", "--quiet", str(sb.origin["tensorflow"]), str(clone)], env=git_env(),
                   check=True, capture_output=True)
    (into / "forkops.toml").write_text(
        f'[repos.tensorflow]\npath = "tensorflow"\norigin = "{sb.origin["tensorflow"]}"\n'
        f'upstream = "{sb.upstream_url("tensorflow")}"\nplaybook = "tensorflow"\n')
    return clone


def raw(sb: sandbox.Sandbox, clone: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) of the documented flow."""
    t, cpu = time.perf_counter(), children_cpu()
    git(clone, "remote", "add", "tf", sb.upstream_url("tensorflow"))
    git(clone, "fetch", "--quiet", "--no-tags", "tf", f"refs/tags/v{VERSION}:refs/tags/v{VERSION}")
    git(clone, "branch", f"tf{VERSION}", f"refs/tags/v{VERSION}")
    git(clone, "branch", f"b{VERSION}", "b2.4.0")
    git(clone, "rebase", "--onto", f"tf{VERSION}", "v2.4.0", f"b{VERSION}")
    return time.perf_counter() - t, children_cpu() - cpu


def forkops(workspace: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, git processes) of one forkops upgrade."""
    env = {**os.environ, "FORKOPS_DEBUG": "1", "PYTHONPATH": str(ROOT)}
    t, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, "-m", "forkops", "upgrade", VERSION, "--repo", "tensorflow"],
                          cwd=workspace, capture_output=True, text=True, check=False, env=env)
    elapsed, used = time.perf_counter() - t, children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"forkops failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return elapsed, used, sum(1 for line in proc.stderr.splitlines() if line.startswith("forkops: git "))


def load_or_build(root: Path, files: int, commits: int) -> sandbox.Sandbox:
    if (root / "upstream" / "tensorflow").is_dir():
        sb = sandbox.Sandbox(root=root.resolve(), workspace=root.resolve() / "workspace")
        for name in ("tensorflow", "serving"):
            sb.upstream[name] = sb.root / "upstream" / name
            sb.origin[name] = sb.root / "origin" / f"{name}.git"
        print(f"reusing the sandbox in {root}")
        return sb
    t = time.perf_counter()
    sb = sandbox.build(root, filler_files=files, filler_commits=commits, clone=False)
    print(f"built the sandbox in {time.perf_counter() - t:.1f} s")
    return sb


def measure(name: str, root: Path, tmp: Path, runs: int) -> None:
    files, commits, target = SIZES[name]
    sb = load_or_build(root, files, commits)
    up = sb.upstream["tensorflow"]
    n_commits = subprocess.run(["git", "-C", str(up), "rev-list", "--all", "--count"], capture_output=True,
                               text=True, check=True).stdout.strip()
    n_files = subprocess.run(["git", "-C", str(up), "ls-tree", "-r", "--name-only", f"refs/tags/v{VERSION}"],
                             capture_output=True, text=True, check=True).stdout.count("\n")
    print(f"[{name}] TensorFlow upstream: {n_commits} commits, {n_files} files at v{VERSION}")
    raw_times, fo_times, raw_cpu, fo_cpu, procs = [], [], [], [], []
    for i in range(runs):
        # alternate the order so neither side always runs with a warmer cache
        order = ("raw", "forkops") if i % 2 == 0 else ("forkops", "raw")
        for which in order:
            ws = tmp / f"{name}-run-{which}"
            clone = fresh_clone(sb, ws)
            if which == "raw":
                seconds, used = raw(sb, clone)
                raw_times.append(seconds)
                raw_cpu.append(used)
            else:
                seconds, used, count = forkops(ws)
                fo_times.append(seconds)
                fo_cpu.append(used)
                procs.append(count)
    r, f = statistics.median(raw_times), statistics.median(fo_times)
    rc, fc = statistics.median(raw_cpu), statistics.median(fo_cpu)
    print(f"[{name}] raw git commands : median {r:.3f} s  ({', '.join(f'{x:.3f}' for x in raw_times)}), "
          f"CPU {rc:.3f} s, 5 git processes")
    print(f"[{name}] forkops upgrade  : median {f:.3f} s  ({', '.join(f'{x:.3f}' for x in fo_times)}), "
          f"CPU {fc:.3f} s, {statistics.median(procs):.0f} git processes")
    print(f"[{name}] ratio forkops/raw: {f / r:.2f} (target <= {target}); CPU ratio {fc / rc:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where to build (or reuse) the sandboxes")
    ap.add_argument("--sizes", default="small,large", help="comma-separated: small, large")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    # An installed forkops runs from byte-code (pip compiles it); with PYTHONDONTWRITEBYTECODE
    # set, a source checkout would be compiled again by every run (~0.1 s of CPU).
    compileall.compile_dir(ROOT / "forkops", quiet=1)

    tmp = Path(tempfile.mkdtemp(prefix="forkops-bench-"))
    try:
        for name in args.sizes.split(","):
            if name not in SIZES:
                raise SystemExit(f"unknown size {name!r} (small, large)")
            measure(name, (args.dir or tmp) / f"sb-{name}", tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
