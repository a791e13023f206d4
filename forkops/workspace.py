"""``forkops.toml``: find it (walking up like git finds ``.git``), load and validate it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.errors import BadInput
from forkops.tomlcheck import Checker, load_toml

if TYPE_CHECKING:
    from forkops.playbook import Playbook

# The playbooks forkops ships (playbooks/NAME.toml); a repository named like one uses it unless
# it names another. Here, not in forkops.playbook: reading forkops.toml (every command, `forkops
# status` among them) then parses no playbook code.
BUILTIN_PLAYBOOKS = ("tensorflow", "tensorflow-dlopen", "serving")
FILENAME = "forkops.toml"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class RepoConfig:
    name: str
    path: Path  # absolute path of the fork clone
    origin: str  # the fork's remote URL (any URL git accepts, plain paths included)
    upstream: str  # upstream's URL
    playbook: str  # built-in name or path (relative to the workspace root)


@dataclass(frozen=True)
class Workspace:
    root: Path
    file: Path
    repos: tuple[RepoConfig, ...]
    warnings: tuple[str, ...] = ()

    def repo(self, name: str) -> RepoConfig:
        for repo in self.repos:
            if repo.name == name:
                return repo
        known = ", ".join(r.name for r in self.repos) or "none"
        raise BadInput(f"no repository {name!r} in {self.file} (known: {known})")

    def select(self, name: str | None) -> tuple[RepoConfig, ...]:
        return self.repos if name is None else (self.repo(name),)

    def playbook(self, repo: RepoConfig) -> Playbook:
        from forkops import playbook

        return playbook.load(repo.playbook, base_dir=self.root)


def find(start: Path | None = None) -> Path:
    """The nearest ``forkops.toml`` at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / FILENAME
        if candidate.is_file():
            return candidate
    raise BadInput(
        f"no {FILENAME} in {here} or any parent folder (run `forkops init`, or pass -C WORKSPACE)"
    )


def load(start: Path | None = None) -> Workspace:
    return load_file(find(start))


def load_file(path: Path) -> Workspace:
    label = FILENAME if path.name == FILENAME else str(path)
    data = load_toml(path, label)
    checker = Checker(label)
    top = checker.table(data, "")
    repos_table = top.sub("repos", required=True)
    repos: list[RepoConfig] = []
    root = path.parent.resolve()
    for name in list(repos_table.data):
        if not _NAME_RE.fullmatch(name):
            checker.problem(repos_table.key(name), "repository names use letters, digits, '.', '_', '-'")
        t = repos_table.sub(name)
        rel = t.str("path", name)
        origin = t.str("origin", required=True)
        upstream = t.str("upstream", required=True)
        pb = t.str("playbook", name if name in BUILTIN_PLAYBOOKS else None, required=True)
        t.finish()
        if rel and Path(rel).is_absolute() is False and ".." in Path(rel).parts:
            checker.problem(t.key("path"), "must stay inside the workspace")
        for key, url in (("origin", origin), ("upstream", upstream)):
            if url and (url.strip() != url or "\n" in url or url.startswith("-")):
                checker.problem(t.key(key), f"{url!r} is not a URL or path git accepts")
        if pb and pb not in BUILTIN_PLAYBOOKS and not (root / pb).expanduser().exists():
            checker.problem(t.key("playbook"), f"{pb!r} is neither a built-in playbook "
                            f"({', '.join(BUILTIN_PLAYBOOKS)}) nor an existing file")
        repos.append(RepoConfig(name, (root / os.path.expanduser(rel)).resolve(), origin, upstream, pb))
    if not repos and not checker.problems:
        checker.problem("repos", "no repositories configured")
    top.finish()
    checker.raise_if_any()
    return Workspace(root=root, file=path.resolve(), repos=tuple(repos), warnings=tuple(checker.warnings))


def render(repos: list[RepoConfig], root: Path) -> str:
    """forkops.toml text for ``repos`` (paths written relative to ``root``)."""
    lines = ["# forkops workspace: which forks, where, and their remotes. Commit this file;",
             "# never commit keys.toml (see keys.example.toml).", ""]
    for repo in repos:
        try:
            rel = repo.path.relative_to(root).as_posix()
        except ValueError:
            rel = str(repo.path)
        lines += [
            f"[repos.{repo.name}]",
            f"path = {_q(rel)}",
            f"origin = {_q(repo.origin)}",
            f"upstream = {_q(repo.upstream)}",
            f"playbook = {_q(repo.playbook)}",
            "",
        ]
    return "\n".join(lines)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
