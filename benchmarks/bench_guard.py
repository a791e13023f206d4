"""The guard's costs against git's own, measured side by side in the same run, on a generated
TensorFlow-sized history (``tests/bighistory.py``: FILES files, COMMITS commits, made with
``git fast-import``; defaults 35,000 and 100,000 as TensorFlow's tree and history).

1. pre-commit: ``git commit`` of one changed file with the guard hooks vs ``--no-verify``
   (target: overhead <= 0.1 s);
2. pre-push of 50 new commits vs ``git push --no-verify`` of the same commits, with the
   clone's remote-tracking refs and without them (target: ratio <= 2 both);
3. ``forkops guard scan -- --all`` (every commit, tag and blob, every encoding) vs
   ``git log -p --all -S KEY`` (only the raw key), the key planted in one commit
   (target: ratio <= 2).

    python benchmarks/bench_guard.py [--files 35000] [--commits 100000] [--runs 3] [--dir DIR] [--skip-scan]
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout: tests.bighistory

from forkops import guard
from tests.bighistory import generate

KEY = b"Bench0Key1Bench2"


class Took(NamedTuple):
    wall: float
    cpu: float  # user + system of the command and everything it ran (hooks included)


def _time(cmd: list[str], cwd: Path, *, ok: bool | None = True) -> Took:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if ok is not None and (proc.returncode == 0) != ok:
        raise SystemExit(f"{cmd}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return Took(took, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def _median(runs: list[Took]) -> Took:
    return Took(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _prepare(root: Path, files: int, commits: int) -> Path:
    """The fork clone at ``root/fork`` (remote ``origin`` = ``root/remote.git``) at its generated
    state: made once, then reused (``--dir``) with what an earlier run added removed."""
    repo, remote = root / "fork", root / "remote.git"
    ready = root / f"ready-{files}-{commits}"
    if not ready.exists():
        t0 = time.perf_counter()
        subprocess.run(["rm", "-rf", str(repo), str(remote)], check=True)
        generate(repo, files=files, commits=commits)
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
        git(repo, "remote", "add", "origin", str(remote))
        git(repo, "fetch", "-q", "origin")
        git(repo, "update-ref", "refs/bench/base", "master")
        ready.touch()
        print(f"history generated and cloned in {time.perf_counter() - t0:.0f} s")
    # Back to the generated state: what an earlier run committed, pushed or deleted is undone.
    git(repo, "checkout", "-q", "-f", "master")
    git(repo, "reset", "-q", "--hard", "refs/bench/base")
    git(repo, "clean", "-q", "-fdx")
    for ref in git(remote, "for-each-ref", "--format=%(refname)", "refs/heads/").split():
        if ref != "refs/heads/master":
            git(remote, "update-ref", "-d", ref)
    git(repo, "fetch", "-q", "--prune", "origin")
    return repo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=35_000)
    ap.add_argument("--commits", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="keep the generated history here and reuse it (default: a temp dir)")
    ap.add_argument("--skip-scan", action="store_true", help="only the hooks (the scan takes minutes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update({"HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(root / "gitconfig")})
        (root / "gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n")
        data = args.dir.resolve() if args.dir else root
        data.mkdir(parents=True, exist_ok=True)
        repo = _prepare(data, args.files, args.commits)
        print(f"history: {args.files} files, {args.commits + 1} commits in {data}")
        # As pip installs it: compiled. (With PYTHONDONTWRITEBYTECODE set, every hook run would
        # compile forkops' modules again and the bench would measure that.)
        compileall.compile_dir(Path(guard.__file__).parent, quiet=1)
        keys_file = root / "keys.toml"
        keys_file.write_text(f'[model]\nkey = "{KEY.decode()}"\n')
        keys_file.chmod(0o600)
        guard.install_hooks(repo, keys_file)

        # 1. pre-commit overhead
        target = next(p for p in git(repo, "ls-files").split() if p.endswith(".cc"))
        hook, plain = [], []
        for n in range(args.runs):
            for no_verify, sink in ((False, hook), (True, plain)):
                (repo / target).write_text(f"// edit {n} {no_verify}\n")
                git(repo, "add", target)
                sink.append(_time(["git", "commit", "-q", *(["--no-verify"] if no_verify else []), "-m", "edit"], repo))
                git(repo, "reset", "-q", "--hard", "HEAD~1")
        h, p = _median(hook), _median(plain)
        print(f"pre-commit: commit with hooks {h.wall:.3f} s, --no-verify {p.wall:.3f} s: overhead "
              f"{h.wall - p.wall:.3f} s wall, {h.cpu - p.cpu:.3f} s CPU (target <= 0.1)")

        # 2. pre-push of 50 new commits
        for i in range(50):
            (repo / f"new{i}.txt").write_text(f"new file {i}\n")
            git(repo, "add", f"new{i}.txt")
            git(repo, "commit", "-q", "--no-verify", "-m", f"new {i}")
        for label, keep_tracking in (("with tracking refs", True), ("without tracking refs", False)):
            if not keep_tracking:
                for ref in git(repo, "for-each-ref", "--format=%(refname)", "refs/remotes/").split():
                    git(repo, "update-ref", "-d", ref)
            push, bare = [], []
            for n in range(args.runs):
                for no_verify, sink in ((False, push), (True, bare)):
                    branch = f"topic-{label[:4]}-{n}-{no_verify}"
                    sink.append(_time(["git", "push", "-q", *(["--no-verify"] if no_verify else []), "origin",
                                       f"HEAD:refs/heads/{branch}"], repo))
                    git(repo, "push", "-q", "--no-verify", "origin", f":refs/heads/{branch}")
            h, p = _median(push), _median(bare)
            print(f"pre-push, 50 new commits, {label}: {h.wall:.3f} s vs --no-verify {p.wall:.3f} s: ratio "
                  f"{h.wall / p.wall:.2f} wall, {h.cpu / p.cpu:.2f} CPU (target <= 2)")

        if args.skip_scan:
            return
        # 3. guard scan -- --all vs git log -p -S
        (repo / "leak.cc").write_text(f'static const char kKey[] = "{KEY.decode()}";\n')
        git(repo, "add", "leak.cc")
        git(repo, "commit", "-q", "--no-verify", "-m", "leak")
        scan, pick = [], []
        for _ in range(args.runs):
            scan.append(_time([sys.executable, "-m", "forkops", "guard", "scan", "--keys", str(keys_file),
                               "--", "--all"], repo, ok=False))
            pick.append(_time(["git", "log", "-p", "--all", "--format=%H", "-S", KEY.decode()], repo))
        s, p = _median(scan), _median(pick)
        print(f"guard scan -- --all: {s.wall:.2f} s vs git log -p --all -S KEY {p.wall:.2f} s: ratio "
              f"{s.wall / p.wall:.2f} wall, {s.cpu / p.cpu:.2f} CPU (target <= 2)")


if __name__ == "__main__":
    main()
