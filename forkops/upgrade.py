"""The upgrade state machine: plan, run, continue, skip, abort, status (SPEC sections 1, 5, 6).

Per repository the run goes through these phases, each idempotent so that a run killed at any
point (``kill -9`` included) is completed by ``--continue`` or undone by ``--abort``:

``prepared``  backups recorded (``refs/forkops/backup/<run>/...`` + the state file), nothing moved;
``rebasing``  ``tfX.Y.Z`` and ``bX.Y.Z`` created, ``git rebase --merge --onto`` running or stopped;
``anchors``   the rebase finished; anchors are checked, a moved patch is re-applied;
``pin``       pin rules (Serving's TensorFlow pin) are moved to ``bX.Y.Z``;
``finished``  the key is re-applied to the working tree (when a keys file exists);
``done``      every repository of the run finished and was pushed when asked;
``aborting``  ``--abort`` is restoring refs (a crash there is completed by ``--abort`` again).

Where the truth lives: git's own rebase files (``.git/rebase-merge``) say where a rebase stopped;
the per-repository state file ``.git/forkops/upgrade.json`` says what the run is and which refs
it touched (original values; ``null`` = the ref did not exist); the backup refs keep the original
commits reachable. The run as a whole (version, order of repositories, options) is
``<workspace>/.forkops/run.json`` (ignored by git through its own ``.gitignore``).
Every state file is written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forkops import anchors as anchors_mod
from forkops import pins as pins_mod
from forkops import plan
from forkops.errors import BadInput, ForkopsError, GitError, NeedsPerson
from forkops.fsutil import write_atomic
from forkops.git import Repo, clone
from forkops.playbook import Playbook
from forkops.version import Version
from forkops.workspace import RepoConfig, Workspace

RUN_DIR = ".forkops"
RUN_FILE = "run.json"
STATE_FILE = "upgrade.json"
BACKUP_PREFIX = "refs/forkops/backup"
CRASH_ENV = "FORKOPS_TEST_CRASH_AT"  # test hook: SIGKILL ourselves at a named step

Log = Callable[[str], None]
Progress = Callable[[str, float | None], None]

# git's ort merge reports each conflict as "CONFLICT (<kind>): <text naming the paths>".
_CONFLICT_RE = re.compile(r"^CONFLICT \((?P<kind>[^)]+)\): (?P<text>.*)$", re.MULTILINE)
_KIND_BY_STAGES = {
    frozenset({1, 2, 3}): "content",
    frozenset({2, 3}): "add/add",
    frozenset({1, 2}): "modify/delete",
    frozenset({1, 3}): "modify/delete",
}


def _crash_point(name: str) -> None:
    """Test hook: die like ``kill -9`` at step ``name`` (FORKOPS_TEST_CRASH_AT=name)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _quiet(_: str) -> None:
    return None


# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------
@dataclass
class Options:
    """What ``forkops upgrade X.Y.Z`` was asked to do."""

    version: Version
    repo: str | None = None
    start: str | None = None
    base: str | None = None
    push: bool = False
    force: bool = False
    force_with_lease: bool = False


@dataclass
class RunState:
    """The run over one or more repositories; ``repos`` in the order they are upgraded."""

    id: str
    version: str
    repos: list[str]
    start: str | None = None
    base: str | None = None
    push: bool = False
    force: bool = False
    force_with_lease: bool = False
    phase: str = "running"  # running | done


@dataclass
class RepoState:
    """One repository's part of a run. ``refs`` maps every ref the run may move to its value
    before the run (None: it did not exist); ``--abort`` restores exactly these."""

    run: str
    repo: str
    version: str
    phase: str
    branch: str
    onto: str
    tag: str
    onto_sha: str
    base: str
    base_sha: str
    start: str
    start_sha: str
    head_ref: str | None  # the branch HEAD was on (full ref), None when detached
    head_sha: str
    refs: dict[str, str | None]
    picked: list[str]
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reapplied: list[dict[str, str]] = field(default_factory=list)
    pinned: list[dict[str, str]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    conflict_kinds: dict[str, Any] | None = None  # {"commit": sha, "kinds": {path: kind}}
    pushed: bool = False
    notes: list[str] = field(default_factory=list)


_GIT_DIRS: dict[str, Path] = {}


def _git_dir(repo: Repo) -> Path:
    """``repo.git_dir``, asked of git once per repository and process (it does not change)."""
    key = str(repo.path.resolve())
    if key not in _GIT_DIRS:
        _GIT_DIRS[key] = repo.git_dir
    return _GIT_DIRS[key]


def _run_path(ws: Workspace) -> Path:
    return ws.root / RUN_DIR / RUN_FILE


def _state_path(repo: Repo) -> Path:
    return _git_dir(repo) / "forkops" / STATE_FILE


def load_run(ws: Workspace) -> RunState | None:
    path = _run_path(ws)
    if not path.is_file():
        return None
    return RunState(**json.loads(path.read_text()))


def _save_run(ws: Workspace, run: RunState) -> None:
    folder = ws.root / RUN_DIR
    if not (folder / ".gitignore").exists():
        write_atomic(folder / ".gitignore", "# forkops run state: never committed\n*\n")
    write_atomic(_run_path(ws), json.dumps(asdict(run), indent=2) + "\n")


def load_state(repo: Repo) -> RepoState | None:
    if not (repo.path / ".git").exists() and not repo.is_repo():
        return None
    path = _state_path(repo)
    if not path.is_file():
        return None
    return RepoState(**json.loads(path.read_text()))


def _save_state(repo: Repo, st: RepoState) -> None:
    write_atomic(_state_path(repo), json.dumps(asdict(st), indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# Outcome
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How a command left the run: ``state`` as in ``forkops status``; ``status`` its JSON."""

    state: str  # idle | conflict | anchor-failed | done
    status: dict[str, Any]

    @property
    def stopped(self) -> bool:
        return self.state in ("conflict", "anchor-failed")


def _outcome(ws: Workspace) -> Outcome:
    data = status(ws)
    return Outcome(data["state"], data)


# ---------------------------------------------------------------------------------------
# Clones and preconditions
# ---------------------------------------------------------------------------------------
def ensure_clone(rc: RepoConfig, progress: Progress | None = None) -> Repo:
    """The fork clone at ``rc.path``, cloned from ``origin`` when missing; rerere enabled."""
    repo = Repo(rc.path)
    if not repo.is_repo():
        if rc.path.exists() and any(rc.path.iterdir()):
            raise BadInput(f"{rc.path} exists and is not a git repository")
        repo = clone(rc.origin, rc.path, progress=progress)
    # rerere remembers conflict resolutions across attempts; autoUpdate off so nothing is
    # staged behind the user's back (a resolution must still be reviewed and `git add`ed).
    repo.run("config", "rerere.enabled", "true")
    repo.run("config", "rerere.autoUpdate", "false")
    return repo


def _dirty_paths(repo: Repo) -> list[str]:
    return [line[3:].split(" -> ")[-1] for line in repo.status_porcelain()]


def _key_site_paths(pb: Playbook) -> set[str]:
    return {p for site in pb.key_sites for p in site.paths}


def check_startable(repo: Repo, pb: Playbook, name: str) -> None:
    """Refuse (BadInput) a repository forkops must not touch: an operation in progress, a
    detached HEAD with commits no ref holds, uncommitted changes (key sites called out)."""
    op = repo.operation_in_progress()
    if op is not None:
        raise BadInput(f"{name}: a {op} is in progress in {repo.path} that forkops did not start; "
                       f"finish or abort it first")
    if repo.head() is None:
        raise BadInput(f"{name}: {repo.path} has no commits")
    if repo.current_branch() is None and repo.run(
            "rev-list", "-1", "HEAD", "--not", "--branches", "--tags", "--remotes").strip():
        raise BadInput(f"{name}: detached HEAD at {repo.head()[:12]} holds commits no branch has "  # type: ignore[index]
                       f"(create a branch for them first: git branch NAME)")
    dirty = _dirty_paths(repo)
    if dirty:
        keys = sorted(set(dirty) & _key_site_paths(pb))
        if keys:
            raise BadInput(f"{name}: key sites hold a key in the working tree ({', '.join(keys)}); "
                           f"run `forkops set-key --clear` first")
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise BadInput(f"{name}: uncommitted changes in {repo.path} ({shown}); commit or stash them first")


def _subject(repo: Repo, sha: str) -> str:
    return repo.run("log", "-1", "--format=%s", sha).strip()


def _check_target(repo: Repo, name: str, want: str, what: str, remote_sha: str | None, *,
                  force: bool) -> None:
    """A target branch may already exist only where it equals what forkops would create."""
    if remote_sha is not None and remote_sha != want:
        raise BadInput(f"origin already has branch {name} at {remote_sha[:12]}, not {what} "
                       f"({want[:12]}); delete it on origin or upgrade to another version")
    local = repo.rev_parse(f"refs/heads/{name}")
    if local is not None and local != want and not force:
        raise BadInput(f"branch {name} already exists at {local[:12]} ({_subject(repo, local)!r}), "
                       f"not {what} ({want[:12]}); pass --force to replace the local branch")


def _origin_heads(repo: Repo, names: list[str]) -> dict[str, str]:
    if repo.remote_url("origin") is None:
        return {}
    out = repo.run("ls-remote", "origin", *(f"refs/heads/{n}" for n in names))
    heads = {}
    for line in out.splitlines():
        sha, ref = line.split("\t", 1)
        heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def _tag_refs(repo: Repo) -> set[str]:
    return {info.name for info in repo.refs("refs/tags")}


def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# ---------------------------------------------------------------------------------------
# Preparing one repository: everything is checked and recorded before anything moves
# ---------------------------------------------------------------------------------------
def _prepare(ws: Workspace, rc: RepoConfig, run: RunState, log: Log) -> RepoState:
    repo = ensure_clone(rc)
    pb = ws.playbook(rc)
    version = Version.parse(run.version)
    check_startable(repo, pb, rc.name)
    remote = pb.upstream_remote
    repo.set_remote(remote, rc.upstream)
    tags_before = _tag_refs(repo)
    tag, onto_sha = plan.fetch_tag(repo, pb, remote, version)
    refs = plan.stack_refs(repo, pb, target=version, start=run.start, base=run.base, remote=remote)
    onto, branch = plan.branch_names(pb, version)
    remote_heads = _origin_heads(repo, [onto, branch])
    _check_target(repo, onto, onto_sha, f"tag {tag}", remote_heads.get(onto), force=run.force)
    _check_target(repo, branch, refs.start_sha, f"the start branch {refs.start}", remote_heads.get(branch),
                  force=run.force)
    picked = plan.patch_stack(repo, refs)
    head_sha = repo.head()
    assert head_sha is not None
    branch_ref = repo.run_raw("symbolic-ref", "--quiet", "HEAD").stdout.decode().strip() or None

    touched: dict[str, str | None] = {ref: None for ref in sorted(_tag_refs(repo) - tags_before)}
    for short in (onto, branch):
        touched[f"refs/heads/{short}"] = repo.rev_parse(f"refs/heads/{short}")
    st = RepoState(
        run=run.id, repo=rc.name, version=run.version, phase="prepared", branch=branch, onto=onto,
        tag=str(tag), onto_sha=onto_sha, base=str(refs.base), base_sha=refs.base_sha, start=refs.start,
        start_sha=refs.start_sha, head_ref=branch_ref, head_sha=head_sha, refs=touched, picked=picked,
    )
    # Backup refs first, the state file second: a crash between them leaves refs nothing reads.
    lines = [f"update refs/forkops/backup/{run.id}/HEAD {head_sha}"]
    lines += [f"update {_backup_ref(run.id, ref)} {sha}" for ref, sha in touched.items() if sha]
    repo.run("update-ref", "--stdin", input="\n".join(lines) + "\n")
    _save_state(repo, st)
    log(f"{rc.name}: upgrading to {version}: {branch} from {refs.start} ({len(picked)} patches on "
        f"{refs.base}), onto {onto} ({tag})")
    _crash_point("after-backup")
    return st


def _backup_ref(run_id: str, ref: str) -> str:
    return f"{BACKUP_PREFIX}/{run_id}/{ref.removeprefix('refs/')}"


# ---------------------------------------------------------------------------------------
# Rebase
# ---------------------------------------------------------------------------------------
def _rebase_dir(repo: Repo) -> Path:
    return _git_dir(repo) / "rebase-merge"


def _our_rebase(repo: Repo, st: RepoState) -> bool:
    head_name = _rebase_dir(repo) / "head-name"
    return head_name.is_file() and head_name.read_text().strip() == f"refs/heads/{st.branch}"


def rebase_position(repo: Repo) -> dict[str, Any] | None:
    """Where a merge-backend rebase stands, from git's own files (None: no rebase)."""
    d = _rebase_dir(repo)
    if not d.is_dir():
        return None

    def read(name: str) -> str:
        path = d / name
        return path.read_text().strip() if path.is_file() else ""

    done = [line for line in read("done").splitlines() if line and not line.startswith("#")]
    # stopped-sha names the commit a conflict stopped on; otherwise the last command done does.
    sha = read("stopped-sha")
    if not sha and done:
        parts = done[-1].split(maxsplit=2)
        sha = parts[1] if len(parts) >= 2 else ""
    full = repo.commit_of(sha) if sha else None
    return {
        "commit": full or sha,
        "subject": _subject(repo, full) if full else "",
        "index": int(read("msgnum") or 0),
        "total": int(read("end") or 0),
    }


def unmerged(repo: Repo) -> dict[str, set[int]]:
    """Unmerged path -> the index stages it has (``git ls-files -u``)."""
    stages: dict[str, set[int]] = {}
    for line in repo.run("ls-files", "-u", "-z").split("\0"):
        if not line:
            continue
        meta, path = line.split("\t", 1)
        stages.setdefault(path, set()).add(int(meta.split()[2]))
    return stages


def conflict_kinds(stages: dict[str, set[int]], messages: str = "") -> list[dict[str, str]]:
    """Each unmerged path with its kind: content, add/add, modify/delete or rename.

    git's CONFLICT lines name the kind when forkops saw them; otherwise the stages decide
    (a path with only "ours" or only "theirs", or only the base, comes from a rename)."""
    by_message: dict[str, str] = {}
    for m in _CONFLICT_RE.finditer(messages):
        kind = m.group("kind")
        norm = ("rename" if "rename" in kind or kind in ("file location", "directory/file")
                else kind if kind in ("content", "add/add", "modify/delete") else "content")
        for path in stages:
            if re.search(rf"(^|[\s'\"]){re.escape(path)}($|[\s,.'\"])", m.group("text")):
                by_message.setdefault(path, norm)
                if norm == "rename":
                    by_message[path] = norm
    return [{"path": p, "kind": by_message.get(p) or _KIND_BY_STAGES.get(frozenset(s), "rename")}
            for p, s in sorted(stages.items())]


def _run_rebase(repo: Repo, st: RepoState, args: list[str]) -> bool:
    """Run a ``git rebase`` command; True when the rebase finished, False when it stopped."""
    proc = repo.run_raw("rebase", *args, env={"GIT_EDITOR": "true"})
    output = proc.stdout.decode("utf-8", "replace") + "\n" + proc.stderr.decode("utf-8", "replace")
    if _rebase_dir(repo).is_dir():
        pos = rebase_position(repo)
        stages = unmerged(repo)
        st.conflict_kinds = {"commit": pos["commit"] if pos else "",
                             "kinds": {c["path"]: c["kind"] for c in conflict_kinds(stages, output)}}
        if not stages:
            st.notes = [line for line in output.splitlines() if line.strip()][-3:]
        _save_state(repo, st)
        _crash_point("after-rebase-stop")
        return False
    if proc.returncode != 0:
        raise GitError(["rebase", *args], proc.returncode, output)
    return True


def _rebase_done(repo: Repo, st: RepoState) -> bool:
    tip = repo.rev_parse(f"refs/heads/{st.branch}")
    return tip is not None and repo.is_ancestor(st.onto_sha, tip)


def _dropped(repo: Repo, st: RepoState) -> list[str]:
    """Patch commits with no counterpart on the new branch (matched by author and subject)."""
    fmt = "--format=%an <%ae>%x00%s"
    now = set(repo.lines("log", fmt, f"{st.onto_sha}..refs/heads/{st.branch}"))
    kept = [sha for sha in st.picked if sha not in st.skipped]
    if not kept:
        return []
    picked = repo.lines("log", "--no-walk=unsorted", fmt, *kept)
    return [line.split("\0", 1)[1] for line in picked if line not in now]


# ---------------------------------------------------------------------------------------
# Anchors: check, and re-apply a patch that stayed behind in a file upstream moved away from
# ---------------------------------------------------------------------------------------
def _commit_file(repo: Repo, path: str, data: bytes, message: str) -> str:
    target = repo.path / path
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    write_atomic(target, data, mode=mode)
    repo.run("add", "--", path)
    repo.run("commit", "--quiet", "-m", message, env={"GIT_EDITOR": "true"})
    return repo.run("rev-parse", "HEAD").strip()


def _reapply(repo: Repo, st: RepoState, res: anchors_mod.AnchorResult) -> tuple[str | None, str]:
    """Merge the fork's change to the old file into the live one; (commit, detail)."""
    assert res.path is not None
    old = res.left_behind[0]
    before = repo.show_file(st.base_sha, old)
    after = repo.show_file(st.start_sha, old)
    current = repo.show_file("HEAD", res.path)
    if before is None or after is None or before == after or current is None:
        return None, f"the fork's patch stack ({st.base}..{st.start}) has no change to {old} to re-apply"
    with tempfile.TemporaryDirectory(prefix="forkops-reapply-") as tmp:
        files = []
        for name, data in (("current", current), ("base", before), ("fork", after)):
            p = Path(tmp) / name
            p.write_bytes(data)
            files.append(str(p))
        proc = repo.run_raw("merge-file", "-p", "-L", res.path, "-L", f"{old} at {st.base}",
                            "-L", f"{old} at {st.start}", *files)
    if proc.returncode != 0:
        n = proc.returncode if 0 < proc.returncode < 128 else "some"
        return None, f"the fork's change to {old} does not apply to {res.path} ({n} conflicting hunks)"
    message = (f"Re-apply {res.name} patch to {res.path} (moved from {old})\n\n"
               f"Upstream moved the definition to {res.path}; the rebase left the fork's change in "
               f"{old}.\nforkops merged the change ({st.base}..{st.start}) into the new file.\n")
    return _commit_file(repo, res.path, proc.stdout, message), ""


def _anchor_failure(repo: Repo, st: RepoState, res: anchors_mod.AnchorResult, detail: str) -> dict[str, Any]:
    change = ""
    if res.left_behind:
        old = res.left_behind[0]
        change = repo.run("diff", st.base_sha, st.start_sha, "--", old, check=False)[:4000]
    return {"kind": "anchor", "anchor": res.name, "message": detail or res.detail, "path": res.path,
            "defined_in": list(res.defined_in), "patched_in": list(res.patched_in), "change": change}


def _check_anchors(repo: Repo, pb: Playbook, st: RepoState, log: Log) -> dict[str, Any] | None:
    version = Version.parse(st.version)
    for res in anchors_mod.check_all(repo, "HEAD", pb.anchors, version):
        if res.ok:
            log(f"{st.repo}: anchor {res.name}: ok ({res.path})")
            continue
        if not (res.left_behind and res.path):
            return _anchor_failure(repo, st, res, "")
        commit, detail = _reapply(repo, st, res)
        if commit is None:
            return _anchor_failure(repo, st, res, detail)
        _crash_point("after-reapply")
        anchor = next(a for a in pb.anchors if a.name == res.name)
        again = anchors_mod.check(repo, "HEAD", anchor, version)
        if not again.ok or again.path != res.path:
            return _anchor_failure(repo, st, again, f"re-applied to {res.path}, but: {again.detail}")
        st.reapplied.append({"anchor": res.name, "from": res.left_behind[0], "to": res.path, "commit": commit})
        log(f"{st.repo}: anchor {res.name}: re-applied the patch to {res.path} "
            f"(moved from {res.left_behind[0]}) in {commit[:12]}")
    return None


def _apply_pins(repo: Repo, pb: Playbook, st: RepoState, log: Log) -> dict[str, Any] | None:
    version = Version.parse(st.version)
    for pin in pb.pins:
        blob = repo.show_file("HEAD", pin.file)
        if blob is None:
            return {"kind": "pin", "pin": pin.name, "path": pin.file,
                    "message": f"pin {pin.name}: {pin.file} does not exist on {st.branch}"}
        edit = pins_mod.apply(pb, pin, version, blob.decode("utf-8"))
        if not edit.ok:
            return {"kind": "pin", "pin": pin.name, "path": pin.file,
                    "message": f"pin {pin.name}: {pin.file} has no match for /{pin.pattern}/; "
                               f"point it at {edit.wanted} by hand, commit, then --continue"}
        if edit.text is None:
            log(f"{st.repo}: pin {pin.name} already names {edit.wanted}")
            continue
        commit = _commit_file(repo, pin.file, edit.text.encode(),
                              f"Pin {pin.name} to {edit.wanted} (was {edit.found})\n\n"
                              f"forkops upgrade {st.version}: {pin.file} now builds against {edit.wanted}.\n")
        st.pinned.append({"pin": pin.name, "file": pin.file, "from": edit.found or "", "to": edit.wanted,
                          "commit": commit})
        log(f"{st.repo}: pin {pin.name}: {edit.found} -> {edit.wanted} in {commit[:12]}")
        _crash_point("after-pin")
    return None


def _reapply_key(ws: Workspace, repo: Repo, pb: Playbook, st: RepoState, log: Log) -> None:
    """Write the key into the new branch's key sites (working tree only), when a keys file exists."""
    if not pb.key_sites:
        return
    from forkops import keyfile

    path = keyfile.resolve_path(None, ws.root)
    if not path.is_file():
        return
    try:
        from forkops.keys import write_sites
    except ImportError:
        note = "key re-apply pending forkops.keys"
        st.notes.append(note)
        log(f"{st.repo}: {note}")
        return
    material = keyfile.load(path)
    sites = write_sites(repo.path, pb, material)
    log(f"{st.repo}: key {material.key_fingerprint} written to {len(sites)} key sites (working tree only)")


# ---------------------------------------------------------------------------------------
# Driving one repository forward
# ---------------------------------------------------------------------------------------
def _advance(ws: Workspace, rc: RepoConfig, st: RepoState, action: str | None, log: Log) -> bool:
    """Move one repository forward from its recorded phase; True when it finished."""
    repo = Repo(rc.path)
    pb = ws.playbook(rc)
    if st.phase == "prepared":
        if repo.current_branch() in (st.onto, st.branch):
            # --force replaces a branch that is checked out: leave it first, so moving the ref
            # does not leave the worktree looking modified.
            repo.run("checkout", "--quiet", "--detach")
        repo.run("update-ref", f"refs/heads/{st.onto}", st.onto_sha)
        repo.run("update-ref", f"refs/heads/{st.branch}", st.start_sha)
        _crash_point("after-branches")
        st.phase = "rebasing"
        _save_state(repo, st)
    if st.phase == "rebasing":
        if _our_rebase(repo, st):
            if action is None:
                return False
            args = ["--skip"] if action == "skip" else ["--continue"]
            if action == "skip":
                pos = rebase_position(repo)
                if pos and pos["commit"] not in st.skipped:
                    st.skipped.append(pos["commit"])
                    _save_state(repo, st)
            else:
                left = sorted(unmerged(repo))
                if left:
                    raise NeedsPerson(f"{rc.name}: unmerged files remain: {', '.join(left)}",
                                      hint=f"resolve them in {repo.path}, `git add` each, then "
                                           f"`forkops upgrade --continue`")
            action = None
            log(f"{rc.name}: git rebase {args[0]}")
            if not _run_rebase(repo, st, args):
                return False
        elif not _rebase_done(repo, st):
            if repo.operation_in_progress() is not None:
                raise BadInput(f"{rc.name}: a {repo.operation_in_progress()} forkops did not start is "
                               f"in progress in {repo.path}; finish or abort it first")
            check_startable(repo, pb, rc.name)
            log(f"{rc.name}: git rebase --onto {st.onto} {st.base} {st.branch}")
            if not _run_rebase(repo, st, ["--merge", "--no-rerere-autoupdate", "--onto", st.onto_sha,
                                          st.base_sha, st.branch]):
                return False
        if action == "skip":
            raise BadInput(f"{rc.name}: nothing to skip: the rebase is not stopped on a commit")
        st.dropped = _dropped(repo, st)
        st.conflict_kinds = None
        st.notes = []
        st.phase = "anchors"
        _save_state(repo, st)
        _crash_point("after-rebase")
    if st.phase in ("anchors", "pin") and st.failure is not None:
        if action is None:
            return False
        if action == "skip":
            raise BadInput(f"{rc.name}: nothing to skip: the upgrade stopped on a failed "
                           f"{st.failure.get('kind', 'anchor')}, not on a commit")
        _on_branch_and_clean(repo, pb, st)
        st.failure = None
        _save_state(repo, st)
    if st.phase == "anchors":
        _on_branch_and_clean(repo, pb, st)
        st.failure = _check_anchors(repo, pb, st, log)
        if st.failure is None:
            st.phase = "pin"
        _save_state(repo, st)
        if st.failure is not None:
            return False
    if st.phase == "pin":
        st.failure = _apply_pins(repo, pb, st, log)
        if st.failure is None:
            st.phase = "keys"
        _save_state(repo, st)
        if st.failure is not None:
            return False
    if st.phase == "keys":
        _reapply_key(ws, repo, pb, st, log)
        st.phase = "finished"
        _save_state(repo, st)
        _crash_point("after-keys")
        for subject in st.dropped:
            log(f"{rc.name}: dropped {subject!r} (already upstream or emptied)")
        log(f"{rc.name}: {st.branch} is ready ({len(st.picked) - len(st.dropped) - len(st.skipped)} of "
            f"{len(st.picked)} patches on {st.onto})")
    return st.phase in ("finished", "done")


def _on_branch_and_clean(repo: Repo, pb: Playbook, st: RepoState) -> None:
    if repo.current_branch() != st.branch:
        raise BadInput(f"{st.repo}: HEAD is not on {st.branch}; check it out to continue "
                       f"(`git checkout {st.branch}`)")
    if _dirty_paths(repo):
        raise BadInput(f"{st.repo}: uncommitted changes ({', '.join(_dirty_paths(repo)[:5])}); "
                       f"commit your fix on {st.branch}, then `forkops upgrade --continue`")


def _push(repo: Repo, st: RepoState, run: RunState, log: Log) -> None:
    if st.pushed:
        return
    args = ["push", "--quiet", "--set-upstream"]
    if run.force_with_lease:
        args.append("--force-with-lease")
    repo.run(*args, "origin", f"refs/heads/{st.branch}:refs/heads/{st.branch}")
    st.pushed = True
    _save_state(repo, st)
    log(f"{st.repo}: pushed {st.branch} to origin (tracking origin/{st.branch})")


def _drive(ws: Workspace, run: RunState, action: str | None, log: Log) -> Outcome:
    """Advance the run's repositories in order; stop at the first that needs a person."""
    for name in run.repos:
        rc = ws.repo(name)
        st = load_state(Repo(rc.path))
        if st is None or st.run != run.id:
            st = _prepare(ws, rc, run, log)
            action = None
        elif st.phase in ("finished", "done"):
            continue  # the action (--continue/--skip) is for the repository that stopped
        if not _advance(ws, rc, st, action, log):
            return _outcome(ws)
        action = None
    for name in run.repos:
        repo = Repo(ws.repo(name).path)
        st = load_state(repo)
        assert st is not None
        if run.push:
            _crash_point("before-push")
            _push(repo, st, run, log)
    for name in run.repos:
        repo = Repo(ws.repo(name).path)
        st = load_state(repo)
        assert st is not None
        st.phase = "done"
        _save_state(repo, st)
    run.phase = "done"
    _save_run(ws, run)
    return _outcome(ws)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def _active_run(ws: Workspace) -> RunState | None:
    run = load_run(ws)
    return run if run is not None and run.phase != "done" else None


def start(ws: Workspace, opts: Options, *, log: Log = _quiet, progress: Progress | None = None) -> Outcome:
    """``forkops upgrade X.Y.Z``: check every repository, then run them in order."""
    active = _active_run(ws)
    if active is not None:
        raise BadInput(f"an upgrade to {active.version} is in progress; run `forkops upgrade --continue`, "
                       f"`--skip` or `--abort` (see `forkops status`)")
    configs = ws.select(opts.repo)
    # Everything checkable is checked for every repository before the first one moves.
    for rc in configs[1:]:  # the first one is checked by its preparation right below
        repo = ensure_clone(rc, progress)
        pb = ws.playbook(rc)
        check_startable(repo, pb, rc.name)
        repo.set_remote(pb.upstream_remote, rc.upstream)
        _check_remote_tag(repo, pb, opts.version)
    run = RunState(id=_new_run_id(), version=str(opts.version), repos=[rc.name for rc in configs],
                   start=opts.start, base=opts.base, push=opts.push, force=opts.force,
                   force_with_lease=opts.force_with_lease)
    # The run file first, so a crash inside the preparation leaves a run that --continue and
    # --abort know; a refusal (exit 2) removes it again: then nothing was started.
    _save_run(ws, run)
    try:
        _prepare(ws, configs[0], run, log)
    except ForkopsError:
        _run_path(ws).unlink(missing_ok=True)
        raise
    return _drive(ws, run, None, log)


def _check_remote_tag(repo: Repo, pb: Playbook, version: Version) -> None:
    tags = plan.remote_release_tags(repo, pb, pb.upstream_remote)
    if pb.tag(version) not in tags:
        plan.fetch_tag(repo, pb, pb.upstream_remote, version, tags)  # raises with the nearest versions


def resume(ws: Workspace, *, skip: bool = False, push: bool = False, force_with_lease: bool = False,
           log: Log = _quiet) -> Outcome:
    """``--continue`` / ``--skip``: pick the run up wherever it stopped (or was killed)."""
    run = _active_run(ws)
    if run is None:
        raise BadInput("no upgrade in progress (start one with `forkops upgrade X.Y.Z`)")
    if push or force_with_lease:
        run.push = run.push or push or force_with_lease
        run.force_with_lease = run.force_with_lease or force_with_lease
        _save_run(ws, run)
    return _drive(ws, run, "skip" if skip else "continue", log)


def abort(ws: Workspace, *, log: Log = _quiet) -> Outcome:
    """``--abort``: restore every ref and HEAD of every repository the run touched, delete the
    branches it created, leave clean worktrees. Idempotent; a crash midway is finished by
    running it again."""
    run = load_run(ws)
    if run is not None and run.phase == "done":
        log(f"nothing to abort: the upgrade to {run.version} finished")
        return _outcome(ws)
    restored = 0
    for rc in ws.repos:
        repo = Repo(rc.path)
        st = load_state(repo)
        if st is None or st.phase == "done" or (run is not None and st.run != run.id):
            continue
        _abort_repo(repo, st, log)
        restored += 1
    if run is not None:
        _run_path(ws).unlink(missing_ok=True)
    if not restored and run is None:
        log("nothing to abort: no upgrade in progress")
    return _outcome(ws)


def _abort_repo(repo: Repo, st: RepoState, log: Log) -> None:
    st.phase = "aborting"
    _save_state(repo, st)
    if _rebase_dir(repo).is_dir() and _our_rebase(repo, st) and not repo.ok("rebase", "--abort"):
        repo.run("rebase", "--quit")
    _crash_point("abort-after-rebase")
    # Detach at the original commit first: the branch HEAD was on may be a ref being restored.
    repo.run("checkout", "--quiet", "--force", "--detach", st.head_sha)
    lines = []
    for ref, sha in st.refs.items():
        if sha is not None:
            lines.append(f"update {ref} {sha}")
        elif repo.rev_parse(ref) is not None:
            lines.append(f"delete {ref}")
    if lines:
        repo.run("update-ref", "--stdin", input="\n".join(lines) + "\n")
    _crash_point("abort-after-refs")
    if st.head_ref is not None:
        repo.run("symbolic-ref", "HEAD", st.head_ref)
    repo.run("reset", "--quiet", "--hard")
    backups = [info.name for info in repo.refs(f"{BACKUP_PREFIX}/{st.run}")]
    if backups:
        repo.run("update-ref", "--stdin", input="".join(f"delete {r}\n" for r in backups))
    _state_path(repo).unlink(missing_ok=True)
    where = st.head_ref.removeprefix("refs/heads/") if st.head_ref else st.head_sha[:12]
    log(f"{st.repo}: aborted; refs restored, HEAD back on {where}")


# ---------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------
def repo_status(repo: Repo, st: RepoState, run: RunState | None) -> dict[str, Any]:
    """The SPEC section 5 shape for one repository, derived from git's files and the state."""
    data: dict[str, Any] = {
        "repo": st.repo, "version": st.version, "state": "idle", "branch": st.branch, "onto": st.onto,
        "base": st.base, "start": st.start, "stopped_at": None, "conflicts": [], "phase": st.phase,
        "path": str(repo.path), "tag": st.tag, "patches": len(st.picked), "dropped": st.dropped,
        "skipped": st.skipped, "reapplied": st.reapplied, "pinned": st.pinned, "failure": st.failure,
        "pushed": st.pushed, "notes": st.notes, "next": [],
    }
    if st.phase == "done" or (run is not None and run.phase == "done"):
        data["state"] = "done"
        return data
    if st.phase == "aborting":
        data["next"] = ["forkops upgrade --abort  (an abort was interrupted; run it again)"]
        return data
    if st.phase == "rebasing" and _our_rebase(repo, st):
        pos = rebase_position(repo)
        data["state"] = "conflict"
        data["stopped_at"] = pos
        stages = unmerged(repo)
        known = (st.conflict_kinds or {}).get("kinds", {}) if (
            pos and (st.conflict_kinds or {}).get("commit") == pos["commit"]) else {}
        data["conflicts"] = [{"path": c["path"], "kind": known.get(c["path"], c["kind"])}
                             for c in conflict_kinds(stages)]
        if stages:
            data["next"] = [f"resolve each file listed (edit it, or `git mergetool`) in {repo.path}",
                            "`git add <file>` (or `git rm <file>`) for each resolved file",
                            "forkops upgrade --continue",
                            "(or: forkops upgrade --skip to drop this commit, --abort to undo the run)"]
        else:
            data["next"] = ["all conflicts are resolved: forkops upgrade --continue",
                            "(or: forkops upgrade --skip to drop this commit, --abort to undo the run)"]
        return data
    if st.failure is not None:
        data["state"] = "anchor-failed"
        data["next"] = [f"fix it by hand on {st.branch} in {repo.path} and commit",
                        "forkops upgrade --continue  (checks again)",
                        "(or: forkops upgrade --abort to undo the run)"]
        return data
    if st.phase == "finished":
        data["next"] = ["forkops upgrade --continue  (the next repository of the run)"]
        return data
    data["interrupted"] = True
    data["next"] = ["forkops upgrade --continue  (the run was interrupted; it picks up from here)",
                    "(or: forkops upgrade --abort to undo the run)"]
    return data


def status(ws: Workspace) -> dict[str, Any]:
    """What the current (or last) run is doing and waiting for."""
    run = load_run(ws)
    entries = []
    for rc in ws.repos:
        repo = Repo(rc.path)
        st = load_state(repo)
        if st is None or (run is not None and st.run != run.id):
            continue
        entries.append(repo_status(repo, st, run))
    if run is None and not entries:
        return {"repo": None, "version": None, "state": "idle", "branch": None, "onto": None, "base": None,
                "start": None, "stopped_at": None, "conflicts": [], "run": None, "next": []}
    order = run.repos if run is not None else [e["repo"] for e in entries]
    by_name = {e["repo"]: e for e in entries}
    current = next((by_name[n] for n in order if n in by_name and by_name[n]["state"] != "done"
                    and by_name[n]["phase"] != "finished"), None)
    if current is None:
        current = next((by_name[n] for n in order if n in by_name and by_name[n]["phase"] == "finished"), None)
    if current is None:
        current = by_name[order[-1]] if order and order[-1] in by_name else (entries[-1] if entries else None)
    repos = [{"repo": n, "state": by_name[n]["state"] if n in by_name else "pending",
              "phase": by_name[n]["phase"] if n in by_name else "pending"} for n in order]
    result = dict(current) if current is not None else {
        "repo": order[0] if order else None, "version": run.version if run else None, "state": "idle",
        "branch": None, "onto": None, "base": None, "start": None, "stopped_at": None, "conflicts": [],
        "interrupted": True, "next": ["forkops upgrade --continue", "(or: forkops upgrade --abort)"]}
    result["run"] = None if run is None else {"id": run.id, "version": run.version, "phase": run.phase,
                                              "push": run.push, "repos": repos}
    return result
