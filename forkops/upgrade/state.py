"""What a run records, and where: the run file and one state file per repository.

``<workspace>/.forkops/run.json`` holds the run as a whole (version, order of repositories,
options); ``<git dir>/forkops/upgrade.json`` holds one repository's part: the refs the run may
move with their values before it (None: the ref did not exist), the config file before the run
changed it, the stops a person resolved and the commits they skipped. git's own files say where
a rebase stands; these files only say what forkops did and must undo.

Every file carries ``format``: a state file written by another forkops version is refused with
exit 2 (its meaning may differ) instead of being misread. Every write is atomic.

Reading imports nothing but this module (``forkops status`` reads here on every call); what
only writing needs is imported by the writers.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkops.errors import BadInput

if TYPE_CHECKING:
    from forkops.git import Repo
    from forkops.version import Version
    from forkops.workspace import Workspace

FORMAT = 2
RUN_FILE = "run.json"
STATE_FILE = "upgrade.json"
BACKUP_PREFIX = "refs/forkops/backup"


class Phase(enum.StrEnum):
    """One repository's place in the flow; each step is idempotent (a kill at any point is
    completed by ``--continue`` or undone by ``--abort``)."""

    PREPARED = "prepared"  # state recorded (refs before, config before), nothing moved
    REBASING = "rebasing"  # tfX.Y.Z and the target branch exist; git rebase running or stopped
    VERIFY = "verify"  # the rebase ended: every stack commit must be accounted for
    ANCHORS = "anchors"  # anchors checked, a moved patch re-applied
    PIN = "pin"  # pin rules moved to the new branch
    KEYS = "keys"  # the run's commits scanned for the key; the key re-applied to the worktree
    FINISHED = "finished"  # this repository is ready
    DONE = "done"  # the whole run finished (and was pushed when asked)
    ABORTING = "aborting"  # --abort is restoring (a kill there is completed by --abort again)


class FailureKind(enum.StrEnum):
    ANCHOR = "anchor"  # a patch anchor does not hold
    PIN = "pin"  # a pin rule cannot be applied
    MISSING = "missing"  # a stack commit left without an accepted reason
    KEY = "key"  # a commit the run created holds the key
    GATE = "gate"  # conflict markers or whitespace errors in content forkops would commit


@dataclass
class MissingCommit:
    """A commit named in a failure: its sha and subject."""

    sha: str
    subject: str


@dataclass
class Failure:
    """Why a repository stopped after its rebase; ``message`` is the one line to show."""

    kind: FailureKind
    message: str
    path: str | None = None
    anchor: str | None = None
    pin: str | None = None
    defined_in: list[str] = field(default_factory=list)
    patched_in: list[str] = field(default_factory=list)
    change: str = ""
    missing: list[MissingCommit] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # file:line problems, key sites named
    # A failed anchor: the fork commits whose change to the anchored code is missing.
    fork_commits: list[MissingCommit] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        data = dict(data)
        data["kind"] = FailureKind(data["kind"])
        data["missing"] = [MissingCommit(**m) for m in data.get("missing", [])]
        data["fork_commits"] = [MissingCommit(**m) for m in data.get("fork_commits", [])]
        return cls(**data)


@dataclass
class Stop:
    """A stop git made and forkops saw: the commit, its unmerged paths, and those git's rerere
    already resolved from a recorded resolution (to review, not to trust blindly)."""

    commit: str
    paths: list[str]
    recorded: list[str] = field(default_factory=list)
    resolved: bool = False  # the person ran --continue here (their resolution is the commit)


@dataclass
class RunState:
    """The run over one or more repositories; ``repos`` in the order they are upgraded."""

    id: str
    version: str
    repos: list[str]
    start: str | None = None
    base: str | None = None
    branch: str | None = None  # --branch NAME instead of bX.Y.Z
    push: bool = False
    force: bool = False
    force_with_lease: bool = False
    accept_recorded: bool = False  # continue past stops recorded resolutions fully resolve
    phase: str = "running"  # running | done
    format: int = FORMAT


@dataclass
class RepoState:
    """One repository's part of a run. ``refs`` maps every ref the run may move (full names) to
    its value before the run (None: it did not exist); ``--abort`` restores exactly these."""

    run: str
    repo: str
    version: str
    phase: Phase
    branch: str  # short name of the target branch (bX.Y.Z or --branch NAME)
    onto: str  # short name of the upstream snapshot branch (tfX.Y.Z)
    tag: str
    onto_sha: str
    base: str
    base_sha: str
    start: str
    start_sha: str
    head_ref: str | None  # the full ref HEAD was on, None when detached
    head_sha: str
    refs: dict[str, str | None]
    picked: list[str]
    new_tags: dict[str, str] = field(default_factory=dict)  # tags the run creates (ref -> object)
    remote: str = "tf"
    remote_url: str = ""
    config_before: str | None = None  # base64 of the config file before the run changed it
    config_after: str | None = None  # ... and right after: --abort restores bytes when unchanged since
    stops: list[Stop] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # subjects of commits upstream already has
    emptied: list[str] = field(default_factory=list)  # subjects emptied by the person's resolution
    reapplied: list[dict[str, str]] = field(default_factory=list)
    pinned: list[dict[str, str]] = field(default_factory=list)
    failure: Failure | None = None
    pins_skipped: list[str] = field(default_factory=list)
    pushed: bool = False
    notes: list[str] = field(default_factory=list)
    format: int = FORMAT

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    @property
    def onto_ref(self) -> str:
        return f"refs/heads/{self.onto}"

    @property
    def tag_ref(self) -> str:
        return f"refs/tags/{self.tag}"

    @property
    def parsed_version(self) -> Version:
        from forkops.version import Version

        return Version.parse(self.version)

    def stop_for(self, commit: str) -> Stop | None:
        return next((s for s in self.stops if s.commit == commit), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoState:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["phase"] = Phase(data["phase"])
        data["stops"] = [Stop(**s) for s in data.get("stops", [])]
        if data.get("failure") is not None:
            data["failure"] = Failure.from_json(data["failure"])
        return cls(**data)


def _check_format(path: Path, data: dict[str, Any]) -> None:
    if data.get("format") != FORMAT:
        raise BadInput(f"{path} was written by another forkops version (state format "
                       f"{data.get('format', 1)}, this one reads {FORMAT}); finish or abort that "
                       f"upgrade with the forkops that started it")


def run_path(ws: Workspace) -> Path:
    return ws.root / ".forkops" / RUN_FILE


def state_path(repo: Repo) -> Path:
    return repo.git_dir / "forkops" / STATE_FILE


def load_run(ws: Workspace) -> RunState | None:
    path = run_path(ws)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    _check_format(path, data)
    return RunState(**data)


def save_run(ws: Workspace, run: RunState) -> None:
    from forkops.fsutil import write_atomic
    from forkops.lock import run_dir

    run_dir(ws)
    write_atomic(run_path(ws), json.dumps(asdict(run), indent=2) + "\n")


def active_run(ws: Workspace) -> RunState | None:
    run = load_run(ws)
    return run if run is not None and run.phase != "done" else None


def load_state(repo: Repo) -> RepoState | None:
    if not repo.path.is_dir() or not ((repo.path / ".git").exists() or repo.is_repo()):
        return None
    path = state_path(repo)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    _check_format(path, data)
    return RepoState.from_json(data)


def save_state(repo: Repo, st: RepoState) -> None:
    from forkops.fsutil import write_atomic

    write_atomic(state_path(repo), json.dumps(asdict(st), indent=2) + "\n")


def backup_ref(run_id: str, ref: str) -> str:
    return f"{BACKUP_PREFIX}/{run_id}/{ref.removeprefix('refs/')}"


def encode_bytes(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def decode_bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
