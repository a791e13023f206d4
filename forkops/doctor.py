"""``forkops doctor``: can this machine and this workspace do what forkops does?

Each probe yields one :class:`Check` with a verdict and, for anything not ok, the command or
edit that fixes it. Probes only read: doctor changes nothing. Key material is shown by
fingerprint only.

Exit codes (:meth:`Report.exit_code`): 3 when git or Docker is unusable (an external tool),
2 when something else fails (the keys file, the workspace), 0 otherwise (warnings included).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from forkops import git, keyfile
from forkops.docker import Docker, DockerUnavailable
from forkops.errors import ExitCode, ForkopsError

if TYPE_CHECKING:
    from forkops.workspace import Workspace

Verdict = Literal["ok", "warn", "fail", "skip"]
# Checks whose failure means an external tool is missing or broken (exit 3).
EXTERNAL = frozenset({"git", "docker client", "docker engine"})


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None  # what to run or change; None when the verdict is ok

    def as_json(self) -> dict[str, str | None]:
        return {"check": self.name, "verdict": self.verdict, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict == "fail")

    def exit_code(self) -> ExitCode:
        if any(c.name in EXTERNAL for c in self.failed):
            return ExitCode.EXTERNAL
        return ExitCode.BAD_INPUT if self.failed else ExitCode.OK

    def as_json(self) -> list[dict[str, str | None]]:
        return [c.as_json() for c in self.checks]


def run(*, keys: Path | None, workspace: Workspace | None, docker: Docker | None = None) -> Report:
    """Every probe: git, Docker (client, engine, buildx, NVIDIA runtime), the keys file and,
    inside a workspace, each clone (identity, guard hooks)."""
    checks = [*_git(), *_docker(docker or Docker()), _keys_file(keys, workspace)]
    if workspace is not None:
        for repo in workspace.repos:
            checks += _clone(repo.name, repo.path)
    return Report(tuple(checks))


def _git() -> Iterator[Check]:
    try:
        found = "git {}.{}.{}".format(*git.version())
    except ForkopsError as exc:
        yield Check("git", "fail", exc.message, "install git (e.g. `apt-get install git`) and put it on PATH")
        return
    if git.has_merge_base_option():
        yield Check("git", "ok", f"{found}; `check` predicts with merge-tree --merge-base")
    else:
        yield Check("git", "ok", f"{found}; `check` predicts with two throw-away commits "
                    "(git < 2.40 has no merge-tree --merge-base; same results)")


def _docker(docker: Docker) -> Iterator[Check]:
    try:
        client = docker.client_version()
    except DockerUnavailable as exc:
        yield Check("docker client", "fail", exc.message, "install the Docker CLI (docker-ce-cli) and put it on PATH")
        yield Check("docker engine", "fail", "no Docker engine is reachable (no docker client)",
                    "install Docker, then start it (`systemctl start docker`) or set DOCKER_HOST")
        yield Check("nvidia runtime", "skip", "needs a reachable engine")
        return
    yield Check("docker client", "ok", f"docker {client} at {docker.executable}")
    engine_ok = False
    try:
        yield Check("docker engine", "ok", f"engine {docker.engine().server} reachable")
        engine_ok = True
    except DockerUnavailable as exc:
        yield Check("docker engine", "fail", exc.message,
                    "start the engine (`systemctl start docker`) or point DOCKER_HOST at one")
    bx = docker.run("buildx", "version", timeout=20)
    yield (Check("buildx", "ok", bx.stdout.strip()) if bx.ok else
           Check("buildx", "warn", "not installed: --builder and --cache-from/--cache-to need it",
                 "install the buildx plugin (docker-buildx-plugin)"))
    if not engine_ok:
        yield Check("nvidia runtime", "skip", "needs a reachable engine")
        return
    info = docker.run("info", "--format", "{{json .Runtimes}}", timeout=20)
    try:
        runtimes = json.loads(info.stdout or "null") or {}
    except ValueError:
        runtimes = {}
    yield (Check("nvidia runtime", "ok", "nvidia runtime registered (GPU smoke tests can run)")
           if "nvidia" in runtimes else
           Check("nvidia runtime", "warn", "no nvidia runtime: GPU images cannot be smoke-tested here",
                 "install the NVIDIA Container Toolkit (nvidia-ctk runtime configure --runtime=docker)"))


def _keys_file(keys: Path | None, workspace: Workspace | None) -> Check:
    try:
        path = keyfile.resolve_path(keys, workspace.root if workspace else None)
    except ForkopsError as exc:
        return Check("keys file", "warn", exc.message, "pass --keys FILE, set $FORKOPS_KEYS, or run in a workspace")
    if not path.exists():
        return Check("keys file", "warn", f"{path} does not exist", "forkops set-key --generate")
    try:
        material = keyfile.load(path)
    except ForkopsError as exc:
        loose = path.is_file() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        fix = f"chmod 600 {shlex.quote(str(path))}" if loose else f"edit {path} (format: keys.example.toml)"
        return Check("keys file", "fail", exc.message, fix)
    return Check("keys file", "ok", f"{path}: private, {material.cipher}, key {material.key_fingerprint}")


def _clone(name: str, path: Path) -> Iterator[Check]:
    repo = git.Repo(path)
    if not repo.is_repo():
        yield Check(f"{name}: clone", "fail", f"no clone at {path}", "forkops init (clones what is missing)")
        return
    # `git var` applies git's own rules (config, GIT_* variables, user.useConfigOnly) strictly,
    # as `git commit` does: it fails exactly when the rebase could not commit.
    ident = repo.run_raw("var", "GIT_COMMITTER_IDENT")
    if ident.returncode != 0:
        why = ident.stderr.decode("utf-8", "replace").strip().splitlines()
        yield Check(f"{name}: identity", "fail",
                    f"git has no committer identity here: {why[-1] if why else 'git var failed'}",
                    'git config --global user.name "Your Name" && git config --global user.email you@example.com')
    else:
        who = ident.stdout.decode("utf-8", "replace").rsplit(">", 1)[0] + ">"
        yield Check(f"{name}: identity", "ok", f"commits as {who}")
    yield _hooks(name, path)


def _hooks(name: str, path: Path) -> Check:
    from forkops import guard  # the guard owns the hooks' names, their folder and their marker

    check = f"{name}: guard hooks"
    fix = "forkops guard install"
    present = guard.installed(path)
    missing = [hook for hook, ok in present.items() if not ok]
    if missing:
        return Check(check, "warn", f"not installed: {', '.join(missing)}", fix)
    for hook in guard.HOOKS:
        python = hook_interpreter(_installed_hook(path, hook))
        if python is None:
            return Check(check, "warn", f"{hook}: cannot tell which Python it runs", fix)
        if not os.access(python, os.X_OK):
            return Check(check, "fail", f"{hook} runs {python}, which is gone: every commit would fail", fix)
    return Check(check, "ok", f"{', '.join(guard.HOOKS)} installed")


def _installed_hook(path: Path, hook: str) -> Path:
    """Where ``guard.installed`` found ``hook``: git's hooks folder, or the private folder the
    guard uses when ``core.hooksPath`` is a tracked folder."""
    from forkops import guard

    repo = git.Repo(path)
    candidate = guard.hooks_dir(repo) / hook
    if guard.is_ours(candidate):
        return candidate
    common = Path(repo.run("rev-parse", "--git-common-dir").strip())
    return (common if common.is_absolute() else path / common) / guard.PRIVATE_HOOKS / hook


def hook_interpreter(hook: Path) -> str | None:
    """The Python an installed guard hook runs: its ``python=…`` line, or (hooks installed by
    earlier versions) the word before ``-m forkops`` on the line that runs forkops."""
    try:
        text = hook.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) == 1 and words[0].startswith("python="):
            return words[0].removeprefix("python=") or None
        for i in range(len(words) - 1):
            if words[i:i + 2] == ["-m", "forkops"]:
                before = [w for w in words[:i] if not w.startswith("-")]
                return before[-1] if before else None
    return None
