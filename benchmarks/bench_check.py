"""`forkops check` over many upstream tags vs. the baseline a maintainer would run: a loop of
real `git rebase --onto TAG BASE START` (then `--abort` on a conflict) in a scratch clone.

Both run in the same process run on the same generated repository: a TensorFlow-like upstream
(sandbox.Generator) with FILES files in directories of 100, TAGS release tags each cut on its own
release branch, and a fork branch b2.0.0 carrying 5 patches (the decryption patch in env.cc,
.bazelrc, two edits of files upstream rewrites from release 2.20 on -> conflicts, a new file).
Upstream removes `Status::OK()` (which the decryption patch uses) before release 2.15, so API
drift is found, not only looked for. `forkops check` runs as the real command (a subprocess,
Python start-up included) and does everything it does for a user: ls-remote, tag selection,
prediction, conflict context at each stop, anchors on each clean result and on each tag, drift.

    python benchmarks/bench_check.py [--files 2000,35000] [--tags 30]

Targets (issue 14): ratio (check / rebase loop) <= 0.05 on a Serving-sized tree (2,000 files),
<= 0.1 on a TensorFlow-sized one (35,000 files, 30 tags).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forkops import sandbox
from forkops.sandbox import Generator

FORK = "Fork Maintainer <maintainer@example.com>"


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check,
                          env=sandbox.git_env())


def _filler_paths(files: int) -> list[str]:
    return [f"tensorflow/core/kernels/d{i // 100:03d}/kernel_{i:05d}.cc" for i in range(files)]


def build(root: Path, files: int, tags: int) -> tuple[Path, Path]:
    """(workspace, fork clone)."""
    upstream = root / "upstream"
    subprocess.run(["git", "init", "--quiet", str(upstream)], check=True)
    gen = Generator(upstream)
    filler = _filler_paths(files)
    hot = filler[:2]  # the files the fork edits; upstream rewrites them from 2.20 on
    gen.commit("master", "initial", {
        sandbox.TF_CORE: sandbox.tf_env_cc("core"), ".bazelrc": sandbox.tf_bazelrc((2, 4)),
        "README.md": "# TensorFlow\n", **{p: sandbox._filler(p, 0) for p in filler}})
    for minor in range(tags):
        for i in range(3):
            path = filler[2 + (minor * 37 + i * 101) % (files - 2)]
            gen.commit("master", f"Internal change {minor}.{i}", {path: sandbox._filler(path, minor * 3 + i + 1)})
        if minor == 15:
            gen.commit("master", "Remove the deprecated Status::OK(); use absl::OkStatus()",
                       {sandbox.TF_CORE: sandbox.tf_env_cc("core").replace("Status::OK()", "absl::OkStatus()")})
        if minor >= 20:
            gen.commit("master", f"Rewrite hot kernels {minor}",
                       {p: sandbox._filler(p, 0).replace("// step 3", f"// step 3 upstream {minor}") for p in hot})
        branch = f"r2.{minor}"
        gen.branch(branch, "master")
        gen.commit(branch, f"Update version for 2.{minor}.0 release.", sandbox.tf_version_files(2, minor, 0, ""))
        gen.tag(f"v2.{minor}.0", branch, f"TensorFlow 2.{minor}.0")
    gen.flush()

    clone = root / "workspace" / "tensorflow"
    subprocess.run(["git", "clone", "--quiet", str(upstream), str(clone)], check=True, env=sandbox.git_env())
    fork = Generator(clone, start_time=sandbox.T0 + 10_000_000)
    base_sha = _git(clone, "rev-parse", "refs/tags/v2.0.0^{commit}").stdout.strip()
    base_files = {p: _git(clone, "show", f"{base_sha}:{p}").stdout for p in (sandbox.TF_CORE, ".bazelrc", *hot)}
    fork.load_branch("b2.0.0", base_sha, base_files)
    fork.commit("b2.0.0", "Decrypt models in ReadBinaryProto",
                {sandbox.TF_CORE: sandbox.fork_env_cc(base_files[sandbox.TF_CORE])}, author=FORK)
    fork.commit("b2.0.0", "Link Crypto++", {".bazelrc": sandbox.fork_bazelrc(base_files[".bazelrc"])}, author=FORK)
    for p in hot:
        fork.commit("b2.0.0", f"Tune {Path(p).stem}", {p: base_files[p].replace("// step 3", "// fork tuning")},
                    author=FORK)
    fork.commit("b2.0.0", "Add cryptfile tool", {"tensorflow/tools/cryptfile/cryptfile.cc": "int main() {}\n"},
                author=FORK)
    fork.flush()
    ws = root / "workspace"
    (ws / "forkops.toml").write_text(
        f'[repos.tensorflow]\npath = "tensorflow"\norigin = "{upstream}"\n'
        f'upstream = "{upstream.as_uri()}"\nplaybook = "tensorflow"\n')
    return ws, clone


def time_check(ws: Path) -> tuple[float, dict[str, object]]:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "forkops", "-C", str(ws), "check", "--repo", "tensorflow",
                           "--json"], capture_output=True, text=True, env=sandbox.git_env())
    elapsed = time.perf_counter() - began
    if proc.returncode not in (0, 1):
        raise SystemExit(f"forkops check failed ({proc.returncode}): {proc.stderr}")
    return elapsed, json.loads(proc.stdout)


def time_rebase_loop(clone: Path, scratch: Path, doc: dict[str, object]) -> tuple[float, list[str]]:
    subprocess.run(["git", "clone", "--quiet", "--shared", str(clone), str(scratch)], check=True,
                   env=sandbox.git_env())
    base, start = str(doc["base_sha"]), str(doc["start_sha"])
    results = doc["results"]
    assert isinstance(results, list)
    _git(scratch, "checkout", "--quiet", "--detach", start)
    outcomes = []
    began = time.perf_counter()
    for r in results:
        _git(scratch, "checkout", "--quiet", "--detach", start)
        if _git(scratch, "rebase", "--onto", r["onto"], base, check=False).returncode == 0:
            outcomes.append("clean")
        else:
            outcomes.append("conflict")
            _git(scratch, "rebase", "--abort")
    return time.perf_counter() - began, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="2000,35000")
    parser.add_argument("--tags", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("GIT_AUTHOR_NAME", "bench")
    os.environ.setdefault("GIT_AUTHOR_EMAIL", "bench@example.com")
    os.environ.setdefault("GIT_COMMITTER_NAME", "bench")
    os.environ.setdefault("GIT_COMMITTER_EMAIL", "bench@example.com")
    print(f"{'files':>6} {'tags':>5} {'check s':>8} {'rebase loop s':>14} {'ratio':>6}  outcomes")
    for files in (int(f) for f in args.files.split(",")):
        with tempfile.TemporaryDirectory(prefix="forkops-bench-") as tmp:
            ws, clone = build(Path(tmp), files, args.tags)
            check_s, doc = time_check(ws)
            loop_s, real = time_rebase_loop(clone, Path(tmp) / "scratch", doc)
            results = doc["results"]
            assert isinstance(results, list)
            # "drift" is a clean rebase whose result uses a removed API: git only sees "clean".
            predicted = [r["status"] for r in results]
            rebase = ["clean" if s == "drift" else s for s in predicted]
            if rebase != real:
                raise SystemExit(f"prediction differs from git: {rebase} vs {real}")
            drifting = sorted(int(r["tag"].split(".")[1]) for r in results if r["drift"])
            if drifting != list(range(15, args.tags)):
                raise SystemExit(f"drift expected on 2.15 and later, found on 2.{drifting}")
            summary = (f"{predicted.count('clean')} clean, {predicted.count('drift')} drift, "
                       f"{predicted.count('conflict')} conflict (rebases match git)")
            print(f"{files:>6} {len(results):>5} {check_s:>8.2f} {loop_s:>14.2f} {check_s / loop_s:>6.3f}  {summary}",
                  flush=True)


if __name__ == "__main__":
    main()
