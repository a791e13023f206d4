"""forkops upgrade vs the documented raw git commands, on the same large generated repository.

Baseline (SPEC section 1, measured in the same run on identical fresh clones):

    git remote add tf <upstream>
    git fetch tf refs/tags/v2.5.0:refs/tags/v2.5.0
    git branch tf2.5.0 refs/tags/v2.5.0
    git branch b2.5.0 b2.4.0
    git rebase --onto tf2.5.0 v2.4.0 b2.5.0

forkops: ``python -m forkops upgrade 2.5.0 --repo tensorflow`` (the process, start-up included),
which also checks the worktree, asks upstream and origin for their refs, records backups and
state, and runs the anchors. Each run starts from a fresh clone of the fork (not timed).
Prints the medians and the ratio; the target is forkops / raw <= 1.2.

    python benchmarks/bench_upgrade.py [--dir DIR] [--filler-files 3000] [--filler-commits 20000] [--runs 5]

``--dir`` keeps the generated sandbox (it takes minutes at full size) for later runs.
"""

from __future__ import annotations

import argparse
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


def raw(sb: sandbox.Sandbox, clone: Path) -> float:
    t = time.perf_counter()
    git(clone, "remote", "add", "tf", sb.upstream_url("tensorflow"))
    git(clone, "fetch", "--quiet", "--no-tags", "tf", f"refs/tags/v{VERSION}:refs/tags/v{VERSION}")
    git(clone, "branch", f"tf{VERSION}", f"refs/tags/v{VERSION}")
    git(clone, "branch", f"b{VERSION}", "b2.4.0")
    git(clone, "rebase", "--onto", f"tf{VERSION}", "v2.4.0", f"b{VERSION}")
    return time.perf_counter() - t


def forkops(workspace: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "forkops", "upgrade", VERSION, "--repo", "tensorflow"],
                          cwd=workspace, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"forkops failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where to build (or reuse) the sandbox")
    ap.add_argument("--filler-files", type=int, default=3000)
    ap.add_argument("--filler-commits", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="forkops-bench-"))
    root = args.dir or tmp / "sb"
    try:
        if (root / "upstream" / "tensorflow").is_dir():
            sb = sandbox.Sandbox(root=root.resolve(), workspace=root.resolve() / "workspace")
            for name in ("tensorflow", "serving"):
                sb.upstream[name] = sb.root / "upstream" / name
                sb.origin[name] = sb.root / "origin" / f"{name}.git"
            print(f"reusing the sandbox in {root}")
        else:
            t = time.perf_counter()
            sb = sandbox.build(root, filler_files=args.filler_files, filler_commits=args.filler_commits,
                               clone=False)
            print(f"built the sandbox in {time.perf_counter() - t:.1f} s")
        up = sb.upstream["tensorflow"]
        commits = subprocess.run(["git", "-C", str(up), "rev-list", "--all", "--count"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        files = subprocess.run(["git", "-C", str(up), "ls-tree", "-r", "--name-only", f"refs/tags/v{VERSION}"],
                               capture_output=True, text=True, check=True).stdout.count("\n")
        print(f"TensorFlow upstream: {commits} commits, {files} files at v{VERSION}")

        raw_times, fo_times = [], []
        for i in range(args.runs):
            # alternate the order so neither side always runs with a warmer cache
            order = ("raw", "forkops") if i % 2 == 0 else ("forkops", "raw")
            for which in order:
                ws = tmp / f"run-{which}"
                clone = fresh_clone(sb, ws)
                if which == "raw":
                    raw_times.append(raw(sb, clone))
                else:
                    fo_times.append(forkops(ws))
        r, f = statistics.median(raw_times), statistics.median(fo_times)
        print(f"raw git commands : median {r:.3f} s  ({', '.join(f'{x:.3f}' for x in raw_times)})")
        print(f"forkops upgrade  : median {f:.3f} s  ({', '.join(f'{x:.3f}' for x in fo_times)})")
        print(f"ratio forkops/raw: {f / r:.2f} (target <= 1.2)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
