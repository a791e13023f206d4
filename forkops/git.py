"""The only module that talks to git.

Every command runs through :meth:`Repo.run`, which strips the ``GIT_*`` variables that would
redirect git to another repository (set, for instance, when forkops runs inside a git hook),
never prompts, and raises :class:`GitError` carrying the command, its exit code and stderr.
GitPython is used for what it does better (progress of clone and fetch) and stays inside this
module. ``FORKOPS_DEBUG=1`` traces every git command forkops runs (argv, folder, exit code,
milliseconds) on stderr; forkops never puts key material on a git command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from forkops.errors import BadInput, ExternalError, GitError
from forkops.gitenv import git_env as git_env  # re-exported: callers build git's environment with it
from forkops.gitenv import trace as _trace

Progress = Callable[[str, float | None], None]


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


def _dot_git(top: Path) -> Path | None:
    """``top/.git`` when it is a git directory, as git itself would find it first from ``top``
    (HEAD, objects and refs present); None for a ``.git`` file, a bare repository or no repository."""
    dot = top / ".git"
    if (dot / "HEAD").is_file() and (dot / "objects").is_dir() and (dot / "refs").is_dir():
        return dot.resolve()
    return None


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
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                ["git", "-C", str(self.path), *args],
                input=data,
                capture_output=True,
                env=git_env(merged),
                check=False,
            )
        except OSError as exc:
            raise ExternalError(f"cannot run git: {exc}") from None
        _trace(args, self.path, proc.returncode, started)
        return proc

    def ask(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """:meth:`run_raw` for a question whose failing exit is itself an answer (no, none): a
        git killed by a signal (an OOM kill, a group kill) answered nothing, and must not pass
        for "no" (GitError)."""
        proc = self.run_raw(*args, env=env)
        if proc.returncode < 0:
            raise GitError(list(args), proc.returncode, _text(proc.stderr))
        return proc

    def ok(self, *args: str, env: Mapping[str, str] | None = None) -> bool:
        return self.ask(*args, env=env).returncode == 0

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.run(*args).splitlines() if line]

    # -- facts ---------------------------------------------------------------------------
    @property
    def git_dir(self) -> Path:
        """The repository's git directory, found once per path and process: ``path/.git`` when
        that is a repository (a clone's worktree; no process), else asked of git."""
        key = str(self.path.resolve())
        if key not in _GIT_DIRS:
            _GIT_DIRS[key] = _dot_git(Path(key)) or Path(self.run("rev-parse", "--absolute-git-dir").strip())
        return _GIT_DIRS[key]

    def is_repo(self) -> bool:
        """True when ``path`` is inside a git repository (asks git once per path and process:
        the answer fills the git directory cache)."""
        if not self.path.is_dir():
            return False
        key = str(self.path.resolve())
        if key in _GIT_DIRS:
            return True
        if (found := _dot_git(Path(key))) is not None:
            _GIT_DIRS[key] = found
            return True
        proc = self.ask("rev-parse", "--absolute-git-dir")
        if proc.returncode != 0:
            return False
        _GIT_DIRS[key] = Path(_text(proc.stdout).strip())
        return True

    def rev_parse(self, rev: str) -> str | None:
        """The full sha ``rev`` names, or None. Use ``refs/tags/X`` forms to avoid ambiguity."""
        proc = self.ask("rev-parse", "--verify", "--quiet", "--end-of-options", rev)
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def loose_ref(self, ref: str) -> str | None:
        """The object the full ref name ``ref`` points at when git keeps it as a loose file in
        this git directory (read without a process; git replaces such a file atomically),
        else None: packed, missing, symbolic or another ref storage: ask git."""
        try:
            text = (self.git_dir / ref).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if _FULL_SHA.fullmatch(text) else None

    def tip_containing(self, ref: str, commit: str) -> tuple[str | None, bool]:
        """(the object ``ref`` points at, None when it does not exist; whether its history
        contains ``commit``): one process when it does, two when not."""
        out = self.run("for-each-ref", f"--contains={commit}", "--format=%(refname) %(objectname)", ref)
        for line in out.splitlines():
            name, sha = line.split(" ")
            if name == ref:  # the pattern also matches refs under ref/ as a folder
                return sha, True
        return self.rev_parse(ref), False

    def commit_of(self, rev: str) -> str | None:
        return self.rev_parse(f"{rev}^{{commit}}")

    def full_sha(self, rev: str) -> str | None:
        """``rev`` when it already is a full object name (git's own files hold those), else the
        commit it names."""
        return rev if _FULL_SHA.fullmatch(rev) else self.commit_of(rev)

    def head(self) -> str | None:
        return self.rev_parse("HEAD")

    def head_info(self) -> tuple[str | None, str | None]:
        """(HEAD's commit, None without commits; the full ref HEAD is on, None when detached),
        from one process. Full names: a tag sharing the branch's name changes nothing."""
        proc = self.run_raw("rev-parse", "HEAD", "--symbolic-full-name", "HEAD")
        if proc.returncode != 0:
            return None, None
        sha, ref = _text(proc.stdout).split()
        return sha, ref if ref.startswith("refs/") else None

    def refs(self, *patterns: str) -> list[RefInfo]:
        fmt = "%(refname)%00%(objectname)%00%(*objectname)"
        out = self.run("for-each-ref", f"--format={fmt}", *patterns)
        result = []
        for line in out.splitlines():
            name, sha, peeled = line.split("\0")
            result.append(RefInfo(name, sha, peeled or sha))
        return result

    def worktree_changes(self, *, untracked: bool = False) -> tuple[list[str], list[str]]:
        """(paths with uncommitted changes, both names of a rename; untracked files that are not
        ignored, listed only when ``untracked``) from one ``git status``. No optional locks:
        status would otherwise refresh the index under index.lock, which a kill leaves behind."""
        out = self.run("--no-optional-locks", "status", "--porcelain=v1", "-z",
                       f"--untracked-files={'all' if untracked else 'no'}")
        changed: list[str] = []
        new: list[str] = []
        entries = iter(out.split("\0"))
        for entry in entries:
            if not entry:
                continue
            xy, path = entry[:2], entry[3:]
            if xy == "??":
                new.append(path)
                continue
            changed.append(path)
            if "R" in xy or "C" in xy:
                changed.append(next(entries, ""))  # the path it was renamed or copied from
        return [p for p in changed if p], new

    def operation_in_progress(self) -> str | None:
        """'rebase', 'merge', 'cherry-pick', 'revert', 'am', 'bisect' or None (git's own files)."""
        gd = self.git_dir
        if (gd / "BISECT_START").exists():
            return "bisect"
        if (gd / "rebase-merge").is_dir():
            return "rebase"
        if (gd / "rebase-apply").is_dir():
            return "am" if (gd / "rebase-apply" / "applying").exists() else "rebase"
        for name, op in (("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick"), ("REVERT_HEAD", "revert")):
            if (gd / name).exists():
                return op
        if (gd / "sequencer").is_dir():
            return "cherry-pick"
        return None

    def unmerged_paths(self) -> list[str]:
        out = self.run("diff", "--name-only", "--diff-filter=U", "-z")
        return sorted({p for p in out.split("\0") if p})

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.ok("merge-base", "--is-ancestor", ancestor, descendant)

    def remote_url(self, name: str) -> str | None:
        proc = self.ask("remote", "get-url", name)
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def set_remote(self, name: str, url: str) -> bool:
        """Add the remote, or update its URL; configured to fetch no tags implicitly. False when
        it already was exactly that (nothing written)."""
        # Adding is what a fresh clone needs: one process; git refuses (exit 3) an existing name.
        added = self.run_raw("remote", "add", "--no-tags", name, url)  # sets tagOpt itself
        if added.returncode == 0:
            return True
        current = self.remote_url(name)
        if current is None:
            raise GitError(["remote", "add", "--no-tags", name, url], added.returncode, _text(added.stderr))
        if current == url and self.run_raw("config", f"remote.{name}.tagOpt").stdout.strip() == b"--no-tags":
            return False
        if current != url:
            self.run("remote", "set-url", name, url)
        self.run("config", f"remote.{name}.tagOpt", "--no-tags")
        return True

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
        proc = self.ask("cat-file", "blob", f"{treeish}:{path}")
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

    def changed_paths(self, shas: Sequence[str]) -> dict[str, list[str]]:
        """commit -> the paths it changes against its first parent (one process)."""
        if not shas:
            return {}
        out = self.run("diff-tree", "--stdin", "-r", "--name-only", "--no-renames", "-z",
                       input="".join(f"{s}\n" for s in shas))
        result: dict[str, list[str]] = {s: [] for s in shas}
        current = ""
        for tok in out.split("\0"):
            if tok in result:
                current = tok
            elif tok and current:
                result[current].append(tok)
        return result

    def rev_list(self, *args: str) -> list[str]:
        return self.lines("rev-list", *args)

    def index_matches_head(self) -> bool:
        """True when nothing is staged (the index equals HEAD's tree)."""
        return self.ok("diff", "--cached", "--quiet", "HEAD", "--")

    def commit_file_change(self, parent: str, path: str, data: bytes, message: str, *, executable: bool = False) -> str:
        """A commit on ``parent`` that sets ``path`` to ``data``, made without touching the index
        or the worktree (a temporary index); returns it. Nothing refers to it yet."""
        import tempfile

        blob = self.write_blob(data)
        fd, index = tempfile.mkstemp(prefix="forkops-index-")
        os.close(fd)
        os.unlink(index)  # git wants to create it
        env = {"GIT_INDEX_FILE": index}
        try:
            self.run("read-tree", parent, env=env)
            self.run("update-index", "--add", "--cacheinfo", f"{'100755' if executable else '100644'},{blob},{path}",
                     env=env)
            tree = self.run("write-tree", env=env).strip()
        finally:
            for leftover in (index, index + ".lock"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        return self.run("commit-tree", tree, "-p", parent, input=message).strip()

    def move_checked_out(self, ref: str, old: str, new: str) -> None:
        """Move the checked-out branch ``ref`` from ``old`` to ``new`` (compare-and-swap), then
        bring index and worktree along (``read-tree -m -u``: a two-way merge that keeps local
        changes and refuses to overwrite them). Run again after a kill, it finishes the job."""
        if self.rev_parse(ref) != new:
            self.run("update-ref", ref, new, old)
        self.run_raw("update-index", "-q", "--refresh")  # read-tree trusts the index's stat data
        proc = self.run_raw("read-tree", "-m", "-u", old, new)
        if proc.returncode == 0:
            return
        # A read-tree killed after writing new's files, before its index: they are "not
        # uptodate" for every later read-tree. Files holding old's or new's content are git's
        # own writes: check out new's there; anything else is a local change, refused.
        paths = [p for p in self.run("diff-tree", "-r", "--name-only", "-z", old, new).split("\0") if p]
        if not paths or self.foreign_paths(paths, (old, new)):
            raise GitError(["read-tree", "-m", "-u", old, new], proc.returncode, _text(proc.stderr))
        self.run("--literal-pathspecs", "restore", f"--source={new}", "--staged", "--worktree", "--", *paths)

    def foreign_paths(self, paths: Sequence[str], revs: Sequence[str]) -> list[str]:
        """Those of ``paths`` whose worktree entry (absence included) is none of ``revs``'
        versions: a person's edits, not what a checkout between them wrote before git died."""
        blobs = self.read_blobs([f"{rev}:{p}" for rev in revs for p in paths])
        foreign = []
        for i, p in enumerate(paths):
            full = self.path / p
            now = (os.fsencode(os.readlink(full)) if full.is_symlink()
                   else full.read_bytes() if full.is_file() else None)
            if now not in blobs[i::len(paths)]:
                foreign.append(p)
        return foreign

    def config_bytes(self) -> bytes | None:
        """The repository's own config file, byte for byte (None: there is none)."""
        try:
            return self.config_path().read_bytes()
        except FileNotFoundError:
            return None

    def restore_config(self, before: bytes | None, after: bytes | None, keys_of: Sequence[str]) -> None:
        """Undo forkops' config changes. When the file is still what forkops left, its bytes
        from before come back exactly; otherwise (the person changed config since) only the
        values under the sections ``keys_of`` (e.g. "remote.tf") are put back."""
        from forkops.fsutil import write_atomic

        now = self.config_bytes()
        if before is None or now == before:
            return
        if after is not None and now == after and all(
                _without_section(before, s) == _without_section(after, s) for s in keys_of):
            # Still what forkops left, and forkops' sections are the only difference (not so when
            # the config was rewritten elsewhere since, e.g. a workspace moved mid-run).
            write_atomic(self.config_path(), before)
            return
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="forkops-config-") as fh:
            fh.write(before)
            fh.flush()
            for section in keys_of:
                # A section that is not there is fine (an earlier, killed --abort removed it);
                # any other failure (a killed git, a lock) must not pass for a restored config.
                gone = self.run_raw("config", "--local", "--remove-section", section)
                if gone.returncode != 0 and b"no such section" not in gone.stderr:
                    raise GitError(["config", "--local", "--remove-section", section], gone.returncode,
                                   _text(gone.stderr))
                args = ["config", "-f", fh.name, "-z", "--get-regexp", "^" + re.escape(section) + r"\."]
                old = self.run_raw(*args)
                if old.returncode not in (0, 1):  # 1: the section was not there before the run
                    raise GitError(args, old.returncode, _text(old.stderr))
                for item in _text(old.stdout).split("\0"):
                    if item:
                        key, _, value = item.partition("\n")
                        self.run("config", "--local", "--add", key, value)

    def reset_hard(self) -> None:
        self.run("reset", "--quiet", "--hard")

    def detach(self, commit: str | None = None) -> None:
        self.run("checkout", "--quiet", "--detach", *([commit] if commit else []))

    def set_head(self, ref: str | None, commit: str) -> None:
        """Point HEAD at ``ref`` (a full branch ref), or detach it at ``commit``; no checkout."""
        if ref is not None:
            self.run("symbolic-ref", "HEAD", ref)
        else:
            self.run("update-ref", "--no-deref", "HEAD", commit)

    def push(self, remote: str, refspec: str, *, force_with_lease: bool) -> subprocess.CompletedProcess[bytes]:
        args = ["push", "--porcelain", "--set-upstream", *(["--force-with-lease"] if force_with_lease else []),
                remote, refspec]
        return self.run_raw(*args)

    def range_diff(self, old: str, new: str) -> list[RangeDiffLine]:
        """``git range-diff OLD NEW`` (two ranges), one line per commit pair, without the diffs."""
        out = self.run("range-diff", "--no-color", "--no-patch", old, new)
        rows = []
        for line in out.splitlines():
            m = _RANGE_DIFF.match(line)
            if m:
                rows.append(RangeDiffLine(m.group(2), m.group(3), m.group(4), m.group(5)))
        return rows

    def rebase(self, config: Sequence[str], *args: str) -> subprocess.CompletedProcess[bytes]:
        """``git -c ... rebase ARGS`` (never an editor); the caller reads git's state after it."""
        return self.run_raw(*config, "rebase", *args, env={"GIT_EDITOR": "true"})

    def forget_rerere_stop(self) -> None:
        """Drop rerere's record of the conflict the rebase stopped on (``MERGE_RR``), as ``git
        rerere clear`` would for a skipped commit, without reading it: a kill can leave it
        unreadable, and then every ``rebase --skip`` dies on it ("corrupt MERGE_RR")."""
        (self.git_dir / "MERGE_RR").unlink(missing_ok=True)

    def rebase_quit(self) -> None:
        """Drop git's rebase state without touching HEAD, index or worktree."""
        self.run("rebase", "--quit")

    def valid_branch_name(self, name: str) -> bool:
        return self.ok("check-ref-format", f"refs/heads/{name}")

    def head_unreachable(self) -> bool:
        """True when HEAD holds commits no branch, tag or remote-tracking ref has."""
        return bool(self.run("rev-list", "-1", "HEAD", "--not", "--branches", "--tags", "--remotes").strip())

    def tree_paths(self, treeish: str) -> set[str]:
        return {p for p in self.run("ls-tree", "-r", "--name-only", "-z", treeish).split("\0") if p}

    def present(self, shas: Sequence[str]) -> set[str]:
        """Which of ``shas`` name commits this repository has (one ``cat-file --batch-check``)."""
        if not shas:
            return set()
        out = self.run("cat-file", "--batch-check=%(objectname) %(objecttype)",
                       input="".join(f"{s}\n" for s in shas))
        return {parts[0] for line in out.splitlines() if len(parts := line.split()) == 2 and parts[1] == "commit"}

    def write_blob(self, data: bytes) -> str:
        return self.run("hash-object", "-w", "--stdin", input=data).strip()


    # -- typed operations the upgrade engine needs -------------------------------------
    def full_head_ref(self) -> str | None:
        """The full ref HEAD is on ("refs/heads/b2.18.0"), None when detached. Full names only:
        ``--short`` prints "heads/b2.18.0" when a tag shares the branch's name."""
        proc = self.ask("symbolic-ref", "--quiet", "HEAD")
        return _text(proc.stdout).strip() or None if proc.returncode == 0 else None

    def rebase_state(self) -> RebaseState | None:
        """git's own record of a merge-backend rebase, read from ``rebase-merge/`` (None: none)."""
        folder = self.git_dir / "rebase-merge"
        if not folder.is_dir():
            return None

        def read(name: str) -> str:
            try:
                return (folder / name).read_text().strip()
            except OSError:
                return ""

        def steps(name: str) -> tuple[RebaseStep, ...]:
            out = []
            for line in read(name).splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.startswith("#"):
                    out.append(RebaseStep(parts[0], parts[1]))
            return tuple(out)

        try:
            head = (self.git_dir / "HEAD").read_text()
        except OSError:
            head = ""
        return RebaseState(
            folder=folder, head_name=read("head-name"), onto=read("onto"),
            done=steps("done"), todo=steps("git-rebase-todo"),
            msgnum=int(read("msgnum") or 0), end=int(read("end") or 0),
            stopped_sha=read("stopped-sha") or None, head_detached=not head.startswith("ref:"),
            head="" if head.startswith("ref:") else head.strip(),
            has_message=(folder / "message").is_file())

    def restore_rebase_message(self, sha: str) -> None:
        """Write ``rebase-merge/message`` (what ``rebase --continue`` commits a resolved stop
        with) as git writes it at a stop: the stopped commit's message. git killed as it
        stopped can leave it unwritten: "could not read log file"."""
        from forkops.fsutil import write_atomic

        raw = self.run_raw("cat-file", "commit", sha)
        if raw.returncode != 0:
            raise GitError(["cat-file", "commit", sha], raw.returncode, _text(raw.stderr))
        write_atomic(self.git_dir / "rebase-merge" / "message", raw.stdout.partition(b"\n\n")[2])

    def requeue_pick(self, sha: str) -> None:
        """Put ``pick SHA`` back at the front of the running rebase's todo list (a pick git
        recorded as done whose changes never reached the index: a process killed mid-pick)."""
        from forkops.fsutil import write_atomic

        todo = self.git_dir / "rebase-merge" / "git-rebase-todo"
        old = todo.read_text() if todo.is_file() else ""
        write_atomic(todo, f"pick {sha}\n" + old)

    def unmerged(self) -> dict[str, frozenset[int]]:
        """Unmerged path -> the index stages it has (``git ls-files -u``)."""
        stages: dict[str, set[int]] = {}
        for line in self.run("ls-files", "-u", "-z").split("\0"):
            if line:
                meta, path = line.split("\t", 1)
                stages.setdefault(path, set()).add(int(meta.split()[2]))
        return {p: frozenset(s) for p, s in stages.items()}

    def update_refs(self, changes: Mapping[str, str | None]) -> None:
        """Set (sha) or delete (None) every ref of ``changes`` in one transaction: all move or
        none does. Full ref names only."""
        if not changes:
            return
        lines = "".join(f"update {ref} {sha}\n" if sha is not None else f"delete {ref}\n"
                        for ref, sha in changes.items())
        self.run("update-ref", "--stdin", input="start\n" + lines + "prepare\ncommit\n")

    def ls_remote(self, remote: str, *patterns: str, tags: bool = False) -> dict[str, RemoteRef]:
        """Refs of ``remote`` (a name or a URL): full name -> (object, commit it peels to)."""
        out = self.run("ls-remote", *(["--tags"] if tags else []), remote, *patterns)
        sha_of: dict[str, str] = {}
        peeled: dict[str, str] = {}
        for line in out.splitlines():
            sha, ref = line.split("\t", 1)
            if ref.endswith("^{}"):
                peeled[ref[:-3]] = sha
            else:
                sha_of[ref] = sha
        return {ref: RemoteRef(ref, sha, peeled.get(ref, sha)) for ref, sha in sha_of.items()}

    def ls_remote_heads(self, remote: str, names: Iterable[str]) -> dict[str, str]:
        """``refs/heads/NAME`` on ``remote`` -> commit, for the branch names given."""
        wanted = [n if n.startswith("refs/") else f"refs/heads/{n}" for n in names]
        proc = self.run_raw("ls-remote", "--heads", remote, *wanted)
        if proc.returncode != 0 and self.remote_url(remote) is None:
            return {}  # no such remote: nothing is published there
        if proc.returncode != 0:
            raise GitError(["ls-remote", "--heads", remote], proc.returncode, _text(proc.stderr))
        out = _text(proc.stdout)
        found = {}
        for line in out.splitlines():
            sha, ref = line.split("\t", 1)
            if ref in wanted:  # ls-remote matches patterns by their tail; keep exact names only
                found[ref] = sha
        return found

    def fetch_objects(self, source: str, refs: Sequence[str], *, progress: Progress | None = None) -> None:
        """Fetch the objects of ``refs`` from ``source`` (a URL or remote) and nothing else: no
        ref, no FETCH_HEAD, no tags, no automatic gc (which could repack refs). The caller
        creates the refs it wants, recorded, in one transaction."""
        args = ["-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "fetch.writeCommitGraph=false",
                "fetch", "--no-tags", "--no-write-fetch-head", "--progress" if progress else "--quiet",
                source, *refs]
        merged = dict(self.extra_env)
        started = time.perf_counter()
        if progress is None:
            proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True,
                                  env=git_env(merged), check=False)
            code, stderr = proc.returncode, _text(proc.stderr)
        else:
            code, stderr = _with_progress(["git", "-C", str(self.path), *args], git_env(merged), progress)
        _trace(args, self.path, code, started)
        if code != 0:
            if "couldn't find remote ref" in stderr:
                raise BadInput(f"{source} has no {', '.join(refs)}")
            raise GitError(args, code, stderr)

    def config_path(self) -> Path:
        return self.git_dir / "config"

    def stale_locks(self) -> list[Path]:
        """git's lock files in this repository (index, HEAD, refs, packed-refs, config, the
        rebase's state files). A lock no process holds is left by a killed git: git refuses to
        work until it is gone (a rebase's ``message.lock`` makes every later stop fail to write
        its message)."""
        gd = self.git_dir
        found = sorted(gd.glob("*.lock")) + sorted((gd / "rebase-merge").glob("*.lock"))
        refs = gd / "refs"
        if refs.is_dir():
            found += sorted(refs.rglob("*.lock"))
        return found

    def ident_missing(self) -> bool:
        """True when git has no committer or author identity (a commit would fail)."""
        return not self.ok("var", "GIT_COMMITTER_IDENT") or not self.ok("var", "GIT_AUTHOR_IDENT")

    def diff_check(self, *args: str) -> list[DiffProblem]:
        """``git diff --check ARGS``: whitespace errors and leftover conflict markers."""
        proc = self.run_raw("-c", "core.quotePath=false", "diff", "--check", "--no-color", *args)
        if proc.returncode not in (0, 2):
            raise GitError(["diff", "--check", *args], proc.returncode, _text(proc.stderr))
        problems: list[DiffProblem] = []
        for line in _text(proc.stdout).splitlines():
            m = _CHECK_LINE.match(line)
            if m:
                problems.append(DiffProblem(m.group(1), int(m.group(2)), m.group(3).rstrip("."), ""))
            elif line.startswith("+") and problems and not problems[-1].text:
                last = problems[-1]
                problems[-1] = DiffProblem(last.path, last.line, last.problem, line[1:])
        return problems

    def commits_with_patch_ids(self, shas: Sequence[str]) -> tuple[list[CommitInfo], dict[str, str]]:
        """(:meth:`commit_infos` of ``shas``, commit -> its stable patch id) from two git
        processes for any number of commits: one ``diff-tree`` prints each commit's line and its
        patch, ``patch-id`` reads the same output. ``shas`` are full names.
        Commits without changes have no patch id."""
        if not shas:
            return [], {}
        diff = self.run_raw("diff-tree", "--stdin", "-p", "--always", "--no-color", "--no-renames", "--date=raw",
                            "--format=%H%x00%an <%ae> %ad%x00%s", input="".join(f"{s}\n" for s in shas))
        if diff.returncode != 0:
            raise GitError(["diff-tree", "--stdin", "-p"], diff.returncode, _text(diff.stderr))
        # A commit's line starts with its sha and a NUL; a diff line starts with " ", "+", "-",
        # "@", or a header word (a NUL deep in a file git took for text cannot pass for one).
        wanted = set(shas)
        infos = [CommitInfo(*line.split("\0", 2)) for line in _text(diff.stdout).splitlines()
                 if line.split("\0", 1)[0] in wanted]
        out = self.run("patch-id", "--stable", input=diff.stdout)
        return infos, {c: p for p, c in (line.split() for line in out.splitlines() if line)}

    def upstream_patch_ids(self, base: str, tip: str, paths: Sequence[str]) -> set[str]:
        """Patch ids of the commits of ``base..tip`` that touch ``paths`` (whole commits)."""
        if not paths:
            return set()
        log = self.run_raw("log", "--no-merges", "-p", "--full-diff", "--no-color", "--no-renames",
                           "--format=commit %H", f"{base}..{tip}", "--", *paths).stdout
        out = self.run("patch-id", "--stable", input=log)
        return {line.split()[0] for line in out.splitlines() if line}

    def commit_infos(self, shas: Sequence[str]) -> list[CommitInfo]:
        """(sha, author identity with date, subject) of each commit, in order."""
        if not shas:
            return []
        out = self.run("log", "--no-walk=unsorted", "--format=%H%x00%an <%ae> %ad%x00%s", "--date=raw", *shas)
        return [CommitInfo(*line.split("\0", 2)) for line in out.splitlines() if line]


_RANGE_DIFF = re.compile(r"^\s*(-|\d+):\s+(-+|[0-9a-f]+) ([=!<>]) \s*(?:-|\d+):\s+(-+|[0-9a-f]+) ?(.*)$")


@dataclass(frozen=True)
class RangeDiffLine:
    """One row of ``git range-diff``: ``=`` same patch, ``!`` changed, ``<`` only in the old
    range (dropped), ``>`` only in the new one (added)."""

    old: str
    mark: str
    new: str
    subject: str


def _without_section(config: bytes, section: str) -> bytes:
    """``config`` text without the section ``remote.tf`` (``[remote "tf"]`` and its lines)."""
    head, _, sub = section.partition(".")
    header = re.compile(rb'^\s*\[\s*' + re.escape(head.encode()) + rb'\s+"' + re.escape(sub.encode()) + rb'"\s*\]',
                        re.I)
    out, skipping = [], False
    for line in config.splitlines(keepends=True):
        if line.lstrip().startswith(b"["):
            skipping = bool(header.match(line))
        if not skipping:
            out.append(line)
    return b"".join(out)


_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_CHECK_LINE = re.compile(r"^(.+?):(\d+): (.+)$")


@dataclass(frozen=True)
class DiffProblem:
    """One ``git diff --check`` finding; ``text`` is the offending line (empty for markers)."""

    path: str
    line: int
    problem: str  # "leftover conflict marker", "trailing whitespace", ...
    text: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    ident: str  # "Name <email> <unix time> <tz>": kept by a rebase, so it identifies the pick
    subject: str


@dataclass(frozen=True)
class RemoteRef:
    name: str  # full ref name
    sha: str  # the object (a tag object for an annotated tag)
    peeled: str  # the commit it peels to


@dataclass(frozen=True)
class RebaseStep:
    command: str  # pick, exec, ...
    sha: str


@dataclass(frozen=True)
class RebaseState:
    """A merge-backend rebase as git recorded it in ``.git/rebase-merge``."""

    folder: Path
    head_name: str  # the full ref being rebased; "" when git was killed before writing it
    onto: str
    done: tuple[RebaseStep, ...]
    todo: tuple[RebaseStep, ...]
    msgnum: int
    end: int
    stopped_sha: str | None
    head_detached: bool  # False: git died after creating the folder, before it detached HEAD
    head: str  # the commit HEAD is detached at ("" when it is on a branch)
    has_message: bool  # git writes rebase-merge/message when it stops, and removes it on continue

    @property
    def current(self) -> str | None:
        """The commit the rebase stopped on (or was picking when it died)."""
        if self.stopped_sha:
            return self.stopped_sha
        return self.done[-1].sha if self.done else None


def _with_progress(argv: list[str], env: dict[str, str], progress: Progress) -> tuple[int, str]:
    """Run a git fetch/clone with ``--progress``, feeding its stderr to GitPython's progress
    parser; returns (exit code, the non-progress stderr lines)."""
    import git as gitpython  # lazy: importing GitPython costs ~0.1 s

    handler = _progress_class(gitpython)(progress)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    feed = handler.new_message_handler()
    buf = b""
    while chunk := proc.stderr.read(256):
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        for line in lines:
            feed(line.decode("utf-8", "replace"))
    if buf:
        feed(buf.decode("utf-8", "replace"))
    code = proc.wait()
    return code, "\n".join(handler.error_lines + handler.other_lines)


def _progress_class(gitpython: object) -> type:
    base = gitpython.RemoteProgress  # type: ignore[attr-defined]

    class _Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self, progress: Progress) -> None:
            super().__init__()
            self._report = progress

        def update(self, op_code: int, cur_count: str | float, max_count: str | float | None = None,
                   message: str = "") -> None:
            if not isinstance(cur_count, int | float):
                return
            stage = {
                self.COUNTING: "counting objects", self.COMPRESSING: "compressing objects",
                self.RECEIVING: "receiving objects", self.RESOLVING: "resolving deltas",
                self.CHECKING_OUT: "checking out files",
            }.get(op_code & self.OP_MASK, "fetching")
            total = max_count if isinstance(max_count, int | float) and max_count else None
            self._report(stage, float(cur_count) / total if total else None)

    return _Progress


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


def _no_progress(_stage: str, _fraction: float | None) -> None:
    return None


def clone(url: str, path: Path, *, progress: Progress | None = None) -> Repo:
    """Clone ``url`` into ``path`` with GitPython, reporting (stage, fraction) to ``progress``."""
    import git as gitpython  # lazy: importing GitPython costs ~0.1 s

    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    listener = _progress_class(gitpython)(progress or _no_progress)
    try:
        gitpython.Repo.clone_from(url, str(path), progress=listener, env=git_env())
    except gitpython.GitCommandError as exc:
        status = exc.status if isinstance(exc.status, int) else 1
        _trace(["clone", url, str(path)], None, status, started)
        # With a progress listener GitPython hands git's stderr to it, not to the exception.
        stderr = str(exc.stderr or "").strip() or "\n".join(listener.error_lines + listener.other_lines)
        raise GitError(["clone", url, str(path)], status, stderr) from None
    _trace(["clone", url, str(path)], None, 0, started)
    return Repo(path)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
