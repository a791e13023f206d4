"""``forkops init``: make a workspace — clone the forks, pick their playbooks, write ``forkops.toml``.

Invariants: ``forkops.toml`` is written last, only when every clone succeeded; a failed or
interrupted clone removes every clone (and the workspace folder) this run made, so ``init`` can
simply be retried. A clone that is already there is kept and used. The TensorFlow fork's
playbook is chosen from its ``ReadBinaryProto`` (:func:`detect_tensorflow_playbook`), and the
reason is part of the result.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from forkops import keyfile, workspace
from forkops.errors import BadInput
from forkops.fsutil import ensure_ignored, write_atomic
from forkops.git import Progress, Repo, clone
from forkops.playbook import Role

REPOS: tuple[Role, ...] = ("tensorflow", "serving")
DEFAULT_UPSTREAMS: Mapping[Role, str] = {
    "tensorflow": "https://github.com/tensorflow/tensorflow",
    "serving": "https://github.com/tensorflow/serving",
}
# The built-in playbooks for a TensorFlow fork, the more specific first.
TENSORFLOW_PLAYBOOKS = ("tensorflow-dlopen", "tensorflow")
CloneProgress = Callable[[str, str, float | None], None]  # (repo, stage, fraction)


@dataclass(frozen=True)
class Detection:
    """Which playbook a fork got, and why (what its ``ReadBinaryProto`` does)."""

    repo: str
    playbook: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"repo": self.repo, "playbook": self.playbook, "reason": self.reason}


@dataclass(frozen=True)
class InitResult:
    file: Path
    repos: tuple[workspace.RepoConfig, ...]
    cloned: tuple[str, ...]  # repositories cloned by this run
    detections: tuple[Detection, ...]

    def as_json(self) -> dict[str, object]:
        return {"file": str(self.file), "repos": [r.name for r in self.repos], "cloned": list(self.cloned),
                "detections": [d.as_json() for d in self.detections]}


def plan(root: Path, origins: Mapping[Role, str], upstreams: Mapping[Role, str]) -> list[workspace.RepoConfig]:
    """The repositories of a new workspace, for the forks in ``origins`` (in the order of REPOS)."""
    return [workspace.RepoConfig(name, root / name, origins[name], upstreams.get(name, DEFAULT_UPSTREAMS[name]), name)
            for name in REPOS if name in origins]


def create(root: Path, repos: Sequence[workspace.RepoConfig], *, clone: bool,
           progress: CloneProgress | None = None) -> InitResult:
    """Clone ``repos`` (unless ``clone`` is false), pick the TensorFlow playbook, write
    ``forkops.toml`` and add ``keys.toml`` to ``.gitignore``. BadInput when forkops.toml exists or
    a URL is not one git accepts (nothing made); a failed clone removes what this run made."""
    root = root.resolve()
    target = root / workspace.FILENAME
    if target.exists():
        raise BadInput(f"{target} already exists; edit it, or remove it to start over")
    if not repos:
        raise BadInput("no repository to put in the workspace")
    made_root = not root.exists()
    cloned: list[workspace.RepoConfig] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        _check(root, repos)
        if clone:
            for rc in repos:
                if not Repo(rc.path).is_repo() and not _in_the_way(rc.path):
                    cloned.append(rc)  # (a folder in the way is the person's: ensure_clone refuses it)
                _clone(rc, progress)
        detections = [_detect(rc, cloned=clone) for rc in repos if rc.playbook == "tensorflow"]
        final = [next((replace(rc, playbook=d.playbook) for d in detections if d.repo == rc.name), rc) for rc in repos]
        text = workspace.render(list(final), root)
        ensure_ignored(root, keyfile.FILENAME)
        write_atomic(target, text)  # last: its presence means the workspace is complete
    except BaseException:
        for rc in cloned:
            shutil.rmtree(rc.path, ignore_errors=True)
        if made_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return InitResult(target, tuple(final), tuple(rc.name for rc in cloned), tuple(detections))


def _check(root: Path, repos: Sequence[workspace.RepoConfig]) -> None:
    """Validate the text to be written by loading it (a URL with spaces is refused) from a
    scratch file, removed again, before anything is cloned."""
    check = root / f".{workspace.FILENAME}.check"
    try:
        write_atomic(check, workspace.render(list(repos), root))
        workspace.load_file(check)
    finally:
        check.unlink(missing_ok=True)


def ensure_clone(rc: workspace.RepoConfig, progress: Progress | None = None) -> Repo:
    """The fork clone at ``rc.path``, cloned from ``rc.origin`` when missing (the one
    clone-if-missing: ``init``, ``upgrade`` and ``check`` use it). BadInput, nothing cloned, when
    the folder exists, is not empty and is not a git repository."""
    repo = Repo(rc.path)
    if repo.is_repo():
        return repo
    if _in_the_way(rc.path):
        raise BadInput(f"{rc.path} exists and is not a git repository")
    return clone(rc.origin, rc.path, progress=progress)


def _in_the_way(path: Path) -> bool:
    """A non-empty folder (or a file) where a clone should go."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _clone(rc: workspace.RepoConfig, progress: CloneProgress | None) -> None:
    def report(stage: str, fraction: float | None) -> None:
        if progress is not None:
            progress(rc.name, stage, fraction)

    ensure_clone(rc, report)


def _detect(rc: workspace.RepoConfig, *, cloned: bool) -> Detection:
    if not cloned:
        return Detection(rc.name, "tensorflow", "not cloned (--no-clone), so not detected: the key-site playbook "
                         'is assumed; use playbook = "tensorflow-dlopen" if ReadBinaryProto dlopen()s a library')
    return detect_tensorflow_playbook(rc.name, Repo(rc.path))


def detect_tensorflow_playbook(name: str, repo: Repo) -> Detection:
    """The built-in playbook whose anchor the fork's ``ReadBinaryProto`` satisfies, looked at on
    the newest fork branch (``bX.Y.Z``, local or on origin), else HEAD: ``tensorflow-dlopen`` when it
    calls ``CBCMode_Decrypt`` (the dlopen shape), ``tensorflow`` when it decrypts in place, and
    ``tensorflow`` (said so) when it does not decrypt at all."""
    from forkops import anchors, playbook, predict

    books = [playbook.load(n) for n in TENSORFLOW_PLAYBOOKS]
    try:
        treeish = predict.newest_fork_branch(repo, books[-1])[0]
    except BadInput:
        treeish = "HEAD"
    found: dict[str, str] = {}
    for anchor in books[-1].anchors:
        found.update(anchors.definitions(repo, treeish, anchor))
    if not found:
        return Detection(name, "tensorflow", f"no ReadBinaryProto definition on {treeish}; the key-site playbook "
                         "is assumed")
    where = ", ".join(sorted(found))
    for book in books:
        for anchor in book.anchors:
            hits = sorted(p for p, body in found.items() if re.search(anchor.must_contain, body, re.MULTILINE))
            if hits:
                why = ("calls CBCMode_Decrypt of a dlopen()ed library: the key goes into that library at build "
                       "time, not into the fork" if book.library is not None else
                       "decrypts in place: the key goes into the fork's key sites")
                return Detection(name, book.name, f"ReadBinaryProto in {hits[0]} on {treeish} {why}")
    return Detection(name, "tensorflow", f"ReadBinaryProto in {where} on {treeish} does not decrypt yet; the key-site "
                     'playbook is assumed (use playbook = "tensorflow-dlopen" for a dlopen()ed library)')
