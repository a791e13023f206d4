"""The upgrade state machine: plan, run, continue, skip, abort, status (SPEC sections 1, 5, 6).

Per repository the run goes through these phases, each idempotent so that a run killed at any
point (``kill -9`` included) is completed by ``--continue`` or undone by ``--abort``:

``prepared``  backups recorded (``refs/forkops/backup/<run>/...`` + the state file), nothing moved.
              Every repository of the run is planned first (all input checked, only the upstream
              tags needed fetched, and deleted again on a refusal), then all are recorded: bad
              input for any repository moves nothing anywhere. A rebase git refuses to start
              (untracked files in the way) returns the repository to this phase;
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
Every state file is written atomically (temp file + rename). Every ``git rebase`` runs with
``_REBASE_CONFIG``, so the user's rebase settings cannot change what it does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forkops import anchors as anchors_mod
from forkops import keyfile, plan
from forkops import pins as pins_mod
from forkops.errors import BadInput, ForkopsError, GitError, NeedsPerson
from forkops.fsutil import write_atomic
from forkops.git import Repo, clone, conflict_kind
from forkops.keyfile import KeyMaterial
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

# Every rebase command runs with these: the user's own config must not change what the rebase
# does. rebase.updateRefs would move other branches pointing into the stack (refs forkops never
# recorded, so --abort could not restore them) and adds update-ref steps to the count;
# autoSquash/rebaseMerges reorder or keep commits `forkops check` does not predict; autoStash
# would hide a dirty worktree; rerere.autoUpdate would stage a remembered resolution unreviewed.
_REBASE_CONFIG = ("-c", "rebase.updateRefs=false", "-c", "rebase.autoSquash=false",
                  "-c", "rebase.rebaseMerges=false", "-c", "rebase.autoStash=false",
                  "-c", "rerere.autoUpdate=false")
MASKED = "<key site: masked>"


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
    pins_skipped: list[str] = field(default_factory=list)  # pin names the person --skip'ped
    pushed: bool = False
    notes: list[str] = field(default_factory=list)


def _run_path(ws: Workspace) -> Path:
    return ws.root / RUN_DIR / RUN_FILE


def _state_path(repo: Repo) -> Path:
    return repo.git_dir / "forkops" / STATE_FILE


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
# Planning and preparing: everything is checked for every repository before anything moves
# ---------------------------------------------------------------------------------------
def _untracked_in_the_way(repo: Repo, treeish: str) -> list[str]:
    """Untracked (not ignored) files that checking out ``treeish`` would overwrite: the same
    path, a file where the tree has a folder, or a file inside a folder the tree has as a file.
    git refuses the whole rebase for them; ignored files it overwrites silently."""
    untracked = [p for p in repo.run("ls-files", "--others", "--exclude-standard", "-z").split("\0") if p]
    if not untracked:
        return []
    files = {p for p in repo.run("ls-tree", "-r", "--name-only", "-z", treeish).split("\0") if p}
    folders = {f[:i] for f in files for i, c in enumerate(f) if c == "/"}

    def parents(path: str) -> list[str]:
        return [path[:i] for i, c in enumerate(path) if c == "/"]

    return sorted(u for u in untracked if u in files or u in folders or any(d in files for d in parents(u)))


def _plan(ws: Workspace, rc: RepoConfig, run: RunState, progress: Progress | None = None) -> RepoState:
    """One repository's part of the run, fully checked (BadInput on any bad input), written
    nowhere. It only fetches the upstream tags it needs; a refusal deletes those again, so a
    refused plan leaves every ref as it was."""
    repo = ensure_clone(rc, progress)
    pb = ws.playbook(rc)
    version = Version.parse(run.version)
    check_startable(repo, pb, rc.name)
    remote = pb.upstream_remote
    repo.set_remote(remote, rc.upstream)
    tags_before = _tag_refs(repo)
    try:
        tag, onto_sha = plan.fetch_tag(repo, pb, remote, version)
        refs = plan.stack_refs(repo, pb, target=version, start=run.start, base=run.base, remote=remote)
        onto, branch = plan.branch_names(pb, version)
        remote_heads = _origin_heads(repo, [onto, branch])
        _check_target(repo, onto, onto_sha, f"tag {tag}", remote_heads.get(onto), force=run.force)
        _check_target(repo, branch, refs.start_sha, f"the start branch {refs.start}",
                      remote_heads.get(branch), force=run.force)
        in_the_way = _untracked_in_the_way(repo, onto_sha)
        if in_the_way:
            shown = ", ".join(in_the_way[:5]) + (" ..." if len(in_the_way) > 5 else "")
            raise BadInput(f"{rc.name}: untracked files in {repo.path} would be overwritten by "
                           f"checking out {tag} ({shown}); move or remove them first")
        picked = plan.patch_stack(repo, refs)
    except ForkopsError:
        _drop_tags(repo, _tag_refs(repo) - tags_before)
        raise
    head_sha = repo.head()
    assert head_sha is not None
    branch_ref = repo.run_raw("symbolic-ref", "--quiet", "HEAD").stdout.decode().strip() or None
    touched: dict[str, str | None] = {ref: None for ref in sorted(_tag_refs(repo) - tags_before)}
    for short in (onto, branch):
        touched[f"refs/heads/{short}"] = repo.rev_parse(f"refs/heads/{short}")
    return RepoState(
        run=run.id, repo=rc.name, version=run.version, phase="prepared", branch=branch, onto=onto,
        tag=str(tag), onto_sha=onto_sha, base=str(refs.base), base_sha=refs.base_sha, start=refs.start,
        start_sha=refs.start_sha, head_ref=branch_ref, head_sha=head_sha, refs=touched, picked=picked,
    )


def _drop_tags(repo: Repo, tags: set[str]) -> None:
    if tags:
        repo.run("update-ref", "--stdin", input="".join(f"delete {t}\n" for t in sorted(tags)))


def _drop_plan(repo: Repo, st: RepoState) -> None:
    """Undo a plan that was never recorded: delete the tags it fetched."""
    _drop_tags(repo, {ref for ref, sha in st.refs.items() if sha is None and ref.startswith("refs/tags/")})


def _record(repo: Repo, st: RepoState, log: Log) -> None:
    """Backup refs first, the state file second: a crash between them leaves refs nothing reads."""
    lines = [f"update {_backup_ref(st.run, 'HEAD')} {st.head_sha}"]
    lines += [f"update {_backup_ref(st.run, ref)} {sha}" for ref, sha in st.refs.items() if sha]
    repo.run("update-ref", "--stdin", input="\n".join(lines) + "\n")
    _save_state(repo, st)
    log(f"{st.repo}: upgrading to {st.version}: {st.branch} from {st.start} ({len(st.picked)} patches "
        f"on {st.base}), onto {st.onto} ({st.tag})")
    _crash_point("after-backup")


def _prepare(ws: Workspace, rc: RepoConfig, run: RunState, log: Log) -> RepoState:
    """Plan and record one repository (a run whose preparation was interrupted by a crash)."""
    st = _plan(ws, rc, run)
    _record(Repo(rc.path), st, log)
    return st


def _backup_ref(run_id: str, ref: str) -> str:
    return f"{BACKUP_PREFIX}/{run_id}/{ref.removeprefix('refs/')}"


# ---------------------------------------------------------------------------------------
# Rebase
# ---------------------------------------------------------------------------------------
def _rebase_dir(repo: Repo) -> Path:
    return repo.git_dir / "rebase-merge"


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


def conflict_kinds(stages: dict[str, set[int]]) -> list[dict[str, str]]:
    """Each unmerged path with its kind, from its index stages (``forkops.git.conflict_kind``,
    the same naming ``forkops check`` uses), sorted by path."""
    return [{"path": p, "kind": conflict_kind(s)} for p, s in sorted(stages.items())]


class _RebaseRefused(Exception):
    """git refused to start the rebase and changed nothing (e.g. untracked files in the way)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _git_complaint(stderr: str) -> list[str]:
    """git's own reason from a refusal: its ``error:``/``fatal:`` lines with the paths listed
    under them, without the generic trailer ("could not detach HEAD")."""
    lines: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("\t") and lines:
            lines[-1] += ("" if lines[-1].endswith(":") else ",") + " " + line.strip()
        elif line.startswith(("error: ", "fatal: ")) and "could not detach HEAD" not in line:
            lines.append(line.split(": ", 1)[1].strip())
    return lines or [line for line in stderr.splitlines() if line.strip()][-1:] or ["no error output"]


def _run_rebase(repo: Repo, st: RepoState, args: list[str]) -> bool:
    """Run a ``git rebase`` command; True when the rebase finished, False when it stopped.

    Raises _RebaseRefused when a starting rebase failed before it began (no rebase state,
    the branch untouched): the caller rolls back and reports it as bad input."""
    proc = repo.run_raw(*_REBASE_CONFIG, "rebase", *args, env={"GIT_EDITOR": "true"})
    output = proc.stdout.decode("utf-8", "replace") + "\n" + proc.stderr.decode("utf-8", "replace")
    if _rebase_dir(repo).is_dir():
        # A stop without unmerged files (an empty commit, untracked files in the way): git's
        # last lines say why; with unmerged files, status lists them instead.
        st.notes = [] if unmerged(repo) else [ln for ln in output.splitlines() if ln.strip()][-3:]
        _save_state(repo, st)
        _crash_point("after-rebase-stop")
        return False
    if proc.returncode != 0:
        starting = args[0] not in ("--continue", "--skip")
        if starting and repo.rev_parse(f"refs/heads/{st.branch}") == st.start_sha:
            raise _RebaseRefused(_git_complaint(proc.stderr.decode("utf-8", "replace")))
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
    merged, why = anchors_mod.retarget(repo, res, base=st.base_sha, start=st.start_sha, live="HEAD")
    if merged is None:
        return None, why
    old = res.left_behind[0]
    message = (f"Re-apply {res.name} patch to {res.path} (moved from {old})\n\n"
               f"Upstream moved the definition to {res.path}; the rebase left the fork's change in "
               f"{old}.\nforkops merged the change ({st.base}..{st.start}) into the new file.\n")
    return _commit_file(repo, res.path, merged, message), ""


def _site_value_spans(text: str, pb: Playbook) -> list[tuple[int, int]]:
    """Spans of every key site's ``value`` group in ``text``, also where the text is a diff:
    each line is matched once more without its ``+``/``-``/`` `` column (a pattern anchored
    with ``^`` would miss it otherwise), and those spans are mapped back."""
    stripped: list[str] = []
    where: list[int] = []  # original offset of each character of the stripped text
    pos = 0
    for line in text.splitlines(keepends=True):
        cut = 1 if line[:1] in ("+", "-", " ") else 0
        stripped.append(line[cut:])
        where.extend(range(pos + cut, pos + len(line)))
        pos += len(line)
    where.append(pos)
    plain = "".join(stripped)
    spans = []
    for site in pb.key_sites:
        spans += [m.span("value") for m in site.regex.finditer(text)]
        spans += [(where[m.start("value")], where[m.end("value")]) for m in site.regex.finditer(plain)]
    return spans


def mask_secrets(text: str, pb: Playbook, material: KeyMaterial | None) -> str:
    """``text`` (e.g. the fork's diff of a key site file, shown and stored on an anchor failure)
    with every key site value replaced by ``<key site: masked>``; with ``material``, every line
    that still holds the key or IV in a form the commit guard knows is replaced too, and a text
    that holds it across lines even then is withheld whole."""
    spans = sorted(_site_value_spans(text, pb))
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in reversed(merged):
        text = text[:a] + MASKED + text[b:]
    if material is None:
        return text
    from forkops.secrets import Matcher

    matcher = Matcher(material)
    lines = []
    for line in text.splitlines(keepends=True):
        if matcher.find(line.encode("utf-8", "surrogateescape")):
            mark = line[:1] if line[:1] in ("+", "-", " ") else ""
            line = f"{mark}<line masked: it holds the key>" + ("\n" if line.endswith("\n") else "")
        lines.append(line)
    text = "".join(lines)
    plain = "".join(ln[1:] if ln[:1] in ("+", "-", " ") else ln for ln in text.splitlines(keepends=True))
    if any(matcher.find(t.encode("utf-8", "surrogateescape")) for t in (text, plain)):
        return "<the fork's change is withheld: it holds the key>"
    return text


def _key_material(ws: Workspace) -> KeyMaterial | None:
    """The workspace's key, when a usable keys file exists (only to recognise it in text)."""
    path = keyfile.resolve_path(None, ws.root)
    if not path.is_file():
        return None
    try:
        return keyfile.load(path)
    except ForkopsError:
        return None  # a keys file forkops refuses to read: the key site masking still applies


def _anchor_failure(ws: Workspace, repo: Repo, pb: Playbook, st: RepoState, res: anchors_mod.AnchorResult,
                    detail: str) -> dict[str, Any]:
    change = ""
    if res.left_behind:
        old = res.left_behind[0]
        # Old-style forks commit the key in this very file: mask before it is shown or stored,
        # and only then shorten it (a cut could leave a key site's value half matched).
        diff = repo.run("diff", st.base_sha, st.start_sha, "--", old, check=False)
        change = mask_secrets(diff, pb, _key_material(ws))[:4000]
    return {"kind": "anchor", "anchor": res.name, "message": detail or res.detail, "path": res.path,
            "defined_in": list(res.defined_in), "patched_in": list(res.patched_in), "change": change}


def _check_anchors(ws: Workspace, repo: Repo, pb: Playbook, st: RepoState, log: Log) -> dict[str, Any] | None:
    version = Version.parse(st.version)
    for res in anchors_mod.check_all(repo, "HEAD", pb.anchors, version):
        if res.ok:
            log(f"{st.repo}: anchor {res.name}: ok ({res.path})")
            continue
        if not (res.left_behind and res.path):
            return _anchor_failure(ws, repo, pb, st, res, "")
        commit, detail = _reapply(repo, st, res)
        if commit is None:
            return _anchor_failure(ws, repo, pb, st, res, detail)
        _crash_point("after-reapply")
        anchor = next(a for a in pb.anchors if a.name == res.name)
        again = anchors_mod.check(repo, "HEAD", anchor, version)
        if not again.ok or again.path != res.path:
            return _anchor_failure(ws, repo, pb, st, again, f"re-applied to {res.path}, but: {again.detail}")
        st.reapplied.append({"anchor": res.name, "from": res.left_behind[0], "to": res.path, "commit": commit})
        log(f"{st.repo}: anchor {res.name}: re-applied the patch to {res.path} "
            f"(moved from {res.left_behind[0]}) in {commit[:12]}")
    return None


def _apply_pins(repo: Repo, pb: Playbook, st: RepoState, log: Log) -> dict[str, Any] | None:
    """Move every pin to the new branch (one commit each); a failure dict when one cannot be.
    Re-run by --continue: a pin already right is left alone, one fixed by hand is accepted."""
    version = Version.parse(st.version)
    for pin in pb.pins:
        if pin.name in st.pins_skipped:
            continue
        blob = repo.show_file("HEAD", pin.file)
        if blob is None:
            return {"kind": "pin", "pin": pin.name, "path": pin.file,
                    "message": f"pin {pin.name}: {pin.file} does not exist on {st.branch}; add it "
                               f"by hand and commit, or `forkops upgrade --skip` to finish without it"}
        # Any bytes round-trip: a WORKSPACE is not guaranteed to be UTF-8.
        edit = pins_mod.apply(pb, pin, version, blob.decode("utf-8", "surrogateescape"))
        if edit.skip is not None:
            if edit.skip not in st.notes:
                st.notes.append(edit.skip)
            log(f"{st.repo}: pin {pin.name}: {edit.skip}")
            continue
        if not edit.ok:
            what = (f"{pin.name} is a {edit.rule}, not pinned to a branch of the fork" if edit.rule
                    else f"no rule named {pin.name}")
            return {"kind": "pin", "pin": pin.name, "path": pin.file,
                    "message": f"pin {pin.name}: {pin.file} has no match for /{pin.pattern}/ ({what}); "
                               f"point it at {edit.wanted} by hand and commit, then --continue; or "
                               f"`forkops upgrade --skip` to finish without this pin"}
        if edit.text is None:
            log(f"{st.repo}: pin {pin.name} already names {edit.wanted}")
            continue
        commit = _commit_file(repo, pin.file, edit.text.encode("utf-8", "surrogateescape"),
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
    path = keyfile.resolve_path(None, ws.root)
    if not path.is_file():
        return
    from forkops.keys import write_sites

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
        check_startable(repo, pb, st.repo)
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
            check_startable(repo, pb, st.repo)
            log(f"{rc.name}: git rebase --onto {st.onto} {st.base} {st.branch}")
            try:
                finished = _run_rebase(repo, st, ["--merge", "--no-rerere-autoupdate", "--onto",
                                                  st.onto_sha, st.base_sha, st.branch])
            except _RebaseRefused as exc:
                # Nothing was rebased: undo the branches made for it, so the refusal leaves the
                # repository as it was; the run waits in `prepared` for --continue or --abort.
                st.notes = [f"git refused to start the rebase: {'; '.join(exc.lines)}"]
                _back_to_prepared(repo, st)
                untracked = any("untracked" in line for line in exc.lines)
                raise BadInput(
                    f"{rc.name}: git refused to start the rebase: {'; '.join(exc.lines)}",
                    hint=("move or remove those untracked files" if untracked else "fix what git names")
                    + f" in {repo.path}, then `forkops upgrade --continue` (or `--abort`); "
                      f"{st.branch} and {st.onto} were not created") from None
            if not finished:
                return False
        if action == "skip":
            raise BadInput(f"{rc.name}: nothing to skip: the rebase is not stopped on a commit")
        st.dropped = _dropped(repo, st)
        st.notes = []
        st.phase = "anchors"
        _save_state(repo, st)
        _crash_point("after-rebase")
    if st.phase in ("anchors", "pin") and st.failure is not None:
        if action is None:
            return False
        if action == "skip":
            if st.failure.get("kind") != "pin":
                raise BadInput(f"{rc.name}: nothing to skip: the upgrade stopped on a failed anchor, "
                               f"not on a commit; fix it on {st.branch} and commit, or --abort")
            # The way out of a pin the fork cannot express: finish without it, on record.
            name = str(st.failure.get("pin"))
            st.pins_skipped.append(name)
            st.notes.append(f"pin {name} skipped (--skip): {st.failure.get('path')} does not name "
                            f"{st.branch}; point it there by hand if the build needs it")
            log(f"{rc.name}: {st.notes[-1]}")
        _on_branch_and_clean(repo, pb, st)
        st.failure = None
        _save_state(repo, st)
    if st.phase == "anchors":
        _on_branch_and_clean(repo, pb, st)
        st.failure = _check_anchors(ws, repo, pb, st, log)
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


def _back_to_prepared(repo: Repo, st: RepoState) -> None:
    """Undo the ``prepared`` -> ``rebasing`` step: the branches it made get their values from
    before the run back (or go), HEAD returns to where it was. Fetched tags stay recorded for
    --abort. The worktree is not forced: git refused before it changed anything."""
    repo.run("checkout", "--quiet", "--detach", st.head_sha)
    lines = []
    for ref, sha in st.refs.items():
        if not ref.startswith("refs/heads/"):
            continue
        if sha is not None:
            lines.append(f"update {ref} {sha}")
        elif repo.rev_parse(ref) is not None:
            lines.append(f"delete {ref}")
    if lines:
        repo.run("update-ref", "--stdin", input="\n".join(lines) + "\n")
    if st.head_ref is not None:
        repo.run("symbolic-ref", "HEAD", st.head_ref)
    st.phase = "prepared"
    _save_state(repo, st)


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
    """``forkops upgrade X.Y.Z``: plan every repository (all input checked), record them all,
    then run them in order. Bad input for any repository moves nothing anywhere."""
    active = _active_run(ws)
    if active is not None:
        raise BadInput(f"an upgrade to {active.version} is in progress; run `forkops upgrade --continue`, "
                       f"`--skip` or `--abort` (see `forkops status`)")
    configs = ws.select(opts.repo)
    run = RunState(id=_new_run_id(), version=str(opts.version), repos=[rc.name for rc in configs],
                   start=opts.start, base=opts.base, push=opts.push, force=opts.force,
                   force_with_lease=opts.force_with_lease)
    plans: list[tuple[Repo, RepoState]] = []
    try:
        for rc in configs:
            plans.append((Repo(rc.path), _plan(ws, rc, run, progress)))
    except ForkopsError:
        for repo, st in plans:
            _drop_plan(repo, st)
        raise
    # The run file first, so a crash while recording leaves a run --continue and --abort know.
    _save_run(ws, run)
    for repo, st in plans:
        _record(repo, st, log)
    return _drive(ws, run, None, log)


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
    if _rebase_dir(repo).is_dir() and _our_rebase(repo, st) and not repo.ok(
            *_REBASE_CONFIG, "rebase", "--abort"):
        repo.run(*_REBASE_CONFIG, "rebase", "--quit")
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
        data["conflicts"] = conflict_kinds(stages)
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
                        "forkops upgrade --continue  (checks again)"]
        if st.failure.get("kind") == "pin":
            data["next"].append("(or: forkops upgrade --skip to finish without this pin, "
                                "--abort to undo the run)")
        else:
            data["next"].append("(or: forkops upgrade --abort to undo the run)")
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

    def waiting(n: str) -> bool:  # not started yet: no state, or prepared behind the current one
        return n not in by_name or (by_name[n] is not current and by_name[n]["phase"] == "prepared")

    repos = [{"repo": n, "state": "pending" if waiting(n) else by_name[n]["state"],
              "phase": by_name[n]["phase"] if n in by_name else "pending"} for n in order]
    result = dict(current) if current is not None else {
        "repo": order[0] if order else None, "version": run.version if run else None, "state": "idle",
        "branch": None, "onto": None, "base": None, "start": None, "stopped_at": None, "conflicts": [],
        "interrupted": True, "next": ["forkops upgrade --continue", "(or: forkops upgrade --abort)"]}
    result["run"] = None if run is None else {"id": run.id, "version": run.version, "phase": run.phase,
                                              "push": run.push, "repos": repos}
    return result
