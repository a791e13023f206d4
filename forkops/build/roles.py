"""Which forks a build stages, by the roles their playbooks declare (never guessed).

The fork whose playbook has ``role = "serving"`` is built; its ``[build] builds_against`` names the
role of the fork that ``org_tensorflow`` is pointed at (``"tensorflow"``). A workspace without
such a fork builds against Serving's own pin; a fork with another role, or none, is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.errors import BadInput
from forkops.git import Repo
from forkops.playbook import Playbook, Role

if TYPE_CHECKING:
    from forkops.version import Version
    from forkops.workspace import RepoConfig, Workspace


@dataclass(frozen=True)
class Fork:
    name: str
    path: Path
    playbook: Playbook
    branch: str
    commit: str


def forks(ws: Workspace, version: Version) -> tuple[Fork, Fork | None] | None:
    """(serving, tensorflow) at ``bX.Y.Z``, or None when no repository has the serving role (a
    TensorFlow-only workspace: there is no image to build). tensorflow is None when the workspace
    has no fork with the role the Serving playbook builds against. BadInput when several forks
    have the serving role, or several the TensorFlow one."""
    playbooks = {r.name: ws.playbook(r) for r in ws.repos}

    def with_role(role: Role) -> list[RepoConfig]:
        return [r for r in ws.repos if playbooks[r.name].role == role]

    serving = with_role("serving")
    if not serving:
        # A playbook with [build] but no role (a copy made before roles existed): say so rather
        # than build nothing, and rather than guess.
        unroled = [r for r in ws.repos if playbooks[r.name].build is not None and playbooks[r.name].role is None]
        if unroled:
            raise BadInput(f"{unroled[0].name}: its playbook {unroled[0].playbook!r} has [build] but no role",
                           hint='add role = "serving" at its top (the fork it builds against has role = "tensorflow")')
        return None
    if len(serving) > 1:
        raise BadInput(f'{ws.file}: several repositories have role = "serving" '
                       f"({', '.join(r.name for r in serving)}); `forkops build` builds one")
    spec = playbooks[serving[0].name].build
    if spec is None:
        raise BadInput(f"{serving[0].name}: its playbook {serving[0].playbook!r} has no [build] table")
    against = with_role(spec.builds_against)
    if len(against) > 1:
        raise BadInput(f'{ws.file}: several repositories have role = "{spec.builds_against}" '
                       f"({', '.join(r.name for r in against)}); the Serving build can use only one")
    tensorflow = _fork(against[0], playbooks[against[0].name], version) if against else None
    return _fork(serving[0], playbooks[serving[0].name], version), tensorflow


def _fork(repo: RepoConfig, pb: Playbook, version: Version) -> Fork:
    branch = pb.fork_branch_name(version)
    git = Repo(repo.path)
    if not git.is_repo():
        raise BadInput(f"{repo.name}: {repo.path} is not a git clone (run `forkops init`)")
    for ref in (branch.ref, f"refs/remotes/origin/{branch}"):
        commit = git.commit_of(ref)
        if commit:
            return Fork(repo.name, repo.path, pb, str(branch), commit)
    raise BadInput(f"{repo.name}: no branch {branch} (nor origin/{branch}) in {repo.path}; "
                   f"run `forkops upgrade {version}` first")
