"""`forkops guard scan` over a whole history vs. git's own pickaxe, measured in the same run.

Baseline: `git log -p -S KEY --all` (a maintainer's manual check; it finds only the raw string,
not hex, \\x escapes or byte arrays, and it reads every diff). forkops reads each introduced
blob once and looks for all four encodings. Both run as subprocesses on the same generated
sandbox (sandbox.build with FILES filler files and COMMITS filler commits), with the key
committed in one fork commit as a C byte array so both must walk everything.

A second line times the installed pre-commit hook (a real `git commit`, refused) against a
`git commit --no-verify` of the same change: the hook's cost per commit.

    python benchmarks/bench_guard.py [--files 400] [--commits 400] [--runs 3]

Targets: in-process scan ratio <= 3 (it finds four encodings, pickaxe one); hook overhead < 1 s
(it is mostly Python + CLI start-up, which the process ratio includes).
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

from forkops import guard, keyfile, keys, sandbox
from forkops.git import Repo

KEY = b"Bench0Key1Bench2"


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
    return time.perf_counter() - t, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--commits", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = sandbox.git_env({"HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1",
                               "GIT_CONFIG_GLOBAL": str(root / "gitconfig")})
        (root / "gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n")
        os.environ.update(env)
        sb = sandbox.build(root / "sb", filler_files=args.files, filler_commits=args.commits)
        ws, tf = sb.workspace, sb.clone("tensorflow")
        subprocess.run(["git", "-C", str(tf), "fetch", "-q", str(sb.upstream["tensorflow"]),
                        "refs/heads/*:refs/heads/up/*"], check=True, env=env)
        keys_file = ws / "keys.toml"
        keys_file.write_text(f'[model]\nkey = "{KEY.decode()}"\n')
        keys_file.chmod(0o600)
        forkops = [sys.executable, "-m", "forkops"]
        assert subprocess.run([*forkops, "set-key"], cwd=ws, env=env, capture_output=True).returncode == 0
        subprocess.run(["git", "-C", str(tf), "commit", "-q", "--no-verify", "-am", "leak"], check=True, env=env)
        subprocess.run(["git", "-C", str(tf), "checkout", "-q", "HEAD~1", "--", "."], check=True, env=env)
        blobs = subprocess.run(["git", "-C", str(tf), "rev-list", "--objects", "--all"], capture_output=True,
                               text=True, env=env, check=True).stdout.count("\n")
        commits = subprocess.run(["git", "-C", str(tf), "rev-list", "--count", "--all"], capture_output=True,
                                 text=True, env=env, check=True).stdout.strip()

        scan, pick = [], []
        for _ in range(args.runs):
            t, rc = _time([*forkops, "guard", "scan", "--repo", "tensorflow", "--", "--all"], ws, env)
            assert rc == 1, rc
            scan.append(t)
            t, rc = _time(["git", "log", "-p", "--all", "--format=%H", "-S", KEY.decode()], tf, env)
            pick.append(t)
        engine = []
        matcher = guard.Matcher(keyfile.KeyMaterial("aes-128-cbc", KEY, b"7" * 16))
        for _ in range(args.runs):
            t0 = time.perf_counter()
            _, found = guard.scan_commits(Repo(tf), ["--all"], matcher)
            engine.append(time.perf_counter() - t0)
            assert found
        s, p, e = statistics.median(scan), statistics.median(pick), statistics.median(engine)
        print(f"history: {commits} commits, {blobs} objects")
        print(f"guard scan --all (process): {s:.3f}s   git log -p -S --all (baseline): {p:.3f}s   ratio {s / p:.2f}")
        print(f"guard.scan_commits in-process (no Python start-up): {e:.3f}s   ratio {e / p:.2f}")

        (tf / "tensorflow/tools/cryptfile/cryptfile.cc").write_text(
            'static const char kKey[] = ' + keys.encode(KEY, "c-string") + ';\n')
        subprocess.run(["git", "-C", str(tf), "add", "-A"], check=True, env=env)
        hook, plain = [], []
        for _ in range(args.runs):
            t, rc = _time(["git", "commit", "-q", "-m", "x"], tf, env)
            assert rc != 0
            hook.append(t)
            t, rc = _time(["git", "commit", "-q", "--no-verify", "-m", "x"], tf, env)
            assert rc == 0
            plain.append(t)
            subprocess.run(["git", "-C", str(tf), "reset", "-q", "--soft", "HEAD~1"], check=True, env=env)
        h, n = statistics.median(hook), statistics.median(plain)
        print(f"git commit with guard hook: {h:.3f}s   --no-verify (baseline): {n:.3f}s   "
              f"ratio {h / n:.1f}, overhead {h - n:.3f}s")


if __name__ == "__main__":
    main()
