"""Which refs an upgrade or a prediction works on (docs/SPEC.md section 1), shared by upgrade and check.

* start: ``--from BRANCH``, else the newest fork branch ``bA.B.C`` older than the target
  (local or ``origin/``);
* base: ``--base TAG``, else the newest upstream release tag reachable from the start (fetched
  from upstream when it is missing locally: Serving's tags are lightweight and often absent);
* the patch stack is ``base..start``; the rebase is ``git rebase --onto TAG base bX.Y.Z``.
Tags are always resolved as ``refs/tags/NAME`` because a branch may share the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from forkops.errors import BadInput
from forkops.git import Repo
from forkops.playbook import Playbook
from forkops.version import BranchName, TagName, Version, nearest


@dataclass(frozen=True)
class StackRefs:
    """The patch stack of one repository: ``base..start``."""

    start: str  # as the user sees it: "b2.4.0" or "origin/b2.4.0"
    start_sha: str
    base: TagName
    base_sha: str  # the commit the base tag peels to

    def as_json(self) -> dict[str, str]:
        return {"start": self.start, "start_sha": self.start_sha, "base": str(self.base), "base_sha": self.base_sha}


def fork_branches(repo: Repo, pb: Playbook) -> dict[str, Version]:
    """Fork branches (local ``bX.Y.Z`` and ``origin/bX.Y.Z``) by short name -> version."""
    found: dict[str, Version] = {}
    for info in repo.refs("refs/heads", "refs/remotes/origin"):
        short = info.name.removeprefix("refs/heads/").removeprefix("refs/remotes/")
        leaf = short.removeprefix("origin/")
        version = pb.version_of_fork_branch(leaf)
        if version is not None:
            found[short] = version
    return found


def default_start(repo: Repo, pb: Playbook, target: Version) -> str:
    """The newest fork branch older than ``target``; a local branch wins over ``origin/``."""
    older = [(v, not name.startswith("origin/"), name) for name, v in fork_branches(repo, pb).items() if v < target]
    if not older:
        return default_start_refusal(pb, target, list(fork_branches(repo, pb)))
    return max(older)[2]


def default_start_refusal(pb: Playbook, target: Version, branches: list[str]) -> NoReturn:
    """BadInput: no fork branch older than ``target`` among ``branches`` (short names)."""
    known = ", ".join(sorted(b for b in branches if pb.version_of_fork_branch(b.removeprefix("origin/")))) or "none"
    raise BadInput(f"no fork branch older than {target} (known fork branches: {known}); pass --from BRANCH")


def resolve_branch(repo: Repo, name: str) -> str:
    """The commit a branch name means: local, then remote-tracking (``origin/x`` or ``x`` on origin)."""
    for ref in (f"refs/heads/{name}", f"refs/remotes/{name}", f"refs/remotes/origin/{name}"):
        sha = repo.commit_of(ref)
        if sha:
            return sha
    raise BadInput(f"no branch {name!r} here or on origin")


def remote_release_tags(repo: Repo, pb: Playbook, remote: str) -> dict[TagName, str]:
    """Upstream tags that match the playbook's tag pattern -> commit (``git ls-remote``)."""
    return {TagName(t): sha for t, sha in repo.ls_remote_tags(remote).items() if pb.version_of_tag(t)}


def fetch_tag(repo: Repo, pb: Playbook, remote: str, version: Version,
              remote_tags: dict[TagName, str] | None = None) -> tuple[TagName, str]:
    """Fetch exactly ``refs/tags/TAG`` from ``remote``; return (tag, commit). A tag upstream
    does not have is BadInput listing the nearest versions it does have."""
    tag = pb.tag(version)
    tags = remote_tags if remote_tags is not None else remote_release_tags(repo, pb, remote)
    if tag not in tags:
        have = [v for v in (pb.version_of_tag(t) for t in tags) if v is not None]
        near = ", ".join(str(v) for v in nearest(version, have)) or "none"
        raise BadInput(f"upstream has no tag {tag} (nearest versions: {near})")
    local = repo.commit_of(tag.ref)
    if local != tags[tag]:
        repo.fetch(remote, [f"+{tag.ref}:{tag.ref}"])
    sha = repo.commit_of(tag.ref)
    assert sha is not None
    return tag, sha


def find_base(repo: Repo, pb: Playbook, start_sha: str, remote: str | None) -> TagName:
    """The newest upstream release tag reachable from ``start_sha`` (rcs count, a release wins)."""
    local = [
        (v, TagName(info.name.removeprefix("refs/tags/")))
        for info in repo.refs("--merged", start_sha, "refs/tags")
        if (v := pb.version_of_tag(info.name.removeprefix("refs/tags/"))) is not None
    ]
    if local:
        return max(local)[1]
    if remote is not None:
        # Tags are often missing in a fork clone (lightweight tags are not copied): ask upstream
        # and fetch the newest one whose commit is already in our history.
        candidates = sorted(
            ((pb.version_of_tag(t), t, sha) for t, sha in remote_release_tags(repo, pb, remote).items()),
            reverse=True,
        )
        present = repo.present([sha for _v, _t, sha in candidates])  # one process, not one per tag
        for _version, tag, sha in candidates:
            if sha in present and repo.is_ancestor(sha, start_sha):
                repo.fetch(remote, [f"+{tag.ref}:{tag.ref}"])
                return tag
    raise BadInput(f"no upstream release tag ({pb.upstream_tag}) is reachable from {start_sha[:12]}; pass --base TAG")


def resolve_base(repo: Repo, pb: Playbook, given: str, remote: str | None) -> tuple[TagName, str]:
    """``--base`` accepts a tag name or a version; returns (tag, commit)."""
    tag = TagName(given)
    version = Version.try_parse(given)
    if repo.commit_of(tag.ref) is None and version is not None and pb.version_of_tag(given) is None:
        tag = pb.tag(version)
    sha = repo.commit_of(tag.ref)
    if sha is None and remote is not None:
        if version is None:
            raise BadInput(f"--base {given}: no such tag here")
        tag, sha = fetch_tag(repo, pb, remote, pb.version_of_tag(tag) or version)
    if sha is None:
        raise BadInput(f"--base {given}: no such tag here")
    return tag, sha


def stack_refs(repo: Repo, pb: Playbook, *, target: Version, start: str | None, base: str | None,
               remote: str | None) -> StackRefs:
    start_name = start or default_start(repo, pb, target)
    start_sha = resolve_branch(repo, start_name)
    if base is not None:
        base_tag, base_sha = resolve_base(repo, pb, base, remote)
    else:
        base_tag = find_base(repo, pb, start_sha, remote)
        base_sha = repo.commit_of(base_tag.ref) or ""
    if not repo.is_ancestor(base_sha, start_sha):
        raise BadInput(f"base {base_tag} is not an ancestor of {start_name}")
    return StackRefs(start_name, start_sha, base_tag, base_sha)


def branch_names(pb: Playbook, version: Version) -> tuple[BranchName, BranchName]:
    """(upstream snapshot ``tfX.Y.Z``, fork branch ``bX.Y.Z``)."""
    return pb.upstream_branch_name(version), pb.fork_branch_name(version)
