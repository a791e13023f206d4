"""The only module that talks to git.

Every command runs through :meth:`Repo.run`, which strips the ``GIT_*`` variables that would
redirect git to another repository (set, for instance, when forkops runs inside a git hook),
never prompts, and raises :class:`GitError` carrying the command, its exit code and stderr.
GitPython is used for what it does better (clone with progress) and stays inside this module.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from forkops.errors import BadInput, ExternalError, GitError

# Variables that point git at a different repository, index or object store. Inherited from
# a hook or a wrapper they would make forkops act on the wrong repository.
_LOCATION_VARS = frozenset({
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_PREFIX", "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_QUARANTINE_PATH",
})


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.setdefault("GIT_EDITOR", "true")  # never open an editor under forkops
    if extra:
        env.update(extra)
    return env


@cache
def version() -> tuple[int, int, int]:
    """The installed git's version, e.g. (2, 39, 5)."""
    try:
        out = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ExternalError(f"git is not usable: {exc}") from None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise ExternalError(f"cannot parse git version from {out.strip()!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def has_merge_base_option() -> bool:
    """``git merge-tree --write-tree --merge-base`` arrived in git 2.40."""
    return version() >= (2, 40, 0)


_GIT_DIRS: dict[str, Path] = {}  # a path's git directory does not change while forkops runs


@dataclass(frozen=True)
class RefInfo:
    name: str  # full ref name
    sha: str  # the object the ref points at
    peeled: str  # the commit it peels to (same as sha for a lightweight tag or a branch)


class Repo:
    """A git repository (worktree or bare) addressed by path."""

    def __init__(self, path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.extra_env = dict(env or {})

    # -- running -------------------------------------------------------------------------
    def run(
        self,
        *args: str,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> str:
        """Run ``git -C path ARGS``; return stdout as text, raise GitError (use run_raw for bytes)."""
        proc = self.run_raw(*args, input=input, env=env)
        if check and proc.returncode != 0:
            raise GitError(args, proc.returncode, _text(proc.stderr))
        return _text(proc.stdout)

    def run_raw(
        self,
        *args: str,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        data = input.encode() if isinstance(input, str) else input
        merged = dict(self.extra_env)
        merged.update(env or {})
        try:
            return subprocess.run(
                ["git", "-C", str(self.path), *args],
                input=data,
                capture_output=True,
                env=git_env(merged),
                check=False,
            )
        except OSError as exc:
            raise ExternalError(f"cannot run git: {exc}") from None

    def ok(self, *args: str, env: Mapping[str, str] | None = None) -> bool:
        return self.run_raw(*args, env=env).returncode == 0

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.run(*args).splitlines() if line]

    # -- facts ---------------------------------------------------------------------------
    @property
    def git_dir(self) -> Path:
        """The repository's git directory; asked of git once per path and process."""
        key = str(self.path.resolve())
        if key not in _GIT_DIRS:
            _GIT_DIRS[key] = Path(self.run("rev-parse", "--absolute-git-dir").strip())
        return _GIT_DIRS[key]

    def is_repo(self) -> bool:
        return self.path.is_dir() and self.ok("rev-parse", "--git-dir")

    def rev_parse(self, rev: str) -> str | None:
        """The full sha ``rev`` names, or None. Use ``refs/tags/X`` forms to avoid ambiguity."""
        proc = self.run_raw("rev-parse", "--verify", "--quiet", "--end-of-options", rev)
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def commit_of(self, rev: str) -> str | None:
        return self.rev_parse(f"{rev}^{{commit}}")

    def current_branch(self) -> str | None:
        proc = self.run_raw("symbolic-ref", "--quiet", "--short", "HEAD")
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def head(self) -> str | None:
        return self.rev_parse("HEAD")

    def refs(self, *patterns: str) -> list[RefInfo]:
        fmt = "%(refname)%00%(objectname)%00%(*objectname)"
        out = self.run("for-each-ref", f"--format={fmt}", *patterns)
        result = []
        for line in out.splitlines():
            name, sha, peeled = line.split("\0")
            result.append(RefInfo(name, sha, peeled or sha))
        return result

    def status_porcelain(self) -> list[str]:
        return self.run("status", "--porcelain=v1", "--untracked-files=no").splitlines()

    def operation_in_progress(self) -> str | None:
        """'rebase', 'merge', 'cherry-pick', 'revert', 'am' or None (read from git's own files)."""
        gd = self.git_dir
        if (gd / "rebase-merge").is_dir():
            return "rebase"
        if (gd / "rebase-apply").is_dir():
            return "am" if (gd / "rebase-apply" / "applying").exists() else "rebase"
        for name, op in (("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick"), ("REVERT_HEAD", "revert")):
            if (gd / name).exists():
                return op
        return None

    def unmerged_paths(self) -> list[str]:
        out = self.run("diff", "--name-only", "--diff-filter=U", "-z")
        return sorted({p for p in out.split("\0") if p})

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.ok("merge-base", "--is-ancestor", ancestor, descendant)

    def remote_url(self, name: str) -> str | None:
        proc = self.run_raw("remote", "get-url", name)
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def set_remote(self, name: str, url: str) -> None:
        """Add the remote, or update its URL; configured to fetch no tags implicitly."""
        if self.remote_url(name) is None:
            self.run("remote", "add", "--no-tags", name, url)
        elif self.remote_url(name) != url:
            self.run("remote", "set-url", name, url)
        self.run("config", f"remote.{name}.tagOpt", "--no-tags")

    def fetch(self, remote: str, refspecs: Sequence[str]) -> None:
        """Fetch exactly ``refspecs`` (no implicit tags)."""
        try:
            self.run("fetch", "--no-tags", "--quiet", remote, *refspecs)
        except GitError as exc:
            if "couldn't find remote ref" in exc.stderr:
                raise BadInput(f"{remote} has no {', '.join(refspecs)}") from None
            raise

    def ls_remote_tags(self, remote: str) -> dict[str, str]:
        """Upstream tag names -> the commit each peels to (lightweight and annotated)."""
        out = self.run("ls-remote", "--tags", remote)
        tags: dict[str, str] = {}
        for line in out.splitlines():
            sha, ref = line.split("\t", 1)
            name = ref.removeprefix("refs/tags/")
            if name.endswith("^{}"):
                tags[name[:-3]] = sha  # the peeled commit of an annotated tag wins
            else:
                tags.setdefault(name, sha)
        return tags

    def grep_files(
        self, treeish: str, pattern: str, paths: Iterable[str] = (), *, fixed: bool = False
    ) -> list[str]:
        """Paths in ``treeish`` whose content matches ``pattern`` (extended regex or fixed string)."""
        mode = "-F" if fixed else "-E"
        proc = self.run_raw("grep", "-l", mode, "-e", pattern, treeish, "--", *paths)
        if proc.returncode not in (0, 1):
            raise GitError(["grep", "-l", pattern, treeish], proc.returncode, _text(proc.stderr))
        prefix = f"{treeish}:"
        return sorted(line.removeprefix(prefix) for line in _text(proc.stdout).splitlines() if line)

    def show_file(self, treeish: str, path: str) -> bytes | None:
        proc = self.run_raw("cat-file", "blob", f"{treeish}:{path}")
        return proc.stdout if proc.returncode == 0 else None

    def read_blobs(self, names: Sequence[str]) -> list[bytes | None]:
        """The contents of many blobs (``sha`` or ``treeish:path``) from one ``git cat-file
        --batch``, in order; None where a name is missing or is not a blob."""
        if not names:
            return []
        proc = self.run_raw("cat-file", "--batch", input="".join(f"{n}\n" for n in names))
        if proc.returncode != 0:
            raise GitError(["cat-file", "--batch"], proc.returncode, _text(proc.stderr))
        out, pos, result = proc.stdout, 0, []
        for _ in names:
            eol = out.index(b"\n", pos)
            header = out[pos:eol].split()
            pos = eol + 1
            if len(header) == 3:  # "<sha> <type> <size>", then the content and a newline
                size = int(header[2])
                result.append(out[pos:pos + size] if header[1] == b"blob" else None)
                pos += size + 1
            else:  # "<name> missing" / "ambiguous"
                result.append(None)
        return result


# Index stages of an unmerged path during a rebase: 1 the merge base, 2 HEAD (the new upstream
# side, with the patches applied so far), 3 the fork's commit being replayed.
_KIND_BY_STAGES = {
    frozenset({1, 2, 3}): "content",
    frozenset({2, 3}): "add/add",
    frozenset({1, 2}): "modify/delete",  # upstream modified it, the fork's commit deletes it
    frozenset({1, 3}): "delete/modify",  # upstream deleted it, the fork's commit modifies it
}


def conflict_kind(stages: Iterable[int]) -> str:
    """The kind of conflict an unmerged path has, from the index stages present. A path with a
    single non-base stage only arises from rename conflicts (rename/rename, rename/delete)."""
    return _KIND_BY_STAGES.get(frozenset(stages), "rename")


def clone(url: str, path: Path, *, progress: Callable[[str, float | None], None] | None = None) -> Repo:
    """Clone ``url`` into ``path`` with GitPython, reporting (stage, fraction) to ``progress``."""
    import git as gitpython  # lazy: importing GitPython costs ~0.1 s

    class _Progress(gitpython.RemoteProgress):
        def update(
            self, op_code: int, cur_count: str | float, max_count: str | float | None = None, message: str = ""
        ) -> None:
            if progress is None or not isinstance(cur_count, int | float):
                return
            stage = {
                self.COUNTING: "counting objects", self.COMPRESSING: "compressing objects",
                self.RECEIVING: "receiving objects", self.RESOLVING: "resolving deltas",
                self.CHECKING_OUT: "checking out files",
            }.get(op_code & self.OP_MASK, "cloning")
            total = max_count if isinstance(max_count, int | float) and max_count else None
            progress(stage, float(cur_count) / total if total else None)

    path.parent.mkdir(parents=True, exist_ok=True)
    listener = _Progress()
    try:
        gitpython.Repo.clone_from(url, str(path), progress=listener, env=git_env())  # type: ignore[arg-type]
    except gitpython.GitCommandError as exc:
        status = exc.status if isinstance(exc.status, int) else 1
        # With a progress listener GitPython hands git's stderr to it, not to the exception.
        stderr = str(exc.stderr or "").strip() or "\n".join(listener.error_lines + listener.other_lines)
        raise GitError(["clone", url, str(path)], status, stderr) from None
    return Repo(path)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
