"""`forkops check` over many upstream tags vs. the baseline a maintainer would run: a loop of
real `git rebase --onto TAG BASE START` (then `--abort` on a conflict) in a scratch clone.

Both run in the same process run on the same generated repository: a TensorFlow-like upstream
(sandbox.Generator) with FILES files in directories of 100, TAGS release tags each cut on its own
release branch, and a fork branch b2.0.0 carrying 5 patches (the decryption patch in env.cc,
.bazelrc, two edits of files upstream rewrites from release 2.20 on -> conflicts, a new file).
Upstream removes `Status::OK()` (which the decryption patch uses) before release 2.15, so API
drift is found, not only looked for. Recorded resolutions are on too: a person's upgrade onto
2.20, 2.21 and 2.22 resolved both stops and onto 2.23 the first one, recorded in the workspace's
`resolutions/` by `forkops.resolutions.apply`/`record` exactly as `forkops upgrade` records
them; check simulates past those stops ("resolved (recorded)").

`forkops check` runs as the real command (a subprocess, Python start-up included) and does
everything it does for a user: ls-remote, tag selection, prediction with the recorded
resolutions, conflict context at each stop, anchors on each clean result and on each tag, drift.
It is timed after one untimed run, with Python's bytecode cache on (in a temporary
PYTHONPYCACHEPREFIX): an installed forkops has its modules compiled, and an environment with
PYTHONDONTWRITEBYTECODE set would otherwise compile every module on every run.

The baseline is the loop a maintainer would run by hand, plain git: `git rebase --onto TAG BASE
START`, `--abort` on a conflict. Its outcomes must equal check's (a tag check resolved with
recorded resolutions stops there in plain git); and for every tag with recorded stops, an
untimed real rebase that applies the recorded resolutions at each stop (as `forkops upgrade`
does) must stop at the same commit, or finish, with the very tree check predicted.

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

from forkops import resolutions, sandbox, workspace
from forkops.git import Repo
from forkops.sandbox import Generator

FORK = "Fork Maintainer <maintainer@example.com>"
REPO = "tensorflow"
# Minor versions whose stops a person resolved and recorded: all of them (the rebase then
# finishes), or only the first (it stops at the second).
RECORDED_ALL = (20, 21, 22)
RECORDED_FIRST = (23,)


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
        fork.commit("b2.0.0", f"Tune {Path(p).stem}",
                    {p: base_files[p].replace("// step 3", f"// fork tuning of {Path(p).stem}")}, author=FORK)
    fork.commit("b2.0.0", "Add cryptfile tool", {"tensorflow/tools/cryptfile/cryptfile.cc": "int main() {}\n"},
                author=FORK)
    fork.flush()
    ws = root / "workspace"
    (ws / "forkops.toml").write_text(
        f'[repos.tensorflow]\npath = "tensorflow"\norigin = "{upstream}"\n'
        f'upstream = "{upstream.as_uri()}"\nplaybook = "tensorflow"\n')
    start = _git(clone, "rev-parse", "b2.0.0").stdout.strip()
    for minor in (*RECORDED_ALL, *RECORDED_FIRST):
        if minor < tags:
            onto = _git(clone, "rev-parse", f"refs/tags/v2.{minor}.0^{{commit}}").stdout.strip()
            record_by_hand(ws, clone, root / f"person-{minor}", onto=onto, base=base_sha, start=start,
                           stops=2 if minor in RECORDED_ALL else 1)
    return ws, clone


def _scratch(clone: Path, scratch: Path, start: str) -> None:
    subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(clone), str(scratch)], check=True,
                   env=sandbox.git_env())
    _git(scratch, "checkout", "--quiet", "--detach", start)


def _stopped(scratch: Path) -> bool:
    return (scratch / ".git" / "rebase-merge").is_dir()


def _union(conflicted: str) -> str:
    """A person's resolution: keep both sides of every conflict (upstream's line, then the fork's)."""
    return "".join(line for line in conflicted.splitlines(keepends=True)
                   if not line.startswith(("<<<<<<< ", "=======", ">>>>>>> ")))


def record_by_hand(ws: Path, clone: Path, scratch: Path, *, onto: str, base: str, start: str, stops: int) -> None:
    """A person's `forkops upgrade`: rebase; at each of the first ``stops`` stops the recorded
    resolutions are applied (forkops.resolutions.apply), every file is resolved by hand and
    staged, the resolution recorded (forkops.resolutions.record), the rebase continued."""
    _scratch(clone, scratch, start)
    config = ["-c", "merge.conflictStyle=merge"]
    _git(scratch, *config, "rebase", "--onto", onto, base, check=False)
    loaded = workspace.load(ws)
    for _ in range(stops):
        if not _stopped(scratch):
            raise SystemExit(f"bench setup: the rebase onto {onto} did not stop")
        repo = Repo(scratch)
        resolutions.apply(loaded, REPO, repo)
        for path in repo.unmerged_paths():
            (scratch / path).write_text(_union((scratch / path).read_text()))
            _git(scratch, "add", "--", path)
        if not all(r.status == "recorded" for r in resolutions.record(loaded, REPO, repo)):
            raise SystemExit(f"bench setup: a resolution onto {onto} was not recorded")
        _git(scratch, *config, "rebase", "--continue", check=False)


def rebase_with_resolutions(ws: Path, clone: Path, scratch: Path, *, onto: str, base: str,
                            start: str) -> tuple[str | None, list[int], str]:
    """A real `git rebase --onto` that applies the recorded resolutions at each stop, as
    `forkops upgrade --accept-recorded` does: (the commit it stops at or None, the stops the
    resolutions got past, HEAD's tree at the end)."""
    _scratch(clone, scratch, start)
    _git(scratch, "rebase", "--onto", onto, base, check=False)
    loaded = workspace.load(ws)
    past: list[int] = []
    while _stopped(scratch):
        repo = Repo(scratch)
        applied = resolutions.apply(loaded, REPO, repo)
        if applied:
            _git(scratch, "add", "--", *(a.path for a in applied))
        if repo.unmerged_paths():
            return (_git(scratch, "rev-parse", "REBASE_HEAD").stdout.strip(), past,
                    _git(scratch, "rev-parse", "HEAD^{tree}").stdout.strip())
        past.append(int((scratch / ".git" / "rebase-merge" / "msgnum").read_text()))
        _git(scratch, "rebase", "--continue", check=False)
    return None, past, _git(scratch, "rev-parse", "HEAD^{tree}").stdout.strip()


def time_check(ws: Path, pycache: Path) -> tuple[float, dict[str, object]]:
    env = sandbox.git_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    argv = [sys.executable, "-m", "forkops", "-C", str(ws), "check", "--repo", REPO, "--json"]
    subprocess.run(argv, capture_output=True, env=env, check=False)  # compiles the bytecode
    began = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
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


def verify_recorded(ws: Path, clone: Path, tmp: Path, doc: dict[str, object], files: int) -> None:
    """Every tag check took past recorded stops against a real rebase with those resolutions
    applied: the same stop (or none), the same stops resolved, the same tree."""
    results = doc["results"]
    assert isinstance(results, list)
    base, start = str(doc["base_sha"]), str(doc["start_sha"])
    minors = [int(r["tag"].split(".")[1]) for r in results if r["recorded"]]
    if minors != [m for m in (*RECORDED_ALL, *RECORDED_FIRST) if m < len(results) + 1]:
        raise SystemExit(f"{files} files: recorded resolutions used on 2.{minors}")
    for r in results:
        if not r["recorded"]:
            continue
        stopped, past, tree = rebase_with_resolutions(ws, clone, tmp / f"real-{r['tag']}", onto=r["onto"],
                                                      base=base, start=start)
        predicted = ((r["commit"] or {}).get("sha"), [x["commit"]["index"] for x in r["resolved"]], r["tree"])
        if predicted != (stopped, past, tree):
            raise SystemExit(f"{r['tag']}: check predicted {predicted}, the real rebase with the recorded "
                             f"resolutions gave {(stopped, past, tree)}")


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
            check_s, doc = time_check(ws, Path(tmp) / "pycache")
            loop_s, real = time_rebase_loop(clone, Path(tmp) / "scratch", doc)
            results = doc["results"]
            assert isinstance(results, list)
            predicted = [r["status"] for r in results]
            # "drift" is a rebase that finishes with a result using a removed API: git only sees
            # "clean"; plain git stops where check went past with recorded resolutions.
            rebase = ["conflict" if r["recorded"] else "clean" if r["status"] == "drift" else r["status"]
                      for r in results]
            if rebase != real:
                raise SystemExit(f"prediction differs from git: {rebase} vs {real}")
            verify_recorded(ws, clone, Path(tmp), doc, files)
            drifting = sorted(int(r["tag"].split(".")[1]) for r in results if r["drift"])
            if drifting != list(range(15, args.tags)):
                raise SystemExit(f"drift expected on 2.15 and later, found on 2.{drifting}")
            recorded = sum(1 for r in results if r["recorded"])
            summary = (f"{predicted.count('clean')} clean, {predicted.count('drift')} drift, "
                       f"{predicted.count('conflict')} conflict, {recorded} past recorded stops (rebases match git)")
            print(f"{files:>6} {len(results):>5} {check_s:>8.2f} {loop_s:>14.2f} {check_s / loop_s:>6.3f}  {summary}",
                  flush=True)


if __name__ == "__main__":
    main()
