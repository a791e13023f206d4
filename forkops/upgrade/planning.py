"""Planning one repository: every input checked, nothing written (no ref, no config, no file).

Upstream tags are fetched as objects only (``git fetch --no-write-fetch-head URL refs/tags/T``
from the URL, not a remote): the tag refs are created later, recorded, in the same transaction
as the backups. So a refused or killed plan leaves every ref and the config as they were.
``--plan`` goes further and fetches into a temporary object directory that is deleted after.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forkops import plan
from forkops.errors import BadInput
from forkops.git import Progress, RefInfo, RemoteRef, Repo
from forkops.playbook import Playbook
from forkops.upgrade.preflight import check_identity, check_startable, untracked_in_the_way
from forkops.version import TagName, Version, nearest
from forkops.workspace import RepoConfig


@dataclass(frozen=True)
class Request:
    """What the person asked for, the same for every repository of the run."""

    version: Version
    start: str | None = None
    base: str | None = None
    branch: str | None = None
    force: bool = False


@dataclass(frozen=True)
class RepoPlan:
    """One repository's part of a run, fully checked. ``new_tags`` are the tag refs the run
    creates (full name -> object); ``touched`` every ref it may move -> value before (None:
    missing), which is what ``--abort`` restores."""

    name: str
    tag: TagName
    onto_sha: str
    base: TagName
    base_sha: str
    start: str
    start_sha: str
    onto: str
    branch: str
    picked: tuple[str, ...]
    new_tags: dict[str, str]
    touched: dict[str, str | None]
    head_sha: str
    head_ref: str | None

    def as_json(self) -> dict[str, object]:
        return {"repo": self.name, "tag": str(self.tag), "onto": self.onto, "onto_sha": self.onto_sha,
                "base": str(self.base), "base_sha": self.base_sha, "start": self.start,
                "start_sha": self.start_sha, "branch": self.branch, "commits": len(self.picked)}


def _remote_tag(pb: Playbook, tags: dict[str, RemoteRef], version: Version) -> tuple[TagName, RemoteRef]:
    tag = pb.tag(version)
    if tag.ref not in tags:
        have = [v for ref in tags if (v := pb.version_of_tag(ref.removeprefix("refs/tags/"))) is not None]
        near = ", ".join(str(v) for v in nearest(version, have)) or "none"
        raise BadInput(f"upstream has no tag {tag} (nearest versions: {near})")
    return tag, tags[tag.ref]


def _base(repo: Repo, pb: Playbook, req: Request, tags: dict[str, RemoteRef], start_sha: str
          ) -> tuple[TagName, str, RemoteRef | None]:
    """(base tag, its commit, the upstream ref when the tag must be created locally). Without
    ``--base`` the tag found is an ancestor of ``start_sha`` (git checked it); the caller
    checks a given one."""
    if req.base is not None:
        given = req.base
        version = Version.try_parse(given)
        candidates = [TagName(given)] + ([pb.tag(version)] if version is not None else [])
        for tag in candidates:
            sha = repo.commit_of(tag.ref)
            if sha is not None:
                return tag, sha, None
        for tag in candidates:
            if tag.ref in tags:
                return tag, tags[tag.ref].peeled, tags[tag.ref]
        raise BadInput(f"--base {given}: no such tag here or upstream")
    local = [(v, TagName(info.name.removeprefix("refs/tags/")), info.peeled)
             for info in repo.refs("--merged", start_sha, "refs/tags")
             if (v := pb.version_of_tag(info.name.removeprefix("refs/tags/"))) is not None]
    if local:
        _v, tag, sha = max(local)
        return tag, sha, None
    # Lightweight upstream tags are often missing in a fork clone: the newest upstream release
    # whose commit the start already contains.
    upstream = sorted(((v, ref) for ref in tags.values()
                       if (v := pb.version_of_tag(ref.name.removeprefix("refs/tags/"))) is not None),
                      key=lambda item: item[0], reverse=True)
    present = repo.present([ref.peeled for _v, ref in upstream])
    for _v, ref in upstream:
        if ref.peeled in present and repo.is_ancestor(ref.peeled, start_sha):
            return TagName(ref.name.removeprefix("refs/tags/")), ref.peeled, ref
    raise BadInput(f"no upstream release tag ({pb.upstream_tag}) is reachable from {start_sha[:12]}; "
                   f"pass --base TAG")


def _default_start(local: dict[str, RefInfo], pb: Playbook, target: Version) -> str:
    """The newest fork branch older than ``target``; a local branch wins over ``origin/``."""
    older = []
    for name in local:
        if name.startswith(("refs/heads/", "refs/remotes/origin/")):
            short = name.removeprefix("refs/heads/").removeprefix("refs/remotes/")
            version = pb.version_of_fork_branch(short.removeprefix("origin/"))
            if version is not None and version < target:
                older.append((version, not short.startswith("origin/"), short))
    if not older:
        return plan.default_start_refusal(pb, target, sorted(
            n.removeprefix("refs/heads/").removeprefix("refs/remotes/") for n in local
            if not n.startswith("refs/tags/")))
    return max(older)[2]


def _resolve_branch(local: dict[str, RefInfo], name: str) -> str:
    """The commit a branch name means: local, then remote-tracking (``origin/x`` or ``x`` on origin)."""
    for ref in (f"refs/heads/{name}", f"refs/remotes/{name}", f"refs/remotes/origin/{name}"):
        if ref in local:
            return local[ref].peeled
    raise BadInput(f"no branch {name!r} here or on origin")


def _check_target(repo: Repo, refs: dict[str, RefInfo], ref: str, want: str, what: str, remote_sha: str | None, *,
                  force: bool, published_hint: str) -> str | None:
    """A target branch may already exist only where it equals what forkops would create.
    Returns its current local value."""
    name = ref.removeprefix("refs/heads/")
    if remote_sha is not None and remote_sha != want:
        raise BadInput(f"origin already has branch {name} at {remote_sha[:12]}, not {what} ({want[:12]}); "
                       f"{published_hint}")
    local = refs[ref].sha if ref in refs else None
    if local is not None and local != want and not force:
        subject = repo.commit_infos([local])[0].subject
        raise BadInput(f"branch {name} already exists at {local[:12]} ({subject!r}), not {what} "
                       f"({want[:12]}); to publish a finished run: `forkops push`; else pass --force to replace "
                       f"the local branch, or --branch NAME")
    return local


def plan_repo(repo: Repo, rc: RepoConfig, pb: Playbook, req: Request, *, progress: Progress | None = None
              ) -> RepoPlan:
    """Check everything for one repository and fetch the upstream objects it needs; write
    nothing else. BadInput on any bad input."""
    here = check_startable(repo, pb, rc.name, untracked=True)
    check_identity(repo, rc.name)
    tags = repo.ls_remote(rc.upstream, tags=True)
    tag, tag_ref = _remote_tag(pb, tags, req.version)
    # One listing of the local refs answers every "what is X here" question below.
    local = {info.name: info for info in repo.refs("refs/heads", "refs/remotes/origin", "refs/tags")}
    start = req.start or _default_start(local, pb, req.version)
    start_sha = _resolve_branch(local, start)
    base, base_sha, base_ref = _base(repo, pb, req, tags, start_sha)
    new_tags: dict[str, str] = {}
    if tag.ref not in local or local[tag.ref].sha != tag_ref.sha:
        new_tags[tag.ref] = tag_ref.sha
    if base_ref is not None and (base_ref.name not in local or local[base_ref.name].sha != base_ref.sha):
        new_tags[base_ref.name] = base_ref.sha
    if new_tags:
        repo.fetch_objects(rc.upstream, sorted(new_tags), progress=progress)
    if req.base is not None and not repo.is_ancestor(base_sha, start_sha):
        raise BadInput(f"base {base} is not an ancestor of {start}")
    onto, default_branch = plan.branch_names(pb, req.version)
    branch = req.branch or str(default_branch)
    if req.branch is not None and not repo.valid_branch_name(branch):
        raise BadInput(f"--branch {branch}: not a valid branch name")
    onto_ref, branch_ref = f"refs/heads/{onto}", f"refs/heads/{branch}"
    remote_heads = repo.ls_remote_heads("origin", [onto_ref, branch_ref])
    hint = "pass --branch NAME to write the result elsewhere (e.g. --branch forkops/" + branch + ")"
    touched: dict[str, str | None] = {ref: local[ref].sha if ref in local else None for ref in sorted(new_tags)}
    touched[onto_ref] = _check_target(repo, local, onto_ref, tag_ref.peeled, f"tag {tag}",
                                      remote_heads.get(onto_ref), force=req.force,
                                      published_hint="delete it on origin, or upgrade to another version")
    touched[branch_ref] = _check_target(repo, local, branch_ref, start_sha, f"the start branch {start}",
                                        remote_heads.get(branch_ref), force=req.force, published_hint=hint)
    in_the_way = untracked_in_the_way(repo, tag_ref.peeled, here.untracked)
    if in_the_way:
        shown = ", ".join(in_the_way[:5]) + (" ..." if len(in_the_way) > 5 else "")
        raise BadInput(f"{rc.name}: untracked files in {repo.path} would be overwritten by checking out "
                       f"{tag} ({shown}); move or remove them first")
    picked = tuple(repo.rev_list("--reverse", "--no-merges", f"{base_sha}..{start_sha}"))
    return RepoPlan(rc.name, tag, tag_ref.peeled, base, base_sha, start, start_sha, str(onto), branch,
                    picked, new_tags, touched, here.head, here.head_ref)


@contextmanager
def scratch_objects(repo: Repo) -> Iterator[dict[str, str]]:
    """An environment that makes git write new objects into a temporary directory (reading the
    repository's own through alternates); the directory is deleted on exit. ``--plan`` fetches
    and predicts in it, so it leaves nothing behind."""
    objects = repo.git_dir / "objects"
    tmp = Path(tempfile.mkdtemp(prefix="forkops-plan-"))
    try:
        (tmp / "objects" / "info").mkdir(parents=True)
        # Alternates in the file (not only the environment) so that a nested scratch directory
        # (the prediction's) reaches the repository's objects through this one.
        (tmp / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        yield {"GIT_OBJECT_DIRECTORY": str(tmp / "objects")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
