"""Crash kit: drive the real ``forkops`` CLI as a subprocess over real sandboxes, kill it (or git)
at a chosen git call, and compare what is left with what should be.

Nothing here mocks git. The only thing between forkops and git is a ``git`` wrapper put first on
forkops' ``PATH`` (never on the test's own): a small sh script that numbers every git call forkops
makes (across every forkops command of a flow: the counter lives in a folder, not in a process)
and, at call ``N``, either

* ``before``:  SIGKILLs forkops and never runs git (forkops dies between two git calls);
* ``during``:  starts the real git, waits until it is executing, then SIGKILLs forkops; git runs on
  with its output pipe's reader gone (it dies of SIGPIPE on its next write, as in issue 10);
* ``killgit``: starts the real git, waits until it is executing, then SIGKILLs git itself;
* ``rename``:  runs the real git under ``strace -f -e inject=rename:signal=KILL:when=K``, so git
  dies at its K-th rename (a lock file about to be committed: index, HEAD, a ref, a state file);
  with ``syscall``/``path``, at its K-th call of that syscall on that path (``strace -P``: the
  path as git passes it, absolute for files in .git, relative to the worktree for its files).

forkops runs under a small reaper process (a child subreaper): a command returns only once every
process it started is gone, orphaned git included, so no test ever looks at a repository that a
git process is still changing.

The code under test is this checkout's ``forkops`` unless ``CRASHKIT_CODE`` names another checkout
(``CRASHKIT_CODE=/work/main pytest tests/test_upgrade_cases.py`` runs the same tests against it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from forkops import sandbox as sandbox_mod
from forkops.sandbox import Sandbox
from tests.gitutil import resolve_all, unmerged

ROOT = Path(__file__).resolve().parents[1]
CODE = Path(os.environ.get("CRASHKIT_CODE") or ROOT).resolve()  # read before conftest clears env
REAL_GIT = os.path.realpath(shutil.which("git") or "/usr/bin/git")
STRACE = shutil.which("strace")
TIMEOUT = 120
REPOS = ("tensorflow", "serving")
VERSION = "2.18.0"
MODES = ("before", "during", "killgit", "rename")
T = TypeVar("T")

# git subcommands that change a repository (or its config): the places a kill matters most.
MUTATING = frozenset({
    "add", "am", "apply", "branch", "checkout", "cherry-pick", "clone", "commit", "config", "fetch",
    "gc", "hash-object", "merge", "mv", "notes", "pack-refs", "push", "read-tree", "rebase", "remote",
    "reset", "restore", "rm", "stash", "switch", "symbolic-ref", "tag", "update-index", "update-ref",
    "worktree", "write-tree",
})

_WRAPPER = r"""#!/bin/sh
# crashkit git wrapper (tests/crashkit.py): number this call, maybe kill, run the real git.
d=$CRASHKIT_DIR
n=$(flock "$d/lock" sh -c 'n=$(($(cat "$1") + 1)); echo $n > "$1"; echo $n' sh "$d/count")
{ printf '%s\t' "$n"; printf '%s\037' "$@"; printf '\n'; } | tr '\n' ' ' >> "$d/calls"
printf '\n' >> "$d/calls"
if [ "$CRASHKIT_MODE" = trace ]; then
    # what changed in the workspace since the previous call began (a kill here sees it)
    find "$CRASHKIT_WS" -path '*/.git/objects' -prune -o -newer "$d/stamp" -print > "$d/changed.$n"
    touch "$d/stamp"
    [ -n "$CRASHKIT_STRACE" ] || exec "$REAL_GIT" "$@"
    exec strace -f -qq -o "$d/renames.$n" -e trace=rename "$REAL_GIT" "$@"
fi
fire=
if [ -e "$d/killed" ]; then
    :  # one kill per flow
elif [ -n "$CRASHKIT_MATCH" ]; then
    # the AT-th call whose argv matches the glob (e.g. '* rebase *--onto *')
    case " $* " in
    $CRASHKIT_MATCH)
        m=$(flock "$d/lock" sh -c 'm=$(($(cat "$1") + 1)); echo $m > "$1"; echo $m' sh "$d/matches")
        [ "$m" = "$CRASHKIT_AT" ] && fire=1 ;;
    esac
elif [ -n "$CRASHKIT_FILE" ]; then
    # the first call made once the file holds the needle (e.g. a merged file, not committed)
    grep -qF -- "$CRASHKIT_NEEDLE" "$CRASHKIT_FILE" 2>/dev/null && fire=1
else
    [ "$n" = "$CRASHKIT_AT" ] && fire=1
fi
[ -n "$fire" ] || exec "$REAL_GIT" "$@"
victim=$(cat "$d/forkops.pid")
# A background job gets /dev/null as stdin (dash, even with `<&0`): keep git's real stdin (an
# `update-ref --stdin` transaction, a `hash-object --stdin` blob) on fd 3 for it.
exec 3<&0
started() {  # wait until pid $1 runs the real git (or is gone already)
    while :; do
        e=$(readlink "/proc/$1/exe" 2>/dev/null)
        [ "$e" = "$REAL_GIT" ] && return 0
        [ -z "$e" ] && return 0
    done
}
case $CRASHKIT_MODE in
before)
    echo "before $n" > "$d/killed"
    kill -KILL "$victim"
    exit 137 ;;
during)
    "$REAL_GIT" "$@" <&3 3<&- &
    g=$!
    started $g
    echo "during $n" > "$d/killed"
    kill -KILL "$victim"
    wait $g
    exit $? ;;
killgit)
    "$REAL_GIT" "$@" <&3 3<&- &
    g=$!
    started $g
    echo "killgit $n" > "$d/killed"
    kill -KILL $g
    wait $g
    rc=$?
    [ $rc = 137 ] || echo "git finished before the kill: $rc" > "$d/missed"
    exit $rc ;;
pause)
    echo "pause $n" > "$d/killed"
    while [ ! -e "$d/release" ]; do sleep 0.05; done
    exec "$REAL_GIT" "$@" ;;
rename)
    echo "rename $n $CRASHKIT_K" > "$d/killed"
    sc=${CRASHKIT_SYSCALL:-rename}
    exec strace -f -qq -o "$d/strace.out" ${CRASHKIT_PATH:+-P "$CRASHKIT_PATH"} -e trace="$sc" \
        -e inject="$sc":signal=KILL:when="$CRASHKIT_K" "$REAL_GIT" "$@" ;;
esac
exec "$REAL_GIT" "$@"
"""

# Runs forkops as a child subreaper: returns only when forkops and every process it left behind
# (an orphaned git) have exited; dies of the same signal as forkops, so callers see -9.
_REAPER = r"""
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pidfile, argv = sys.argv[1], sys.argv[2:]
child = os.fork()
if child == 0:
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    os.execv(argv[0], argv)
status = 0
while True:
    try:
        pid, st = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if pid == child:
        status = st
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# ---------------------------------------------------------------------------------------------
# Running things
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    """One forkops command: its argv (after ``forkops``), exit code (-9: killed) and output."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def __str__(self) -> str:
        return f"forkops {' '.join(self.args)} -> {self.code}\n{self.out}{self.err}"


def git(repo: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run([REAL_GIT, "-C", str(repo), *args], capture_output=True, text=True, check=False,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {repo} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(CODE)  # the code under test, not the editable install
    env.pop("FORKOPS_TEST_CRASH_AT", None)
    env.update(extra or {})
    return env


def forkops(cwd: Path, *args: str, env: Mapping[str, str] | None = None, pidfile: Path | None = None,
            timeout: float = TIMEOUT) -> Run:
    """``python -m forkops ARGS`` in ``cwd`` (under the reaper); never raises on failure."""
    cmd = [sys.executable, "-c", _REAPER, str(pidfile or ""), sys.executable, "-m", "forkops", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=base_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr)


@functools.cache
def strace_works() -> bool:
    if STRACE is None:
        return False
    proc = subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                           "-e", "inject=rename:signal=KILL:when=1", sys.executable, "-c",
                           "import os; open('/tmp/.crashkit-probe', 'w').close(); "
                           "os.rename('/tmp/.crashkit-probe', '/tmp/.crashkit-probe2')"],
                          capture_output=True, check=False)
    Path("/tmp/.crashkit-probe").unlink(missing_ok=True)
    return proc.returncode == -signal.SIGKILL


class Killer:
    """The git wrapper and its counter folder for one flow. ``mode`` ``count`` only counts."""

    def __init__(self, folder: Path, *, mode: str = "count", at: int = 0, k: int = 0, start: int = 0,
                 match: str = "", file: Path | None = None, needle: str = "", syscall: str = "rename",
                 path: str = "") -> None:
        """Kill (``mode``) at git call ``at``; with ``match`` at the ``at``-th call whose argv
        matches that sh glob; with ``file`` at the first call once ``file`` holds ``needle``.
        ``pause`` holds that call until :meth:`release`; ``rename`` kills git at its ``k``-th
        ``syscall`` (on ``path`` only, when given)."""
        self.folder = folder
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        wrapper = self.bin / "git"
        wrapper.write_text(_WRAPPER)
        wrapper.chmod(0o755)
        (folder / "count").write_text(f"{start}\n")
        (folder / "lock").touch()
        (folder / "calls").touch()
        (folder / "stamp").touch()
        (folder / "matches").write_text("0\n")
        self.mode, self.at, self.k = mode, at, k
        self.match, self.file, self.needle = match, file, needle
        self.syscall, self.path = syscall, path

    def env(self, workspace: Path) -> dict[str, str]:
        return {"CRASHKIT_WS": str(workspace), "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "CRASHKIT_DIR": str(self.folder), "CRASHKIT_MODE": self.mode, "CRASHKIT_AT": str(self.at),
                "CRASHKIT_K": str(self.k), "REAL_GIT": REAL_GIT,
                "CRASHKIT_STRACE": "1" if self.mode == "trace" and strace_works() else "",
                "CRASHKIT_MATCH": self.match, "CRASHKIT_FILE": str(self.file or ""),
                "CRASHKIT_NEEDLE": self.needle, "CRASHKIT_SYSCALL": self.syscall, "CRASHKIT_PATH": self.path}

    def spawn(self, cwd: Path, *args: str) -> subprocess.Popen[str]:
        """Start forkops without waiting (e.g. to hold it at a ``pause``)."""
        cmd = [sys.executable, "-c", _REAPER, str(self.folder / "forkops.pid"), sys.executable, "-m",
               "forkops", *args]
        return subprocess.Popen(cmd, cwd=cwd, env=base_env(self.env(cwd)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def wait_fired(self, timeout: float = 60) -> None:
        import time

        end = time.monotonic() + timeout
        while not (self.folder / "killed").exists():
            if time.monotonic() > end:
                raise AssertionError(f"the wrapper never fired ({self.mode}, at {self.at}, match {self.match!r})")
            time.sleep(0.02)

    def release(self) -> None:
        (self.folder / "release").touch()

    @property
    def pid(self) -> int:
        return int((self.folder / "forkops.pid").read_text())

    def forkops(self, cwd: Path, *args: str) -> Run:
        return forkops(cwd, *args, env=self.env(cwd), pidfile=self.folder / "forkops.pid")

    @property
    def count(self) -> int:
        return int((self.folder / "count").read_text())

    @property
    def fired(self) -> bool:
        """Whether the kill happened (``killgit``: git had not finished yet; ``rename``: git
        reached its K-th rename and died)."""
        if not (self.folder / "killed").exists() or (self.folder / "missed").exists():
            return False
        if self.mode == "rename":
            out = self.folder / "strace.out"
            return out.exists() and "killed by SIGKILL" in out.read_text()
        return True

    def calls(self) -> list[list[str]]:
        """Each call's argv (after ``git``), by call number (calls made side by side, such as
        forkops' parallel reads, can append their lines out of order)."""
        numbered = []
        for line in (self.folder / "calls").read_text().splitlines():
            if not line.strip():
                continue
            n, _, rest = line.partition("\t")
            numbered.append((int(n), rest.rstrip("\037 ").split("\037")))
        return [argv for _n, argv in sorted(numbered, key=lambda item: item[0])]

    def changed(self, n: int) -> list[str]:
        """(trace mode) what changed in the workspace between the start of call n-1 and call n."""
        path = self.folder / f"changed.{n}"
        return path.read_text().splitlines() if path.exists() else []

    def renames(self, n: int) -> int:
        path = self.folder / f"renames.{n}"
        if not path.exists():
            return 0
        return sum(" rename(" in line for line in path.read_text().splitlines())


def mutates(argv: Sequence[str]) -> bool:
    """Whether a git call can change the repository (reads of refs and config excluded)."""
    sub = subcommand(argv)
    if sub not in MUTATING:
        return False
    rest = list(argv[list(argv).index(sub) + 1:])
    positional = [a for a in rest if not a.startswith("-")]
    reads = {"--list", "-l", "--get", "--get-all", "--get-regexp", "get-url", "-v", "show", "list"}
    if sub == "symbolic-ref":
        return len(positional) >= 2 or "-d" in rest or "--delete" in rest
    if sub in ("config", "remote", "branch", "tag", "stash", "worktree", "notes"):
        return not (reads & set(rest)) and not (sub == "config" and len(positional) == 1)
    return True


def subcommand(argv: Sequence[str]) -> str:
    """The git subcommand of an argv (``-C DIR``, ``-c K=V`` and ``--opts`` skipped)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-C", "-c"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return a
    return ""


# ---------------------------------------------------------------------------------------------
# Sandboxes: fresh ones, relocated copies
# ---------------------------------------------------------------------------------------------
# CRASHKIT_DETACHED=1: the forks' HEADs are detached at their start commits when the run begins
# (a CI checkout, a person looking at a commit): the sweep then covers git's states from there.
DETACHED = os.environ.get("CRASHKIT_DETACHED") == "1"  # read before conftest clears env


# CRASHKIT_RECORDED=1: the workspace holds the resolutions an earlier, unkilled run of the flow
# recorded, and the swept flow starts with `--accept-recorded`: forkops writes them and goes on
# (Serving's WORKSPACE record names the other sandbox's path, so that stop still needs a person).
RECORDED = os.environ.get("CRASHKIT_RECORDED") == "1"


def new_sandbox(root: Path) -> Sandbox:
    sb = sandbox_mod.build(root)
    if DETACHED:
        for name in REPOS:
            git(sb.clone(name), "checkout", "--quiet", "--detach")
    return sb


def _recorded_resolutions(into: Sandbox, scratch: Path) -> None:
    """Run the flow unkilled in a sandbox of its own and copy the resolutions it recorded."""
    other = sandbox_mod.build(scratch)
    res = forkops(other.workspace, "upgrade", VERSION)
    while res.code == 1:
        resolve_workspace(other)
        res = forkops(other.workspace, "upgrade", "--continue")
    assert res.code == 0, res
    shutil.copytree(other.workspace / "resolutions", into.workspace / "resolutions")


def copy_sandbox(sb: Sandbox, root: Path) -> Sandbox:
    """A copy of ``sb`` at ``root``, so the two can go separate ways: the same bytes, except that
    the old root is rewritten to the new one in the workspace's own files (forkops.toml, run
    state) and in the clones' git directories (config, forkops' state files, git's operation
    files); never in a worktree file, an object or a recorded resolution (whose hunks quote
    files of the history, and are named by their hash)."""
    shutil.copytree(sb.root, root, symlinks=True)
    old, new = str(sb.root).encode(), str(root.resolve()).encode()
    ws = root / "workspace"
    clones = {ws / name for name in REPOS}
    for path in ws.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(ws).parts
        in_clone = ws / rel[0] in clones
        if (in_clone and (len(rel) < 2 or rel[1] != ".git")) or "objects" in rel or rel[0] == "resolutions":
            continue
        data = path.read_bytes()
        if old in data:
            if b"\0" in data:
                raise AssertionError(f"copy_sandbox: {path} is binary and names {old!r}")
            path.write_bytes(data.replace(old, new))
    out = Sandbox(root=root.resolve(), workspace=root.resolve() / "workspace")
    for name in REPOS:
        out.upstream[name] = out.root / "upstream" / name
        out.origin[name] = out.root / "origin" / f"{name}.git"
    return out


# ---------------------------------------------------------------------------------------------
# What a repository looks like: for --abort (byte-identical) and for a finished run
# ---------------------------------------------------------------------------------------------
# Files in .git that say an operation is in progress or a process holds (or held) a lock.
_OPERATION_FILES = ("rebase-merge", "rebase-apply", "MERGE_HEAD", "MERGE_MSG", "CHERRY_PICK_HEAD",
                    "REVERT_HEAD", "BISECT_LOG", "BISECT_START", "sequencer", "AUTO_MERGE")


def _tree_digest(folder: Path, *, skip: str = ".git") -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] == skip or path.is_dir():
            continue
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        out[str(rel)] = f"{oct(path.lstat().st_mode)} {hashlib.sha256(data).hexdigest()[:16]}"
    return out


def lock_files(repo: Path) -> list[str]:
    gd = repo / ".git"
    return sorted(str(p.relative_to(gd)) for p in gd.rglob("*.lock") if "objects" not in p.parts)


def snapshot(repo: Path) -> dict[str, object]:
    """Refs, HEAD, local config, worktree bytes, index status and operation files of a clone."""
    gd = repo / ".git"
    ops: dict[str, object] = {}
    for name in _OPERATION_FILES:
        p = gd / name
        if p.is_dir():
            ops[name] = _tree_digest(p, skip="")
        elif p.exists():
            ops[name] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines(),
        "HEAD": (gd / "HEAD").read_text(),
        "config": git(repo, "config", "--list", "--local").splitlines(),
        "status": git(repo, "status", "--porcelain=v1", "--untracked-files=all").splitlines(),
        "worktree": _tree_digest(repo),
        "operations": ops,
        "locks": lock_files(repo),
    }


def snapshot_diff(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Human lines naming what differs between two snapshots."""
    lines = []
    for key in before:
        a, b = before[key], after.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            gone, new = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            lines.append(f"{key}: lost {gone[:6]} gained {new[:6]}")
        elif isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            lines.append(f"{key}: differ at {keys[:6]}")
        else:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines


def result_of(repo: Path) -> dict[str, object]:
    """What a finished upgrade produced in a clone: branches (tree), tags, the new stack."""
    heads = git(repo, "for-each-ref", "--format=%(refname) %(tree)", "refs/heads").splitlines()
    tags = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/tags").splitlines()
    stack = git(repo, "log", "--reverse", "--format=%s", f"refs/heads/tf{VERSION}..refs/heads/b{VERSION}",
                check=False).splitlines()
    return {"heads": heads, "tags": tags, "stack": stack,
            "HEAD": (repo / ".git" / "HEAD").read_text().strip()}


def fork_stack(repo: Path, start: str = "b2.4.0", base: str = "") -> list[tuple[str, str]]:
    """(sha, subject) of the fork's own commits on ``start`` above its base tag."""
    base = base or ("refs/tags/v2.4.0" if repo.name == "tensorflow" else "refs/tags/2.4.0")
    out = git(repo, "log", "--reverse", "--format=%H %s", f"{base}..refs/heads/{start}")
    return [(line[:40], line[41:]) for line in out.splitlines()]


# ---------------------------------------------------------------------------------------------
# The flow: what a maintainer does for a two-fork upgrade that stops on conflicts
# ---------------------------------------------------------------------------------------------
def resolve_workspace(sb: Sandbox) -> list[str]:
    """Resolve every unmerged file as the sandbox's maintainer does and `git add` it. A clone
    with a lock file a killed git left is left for now: git refuses `git add` there, and the
    person runs --continue first, which removes it (as status says)."""
    return [f"{name}:{p}" for name in REPOS if (sb.clone(name) / ".git").is_dir()
            and not (sb.clone(name) / ".git" / "index.lock").exists() for p in resolve_all(sb.clone(name))]


def status_json(sb: Sandbox) -> tuple[Run, dict[str, Any] | None]:
    res = forkops(sb.workspace, "status", "--json")
    try:
        return res, json.loads(res.out)
    except ValueError:
        return res, None


def finish(sb: Sandbox, *, max_steps: int = 8,
           status: tuple[dict[str, Any] | None] | None = None) -> tuple[str, list[Run]]:
    """Drive a (killed) run to its end as a person would, from what forkops says: start the
    upgrade again when no run is recorded, else resolve what is unmerged and --continue.
    Returns ("done" | "stopped": exit 1 twice alike with nothing to resolve | "stuck", runs)."""
    runs: list[Run] = []
    data = status[0] if status is not None else status_json(sb)[1]  # status: what it said already
    if data is not None and (data.get("state") == "done" or (data.get("run") or {}).get("phase") == "done"):
        return "done", runs
    start = data is None or data.get("run") is None
    for _ in range(max_steps):
        resolved = resolve_workspace(sb)
        res = forkops(sb.workspace, *(("upgrade", VERSION) if start else ("upgrade", "--continue")))
        runs.append(res)
        if res.code == 0:
            return "done", runs
        if named_stale_locks(res.text):  # the person removes a lock forkops names as stale, as told
            continue
        if not start and res.code == 2 and "no upgrade in progress" in res.err:
            start = True
            continue
        start = False
        if len(runs) >= 2 and not resolved and res.text == runs[-2].text:
            return ("stopped" if res.code == 1 else "stuck"), runs
    return "stuck", runs


def named_stale_locks(text: str) -> list[str]:
    """Remove the git lock files ``text`` names as stale (what forkops tells a person to do when
    it does not clear one itself); the paths removed."""
    removed = []
    for path in sorted(set(re.findall(r"(/\S+?\.lock)\b", text))):
        if "stale" in text and os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    return removed


def names_a_commit(text: str, commits: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The commits of ``commits`` that ``text`` names by (abbreviated) sha and subject."""
    hexes = set(re.findall(r"\b[0-9a-f]{7,40}\b", text))
    return [(sha, subj) for sha, subj in commits
            if subj in text and any(sha.startswith(h) for h in hexes)]


def traceback_in(text: str) -> bool:
    return "Traceback (most recent call last)" in text


# ---------------------------------------------------------------------------------------------
# The sweep: one unkilled reference run (with checkpoints), kill points chosen from it
# ---------------------------------------------------------------------------------------------
def normalise(value: object, root: Path) -> object:
    """``value`` (JSON-like) with the sandbox root replaced by ``<root>``."""
    text = json.dumps(value, sort_keys=True).replace(str(root), "<root>")
    return json.loads(text)


@dataclasses.dataclass(frozen=True)
class Reference:
    """An unkilled run of the flow, traced: every git call, what changed before it, its renames;
    a copy of the sandbox before each forkops command (``checkpoints``) with the call count then."""

    calls: list[list[str]]
    changed: list[bool]  # [i]: the state a kill before call i+1 sees differs from the one before call i
    renames: list[int]
    steps: list[list[str]]
    step_start: list[int]  # calls made before step s began
    checkpoints: list[str]  # sandbox root before step s
    before: dict[str, object]  # repo -> normalised snapshot before the run
    result: dict[str, object]  # repo -> normalised result_of after it
    stacks: dict[str, list[list[str]]]  # repo -> [(sha, subject)] of the fork's stack

    def step_of(self, n: int) -> int:
        return max(s for s, start in enumerate(self.step_start) if start < n)

    def phase(self, n: int) -> tuple[int, str, str]:
        """(step, repository, git subcommand) of call n: the phase a kill point belongs to."""
        argv = self.calls[n - 1]
        where = argv[argv.index("-C") + 1] if "-C" in argv else ""
        repo = next((r for r in REPOS if where.rstrip("/").endswith("/" + r)), "-")
        return self.step_of(n), repo, subcommand(argv)

    def candidates(self, mode: str) -> list[tuple[int, int]]:
        """Every distinct kill point of ``mode`` as (call, rename) pairs."""
        n = len(self.calls)
        if mode == "before":
            return [(i, 0) for i in range(1, n + 1) if i == 1 or self.changed[i - 1]]
        if mode in ("during", "killgit"):
            return [(i, 0) for i in range(1, n + 1) if mutates(self.calls[i - 1])]
        return [(i, k) for i in range(1, n + 1) for k in range(1, self.renames[i - 1] + 1)]

    def ordered(self, mode: str) -> list[tuple[int, int]]:
        """Candidates in the order slots take them: round-robin over phases (so the first few
        cover every phase), spread within a phase (first, last, middle, ...)."""
        groups: dict[tuple[int, str, str], list[tuple[int, int]]] = {}
        for point in self.candidates(mode):
            groups.setdefault(self.phase(point[0]), []).append(point)
        # Phases in spread order too: a few slots reach the first, last and middle phases. The
        # rebases come first: git's own state machine is where a kill loses commits (issue 10).
        keys = sorted(spread(list(groups)), key=lambda key: key[2] != "rebase")
        spreads = [spread(groups[key]) for key in keys]
        out: list[tuple[int, int]] = []
        for rnd in range(max((len(v) for v in spreads), default=0)):
            out += [v[rnd] for v in spreads if rnd < len(v)]
        return out


def spread(points: list[T]) -> list[T]:
    """``points`` reordered first, last, middle, quarters, ...: any prefix spans them evenly."""
    if len(points) <= 2:
        return list(points)
    order = [0, len(points) - 1]
    step = len(points) - 1
    while len(order) < len(points):
        step = max(1, step // 2)
        order += [i for i in range(0, len(points), step) if i not in order]
    return [points[i] for i in order]


def build_reference(folder: Path) -> Reference:
    """Run the whole flow unkilled (traced), keeping a checkpoint before each command."""
    sb = new_sandbox(folder / "sb")
    if RECORDED:
        _recorded_resolutions(sb, folder / "recording")
    before = {name: normalise(snapshot(sb.clone(name)), sb.root) for name in REPOS}
    stacks = {name: [list(c) for c in fork_stack(sb.clone(name))] for name in REPOS}
    killer = Killer(folder / "trace", mode="trace")
    steps: list[list[str]] = []
    step_start: list[int] = []
    checkpoints: list[str] = []
    args = ["upgrade", VERSION, *(["--accept-recorded"] if RECORDED else [])]
    while True:
        cp = folder / f"checkpoint-{len(steps)}"
        copy_sandbox(sb, cp)
        checkpoints.append(str(cp.resolve()))
        steps.append(args)
        step_start.append(killer.count)
        res = killer.forkops(sb.workspace, *args)
        if res.code == 0:
            break
        assert res.code == 1 and len(steps) < 8, f"the unkilled flow failed: {res}"
        resolve_workspace(sb)
        args = ["upgrade", "--continue"]
    n = killer.count
    ref = Reference(
        calls=killer.calls(), changed=[bool(killer.changed(i)) for i in range(1, n + 1)],
        renames=[killer.renames(i) for i in range(1, n + 1)], steps=steps, step_start=step_start,
        checkpoints=checkpoints, before=before,
        result={name: normalise(result_of(sb.clone(name)), sb.root) for name in REPOS}, stacks=stacks)
    (folder / "reference.json").write_text(json.dumps(dataclasses.asdict(ref)))
    return ref


def load_reference(folder: Path) -> Reference:
    """The reference in ``folder`` (shared by pytest-xdist workers), built once under a lock."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = folder / "reference.json"
        if path.exists():
            return Reference(**json.loads(path.read_text()))
        return build_reference(folder)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one kill point led to: one finding per check that failed (kind, detail). Kinds:
    ``status-traceback``, ``status-lie`` (a), ``abort-failed``, ``abort-mismatch`` (b),
    ``silent-loss`` (branches or stack differ), ``result-differs`` (tags or HEAD), ``stuck`` (c),
    ``diverged`` (the kill landed elsewhere than in the reference); none: every check passed
    (``resumed`` says how (c) ended: ``done``, or ``named-stop``: an exit-1 stop naming each
    missing commit)."""

    mode: str
    call: int
    rename: int
    phase: str
    fired: bool
    resumed: str
    findings: list[list[str]]

    @property
    def kinds(self) -> list[str]:
        if not self.fired:
            return ["not-fired"]
        return [k for k, _ in self.findings] or ["ok"]

    @property
    def acceptable(self) -> bool:
        return not self.findings


def checkpoint(ref: Reference, step: int) -> Sandbox:
    root = Path(ref.checkpoints[step])
    sb = Sandbox(root=root, workspace=root / "workspace")
    for name in REPOS:
        sb.upstream[name] = root / "upstream" / name
        sb.origin[name] = root / "origin" / f"{name}.git"
    return sb


def current_stack(repo: Path) -> list[str]:
    return git(repo, "log", "--reverse", "--format=%s", f"refs/heads/tf{VERSION}..refs/heads/b{VERSION}",
               check=False).splitlines()


def check_status(sb: Sandbox, ref: Reference) -> tuple[str | None, dict[str, Any] | None]:
    """(a): ``status`` and ``status --json`` without a traceback, telling the truth: (the
    problem or None, what ``status --json`` said)."""
    res, data = status_json(sb)
    return _status_problem(sb, ref, res, data), data


def _status_problem(sb: Sandbox, ref: Reference, res: Run, data: dict[str, Any] | None) -> str | None:
    text = forkops(sb.workspace, "status")
    for r in (text, res):
        if traceback_in(r.text) or r.code not in (0, 1):
            return f"status-traceback: {r}"
    if data is None:
        return f"status-lie: status --json is not JSON: {res.out[:300]}"
    repo = data.get("repo")
    if repo in REPOS:
        listed = sorted(c["path"] for c in data.get("conflicts") or [])
        actual = unmerged(sb.clone(repo))
        if listed != actual:
            return f"status-lie: {repo} conflicts listed {listed}, unmerged in git {actual}"
    if data.get("state") == "done":
        for name in REPOS:
            got = normalise(result_of(sb.clone(name)), sb.root)
            if got != ref.result[name]:
                return (f"status-lie: says done, but {name} differs from the unkilled run: "
                        f"{_result_diff(ref.result[name], got)}")
    elif data.get("run") is not None and not data.get("next"):
        return f"status-lie: a run is in progress ({data.get('state')}) and status names no next step"
    return None


def stack_of(result: object) -> list[str]:
    assert isinstance(result, dict)
    return list(result["stack"])


def _result_diff(want: object, got: object) -> str:
    assert isinstance(want, dict) and isinstance(got, dict)
    return "; ".join(f"{k}: want {want[k]!r}, got {got.get(k)!r}" for k in want if want[k] != got.get(k))


def evaluate(ref: Reference, mode: str, call: int, rename: int, tmp: Path) -> Outcome:
    """Kill at (mode, call, rename), then run every check (:func:`judge`)."""
    step = ref.step_of(call)
    phase = "step {} {} {}".format(*ref.phase(call))
    sb = copy_sandbox(checkpoint(ref, step), tmp / "killed")
    killer = Killer(tmp / "kit", mode=mode, at=call, k=rename, start=ref.step_start[step])
    runs = run_flow(killer, sb, ref.steps[step])
    if not killer.fired:
        return Outcome(mode, call, rename, phase, False, "", [])
    findings: list[list[str]] = []
    # The kill must land where the reference says: same git subcommands up to it.
    want = [subcommand(a) for a in ref.calls[ref.step_start[step]:call]]
    got = [subcommand(a) for a in killer.calls()][:len(want)]
    if got != want:
        i = next(i for i, (w, g) in enumerate(zip([*want, ""], [*got, ""], strict=False)) if w != g)
        findings.append(["diverged", f"git call {ref.step_start[step] + i + 1} is {got[i:i + 1]}, the reference "
                                     f"had {want[i:i + 1]} (is the code under test changing under the run?)"])
    how, found = judge(ref, sb, runs, tmp)
    return Outcome(mode, call, rename, phase, True, how, findings + found)


def run_flow(killer: Killer, sb: Sandbox, args: Sequence[str], runs: Sequence[Run] = ()) -> list[Run]:
    """Run ``args`` (after ``runs``, the commands already run) with the killer armed, then, while
    forkops stops for a person (exit 1), resolve and ``--continue``: the flow up to the first
    command that does not exit 1 (the one that met the kill, or the end)."""
    out = list(runs)
    while not out or (out[-1].code == 1 and len(out) <= 8):
        if out:
            resolve_workspace(sb)
            args = ["upgrade", "--continue"]
        out.append(killer.forkops(sb.workspace, *args))
    return out


def judge(ref: Reference, sb: Sandbox, runs: Sequence[Run], tmp: Path) -> tuple[str, list[list[str]]]:
    """The checks after a kill (``runs``: the flow up to the command that met it): (a) status,
    (b) --abort on the killed sandbox, (c) resolve-and-continue on a copy of it. Returns how (c)
    ended and the findings."""
    findings: list[list[str]] = []
    if traceback_in(runs[-1].err) and runs[-1].code != -signal.SIGKILL:
        findings.append(["status-traceback", f"the command that met the kill: {runs[-1]}"])
    problem, said = check_status(sb, ref)
    if problem:
        findings.append(list(problem.split(": ", 1)))
    # A kill after the run was recorded done (its last status reads), or a killed git that did
    # not stop forkops: nothing is left to abort, the result must be the unkilled run's.
    finished = said is not None and (said.get("run") or {}).get("phase") == "done"
    if runs[-1].code == 0 or finished:
        result = {name: normalise(result_of(sb.clone(name)), sb.root) for name in REPOS}
        if result != ref.result:
            findings.append([_difference(ref, result), "finished but " + "; ".join(
                f"{n}: {_result_diff(ref.result[n], result[n])}" for n in REPOS if result[n] != ref.result[n])
                + "\nthe runs:\n" + "\n".join(map(str, runs))])
        return "done", findings
    resumed = copy_sandbox(sb, tmp / "resumed")
    findings += _check_abort(sb, ref)
    how, detail = _check_resume(resumed, ref, said)
    if how not in ("done", "named-stop"):
        findings.append([how, detail])
    return how, findings


def _difference(ref: Reference, got: dict[str, object]) -> str:
    """``silent-loss`` when a finished run's branches or stack differ from the unkilled run's,
    ``result-differs`` when only its tags or HEAD do."""
    for name in REPOS:
        want, have = ref.result[name], got[name]
        assert isinstance(want, dict) and isinstance(have, dict)
        if want["heads"] != have["heads"] or want["stack"] != have["stack"]:
            return "silent-loss"
    return "result-differs"


def _check_abort(sb: Sandbox, ref: Reference) -> list[list[str]]:
    """(b) --abort restores every clone byte-identically."""
    res = forkops(sb.workspace, "upgrade", "--abort")
    if res.code != 0 or traceback_in(res.text):
        return [["abort-failed", str(res)]]
    found = []
    for name in REPOS:
        got = normalise(snapshot(sb.clone(name)), sb.root)
        before = ref.before[name]
        assert isinstance(got, dict) and isinstance(before, dict)
        diff = snapshot_diff(before, got)
        if diff:
            found.append(["abort-mismatch", f"{name}: " + "; ".join(diff)])
    return found


def _check_resume(sb: Sandbox, ref: Reference, said: dict[str, Any] | None) -> tuple[str, str]:
    """(c) resolve-and-continue: ("done" | "named-stop" | "silent-loss" | "stuck", detail)."""
    how, finished = finish(sb, status=(said,))
    if how == "done":
        got = {name: normalise(result_of(sb.clone(name)), sb.root) for name in REPOS}
        if got != ref.result:
            return _difference(ref, got), "; ".join(f"{n}: {_result_diff(ref.result[n], got[n])}"
                                                    for n in REPOS if got[n] != ref.result[n])
        return "done", f"resumed in {len(finished)} commands"
    last = finished[-1] if finished else None
    if how == "stopped" and last is not None:
        missing = [(sha, subj) for name in REPOS for sha, subj in ref.stacks[name]
                   if subj in stack_of(ref.result[name]) and subj not in current_stack(sb.clone(name))]
        named = names_a_commit(last.text, missing)
        if missing and len(named) == len(missing):
            return "named-stop", f"names {[s for _, s in named]}"
    return "stuck", f"{how}: " + (str(last) if last else "no command run")


def summarize(reporter: object) -> None:
    """Terminal summary: kill points tried and outcomes by kind and mode (from every worker)."""
    outcomes = []
    for reports in getattr(reporter, "stats", {}).values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            for key, value in getattr(rep, "user_properties", []):
                if key == "crash":
                    outcomes.append(json.loads(value))
    if not outcomes:
        return
    by_kind: dict[str, int] = {}
    by_mode: dict[str, int] = {}
    for o in outcomes:
        kinds = (["not-fired"] if not o["fired"] else sorted({k for k, _ in o["findings"]}) or ["ok"])
        for kind in kinds:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        by_mode[o["mode"]] = by_mode.get(o["mode"], 0) + 1
    silent = sum(1 for o in outcomes if any(k == "silent-loss" for k, _ in o["findings"]))
    line = (f"crash sweep: {len(outcomes)} kill points tried, {silent} silent losses "
            f"({', '.join(f'{m} {n}' for m, n in sorted(by_mode.items()))}); outcomes: "
            f"{', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))} (a point counts once per kind it shows)")
    reporter.write_line(line)  # type: ignore[attr-defined]
    target = os.environ.get("CRASHKIT_REPORT")
    if target:
        Path(target).write_text(json.dumps({"summary": line, "outcomes": outcomes}, indent=1) + "\n")
