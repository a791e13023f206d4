"""The commit/push guard (docs/SPEC.md section 6): the key never reaches a commit or a push.

``forkops guard install`` (and ``forkops set-key``) installs ``commit-msg`` and ``pre-push``
hooks in every fork clone. Each runs ``<the installing python> -S -P -m
forkops.guard HOOK --keys PATH``: no site-packages, no typer, rich or GitPython, so a commit
pays little more than the interpreter's start; the hook knows only the keys file's *path* and
reads the key itself, so the key is never on a command line. When that interpreter is gone
(a removed venv) the hook refuses with one line saying how to reinstall: it fails closed.

What counts as a leak: anything :class:`forkops.secrets.Matcher` finds (every form the
key-site reader decodes, hex, base64; the IV only when it is not the public default).

What is scanned:

* ``commit-msg`` (it runs for every ``git commit`` and merge commit not made with
  ``--no-verify``, once the message is known, before the commit exists): the staged blob of
  every added or modified path (``$GIT_INDEX_FILE`` honoured, so ``git commit -a`` and
  ``git commit PATH`` are covered) and the message (up to git's scissors line of ``commit -v``);
* ``pre-push`` and ``guard scan``: every object the push adds, ``git rev-list --objects`` of
  the pushed refs minus what the remote's refs reach: commits (their whole text, message
  included), annotated tags (their message; a tag of a blob or a tree too) and blobs, all
  read by one ``git cat-file --batch``.

Which history a push may skip (it is already published, or it is upstream's):

* everything reachable from the remote's refs as ``git ls-remote`` lists them (once per push),
  plus git's own old values of the pushed refs; when the remote cannot be listed, its
  remote-tracking refs (a push to a bare URL: the remotes with that URL) stand in;
* commits reachable from the upstream remote's tracking refs (``refs/remotes/tf/*``) and from
  *confirmed* upstream release tags: a local tag whose name matches the playbook's upstream tag
  pattern and which ``git ls-remote`` of the workspace's upstream URL reports with the same
  commit. Upstream content never holds the private key.

Nothing else hides history: not a local-only tag, not a tag named like a release that
upstream does not have at that commit, not the tracking refs of other remotes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from forkops.errors import BadInput, ForkopsError, GitError
from forkops.fsutil import write_atomic
from forkops.git import Repo, git_env
from forkops.secrets import Hit, Matcher

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.playbook import Playbook

# commit-msg scans the staged files and the message in one process: a second Python start-up
# per commit (a pre-commit hook) would double the guard's cost on every commit.
HOOKS = ("commit-msg", "pre-push")
RETIRED_HOOKS = ("pre-commit",)  # installed by earlier versions; removed on install
MARKER = "# forkops-guard:"
CHAINED_SUFFIX = ".forkops-chained"
PRIVATE_HOOKS = "forkops-hooks"  # under the git dir, when core.hooksPath is a tracked folder
_ZERO = re.compile(r"0+")
# rev-list options `guard scan` accepts besides revisions: they only select refs.
SCAN_OPTIONS = ("--all", "--branches", "--tags", "--remotes", "--glob")
_BATCH_BYTES = 1 << 20  # objects are matched in batches this large, then singly on a hit
_PROGRESS_EVERY = 5000  # objects


# -- findings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """A secret found in an object: where, which secret (by fingerprint), in what form.

    ``kind`` is ``file`` (a blob: ``path`` names it, ``commit`` the first commit of the scanned
    range that has it, None for a staged file or a blob only a tag reaches), ``commit`` (the
    commit's text: message, author) or ``tag`` (an annotated tag's text; ``path`` is its name)
    or ``message`` (a commit message being written)."""

    commit: str | None
    path: str
    what: str  # "key" | "iv"
    fingerprint: str
    form: str
    kind: str = "file"
    object: str | None = None

    def describe(self) -> str:
        secret = f"the {self.what} ({self.fingerprint}) as {self.form}"
        if self.kind == "commit":
            return f"commit {(self.commit or '')[:12]} message: {secret}"
        if self.kind == "tag":
            return f"tag {self.path} ({(self.object or '')[:12]}) message: {secret}"
        if self.kind == "path":
            return f"a path name (object {(self.object or '')[:12]}): {secret}"
        if self.kind == "message":
            return f"commit message: {secret}"
        if self.commit:
            return f"commit {self.commit[:12]} {self.path}: {secret}"
        if self.object:
            return f"blob {self.object[:12]} {self.path or '(reached only from a tag)'}: {secret}"
        return f"staged {self.path}: {secret}"

    def as_json(self) -> dict[str, str | None]:
        return {"commit": self.commit, "path": self.path, "what": self.what, "fingerprint": self.fingerprint,
                "form": self.form, "kind": self.kind, "object": self.object}


@dataclass(frozen=True)
class ScanResult:
    commits: int
    objects: int
    findings: tuple[Finding, ...]


# -- reading objects ----------------------------------------------------------------------------------
def _cat_file(repo: Repo, names: Iterable[str]) -> Iterator[tuple[str, str, bytes]]:
    """(sha, type, content) of every object in ``names`` that exists, from ONE
    ``git cat-file --batch``; ``names`` is consumed by a feeder thread as the output is read,
    so neither side waits on a full pipe and memory stays bounded."""
    proc = subprocess.Popen(["git", "-C", str(repo.path), "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=git_env(repo.extra_env))
    assert proc.stdin is not None and proc.stdout is not None
    stdin, out = proc.stdin, proc.stdout
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            for name in names:
                stdin.write(name.encode() + b"\n")
        except BaseException as exc:
            failed.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while header := out.readline():
            parts = header.split()
            if len(parts) != 3:
                continue  # "<name> missing"
            size = int(parts[2])
            data = out.read(size)
            out.read(1)
            yield parts[0].decode(), parts[1].decode(), data
    finally:
        out.close()
        feeder.join()
        code = proc.wait()
    if failed:
        raise failed[0]
    if code != 0:
        raise GitError(["cat-file", "--batch"], code, "")


class _Batcher:
    """Matches many small objects at once: their contents joined into one buffer, matched
    together, and only when that finds something, matched one by one. A hit that a join
    would create across two objects is only a (harmless, rechecked) extra look."""

    def __init__(self, matcher: Matcher, report: Callable[[str, str, Hit], None]) -> None:
        self.matcher, self.report = matcher, report
        self.items: list[tuple[str, str, bytes]] = []
        self.size = 0

    def add(self, sha: str, kind: str, data: bytes) -> None:
        if len(data) >= _BATCH_BYTES:
            hit = self.matcher.first(data)
            if hit is not None:
                self.report(sha, kind, hit)
            return
        self.items.append((sha, kind, data))
        self.size += len(data)
        if self.size >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        items, self.items, self.size = self.items, [], 0
        if items and self.matcher.first(b"\0\n".join(d for _, _, d in items)) is not None:
            for sha, kind, data in items:
                hit = self.matcher.first(data)
                if hit is not None:
                    self.report(sha, kind, hit)


def _rev_args(revs: list[str]) -> tuple[list[str], str]:
    opts = [r for r in revs if r.startswith("--")]
    bad = [o for o in opts if o.split("=", 1)[0] not in SCAN_OPTIONS]
    if bad:
        raise BadInput(f"unsupported option {bad[0]!r} (use revisions, ranges or {', '.join(SCAN_OPTIONS)})")
    return opts, "".join(f"{r}\n" for r in revs if not r.startswith("--"))


def scan_objects(repo: Repo, revs: list[str], matcher: Matcher, *,
                 progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Every object ``git rev-list --objects`` lists for ``revs`` (``rev-list --stdin`` lines:
    ``SHA``, ``^SHA``, ``A..B``, or a ref-selecting option of ``SCAN_OPTIONS`` such as
    ``--all``): commits and annotated tags by their whole text, blobs by content. Trees are
    not read (their names are scanned as the paths ``rev-list`` prints). ``progress(objects,
    commits)`` is called every few thousand objects."""
    opts, lines = _rev_args(revs)
    check = repo.run_raw("rev-list", "--max-count=1", *opts, "--stdin", input=lines)
    if check.returncode != 0:
        err = check.stderr.decode("utf-8", "replace").strip()
        raise BadInput(f"not a revision range git understands: {' '.join(revs)}",
                       hint=err.splitlines()[-1] if err else None)
    # Two listings: the commits, then the blobs and tags. A type filter keeps rev-list from
    # printing trees (never read: their names are the paths it prints), but it also drops every
    # commit except the tips, hence the commit walk of its own (cheap: no trees are parsed).
    paths: dict[str, str] = {}
    counts = [0, 0]  # objects, commits

    def listing(*args: str) -> Iterator[str]:
        proc = subprocess.Popen(["git", "-C", str(repo.path), "rev-list", *args, *opts, "--stdin"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=git_env(repo.extra_env))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(lines.encode())
        proc.stdin.close()
        for raw in proc.stdout:
            yield raw.decode("utf-8", "surrogateescape").rstrip("\n")
        if proc.wait() != 0:
            raise GitError(["rev-list", *args], proc.returncode, "")

    def names() -> Iterator[str]:
        for sha in listing():
            counts[1] += 1
            yield sha
        for line in listing("--objects", "--filter=object:type=blob"):
            sha, sep, path = line.partition(" ")
            if sep:  # a blob or a tag (the commits without a name were listed above)
                paths[sha] = path
                yield sha

    found: list[Finding] = []
    hit_blobs: dict[str, Hit] = {}

    def report(sha: str, kind: str, hit: Hit) -> None:
        if kind == "blob":
            hit_blobs[sha] = hit
        else:
            found.append(Finding(sha if kind == "commit" else None, paths.get(sha, "") if kind == "tag" else "",
                                 hit.what, hit.fingerprint, hit.form, kind, sha))

    batch = _Batcher(matcher, report)
    for sha, kind, data in _cat_file(repo, names()):
        counts[0] += 1
        if kind in ("blob", "commit", "tag"):
            batch.add(sha, kind, data)
        if progress is not None and counts[0] % _PROGRESS_EVERY == 0:
            progress(counts[0], counts[1])
    batch.flush()
    # Path names are content too (a file named after the key).
    names_blob = "\n".join(paths.values()).encode("utf-8", "surrogateescape")
    for hit in matcher.spans(names_blob):
        line_start = names_blob.rfind(b"\n", 0, hit.start) + 1
        line_end = names_blob.find(b"\n", hit.start)
        line_end = len(names_blob) if line_end < 0 else line_end
        path = names_blob[line_start:line_end].decode("utf-8", "surrogateescape")
        found.append(Finding(None, "", hit.what, hit.fingerprint, hit.form, "path",
                             next((sha for sha, p in paths.items() if p == path), None)))
    found += [_attribute(repo, opts, lines, sha, paths.get(sha, ""), hit) for sha, hit in hit_blobs.items()]
    if progress is not None and counts[0] >= _PROGRESS_EVERY:
        progress(counts[0], counts[1])
    return ScanResult(counts[1], counts[0], tuple(found))


def _attribute(repo: Repo, opts: list[str], lines: str, blob: str, path: str, hit: Hit) -> Finding:
    """The first commit of the scanned range that has ``blob`` (asked only for a hit)."""
    proc = repo.run_raw("log", "--format=%H", "--reverse", "--no-renames", f"--find-object={blob}",
                        "--ignore-missing", *opts, "--stdin", input=lines)
    first = proc.stdout.decode().split()
    return Finding(first[0] if first else None, path, hit.what, hit.fingerprint, hit.form, "file", blob)


def scan_commits(repo: Repo, revs: list[str], matcher: Matcher) -> tuple[int, list[Finding]]:
    """(commits, findings) of :func:`scan_objects` (the name callers have used)."""
    result = scan_objects(repo, revs, matcher)
    return result.commits, list(result.findings)


def _raw_entries(tokens: list[str]) -> Iterator[tuple[str, str]]:
    """(path, new blob sha) from ``-z`` raw diff output; skips deletions and submodules."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith(":"):
            _, new_mode, _, new_sha, status = tok[1:].split(" ")
            path = tokens[i + 1]
            i += 2
            if status.startswith("D") or new_mode == "160000" or _ZERO.fullmatch(new_sha):
                continue
            yield path, new_sha
        else:
            i += 1


def scan_staged(repo: Repo, matcher: Matcher, *, index_file: str | None = None) -> list[Finding]:
    """Staged blobs of added/modified paths (against HEAD, or everything in a first commit)."""
    env = {"GIT_INDEX_FILE": os.path.abspath(index_file)} if index_file else None
    head = repo.run_raw("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    # 4b825dc... is git's empty tree: a first commit is compared with nothing.
    base = head.stdout.decode().strip() if head.returncode == 0 else "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    out = repo.run("diff-index", "--cached", "-z", "--no-renames", "--diff-filter=d", base, env=env)
    where: dict[str, str] = {}
    for path, sha in _raw_entries(out.split("\0")):
        where.setdefault(sha, path)
    findings: list[Finding] = []
    if not where:
        return findings
    for sha, _kind, data in _cat_file(repo, list(where)):
        for what, form in matcher.find(data):
            fp = next(s.fingerprint for s in matcher.secrets if s.what == what)
            findings.append(Finding(None, where[sha], what, fp, form))
    return findings


SCISSORS = b"# ------------------------ >8 ------------------------"


def scan_message(path: Path, matcher: Matcher) -> list[Finding]:
    """The commit message git is about to use (what ``commit -v`` appends below the scissors
    line is git's own diff, not part of the message)."""
    data = path.read_bytes().split(SCISSORS, 1)[0]
    return [Finding(None, "", what, next(s.fingerprint for s in matcher.secrets if s.what == what), form, "message")
            for what, form in matcher.find(data)]


# -- what a push sends ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upstream:
    """A fork clone's upstream as its workspace describes it: the playbook (its upstream remote
    name and release tag pattern) and the URL whose tag list confirms a local release tag."""

    playbook: Playbook
    url: str


def upstream_of(repo_path: Path) -> Upstream | None:
    """The upstream of the clone at ``repo_path`` if it belongs to a forkops workspace whose
    playbook loads; None otherwise (then no tag is trusted)."""
    from forkops import workspace  # only the pre-push hook needs it

    try:
        top = Path(Repo(repo_path).run("rev-parse", "--show-toplevel").strip()).resolve()
        ws = workspace.load(top)
        for rc in ws.repos:
            if rc.path.resolve() == top:
                return Upstream(ws.playbook(rc), rc.upstream)
    except (ForkopsError, OSError):
        return None
    return None


@dataclass(frozen=True)
class Outgoing:
    """What a push sends: ``revs`` as ``rev-list --stdin`` lines (empty: nothing to scan), the
    upstream release tags whose history was skipped, and notes for the person pushing."""

    revs: list[str]
    trusted_tags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _remote_names(repo: Repo, remote: str | None) -> tuple[list[str], list[str]]:
    """(all configured remotes, the ones ``remote`` means): a name, or a URL (git passes the
    URL as the remote when pushing to one that is not configured)."""
    names = repo.lines("remote")
    if remote is None:
        return names, []
    if remote in names:
        return names, [remote]
    proc = repo.run_raw("config", "--get-regexp", r"^remote\..*\.(push)?url$")
    matched = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        name = key[len("remote."):].rsplit(".", 1)[0]
        if value == remote and name in names and name not in matched:
            matched.append(name)
    return names, matched


def _tracking_refs(repo: Repo, remote: str, names: list[str]) -> list[str]:
    """Commits of ``refs/remotes/<remote>/*``, not those of a remote named ``<remote>/x``."""
    nested = [f"refs/remotes/{n}/" for n in names if n != remote and n.startswith(f"{remote}/")]
    return [r.peeled for r in repo.refs(f"refs/remotes/{remote}/")
            if not any(r.name.startswith(p) for p in nested)]


def _listed_remote(repo: Repo, remote: str) -> list[str] | None:
    """The objects the remote's refs point at that exist here, from one ``git ls-remote``;
    None when the remote cannot be listed."""
    proc = repo.run_raw("ls-remote", "--", remote)
    if proc.returncode != 0:
        return None
    shas = sorted({line.split("\t", 1)[0] for line in proc.stdout.decode("utf-8", "replace").splitlines()
                   if "\t" in line})
    if not shas:
        return []
    check = repo.run_raw("cat-file", "--batch-check=%(objectname)", input="".join(f"{s}\n" for s in shas))
    return [line for line in check.stdout.decode().split("\n") if line and " " not in line]


def outgoing(repo: Repo, push_lines: Iterable[str], *, remote: str | None,
             upstream: Upstream | None) -> Outgoing:
    """What a push to ``remote`` (the hook's first argument, a name or a URL) sends, from git's
    pre-push stdin lines ``<local ref> <local sha> <remote ref> <remote sha>``. See the module
    docstring for which history counts as published; everything else a pushed object reaches
    is sent."""
    include: list[str] = []
    exclude: set[str] = set()
    pushed: set[str] = set()
    for line in push_lines:
        parts = line.split()
        if len(parts) != 4:
            continue
        local_ref, local_sha, _remote_ref, remote_sha = parts
        if _ZERO.fullmatch(local_sha):
            continue  # deleting a remote ref sends nothing
        include.append(local_sha)
        pushed.add(local_ref)
        if not _ZERO.fullmatch(remote_sha) and repo.ok("cat-file", "-e", remote_sha):
            exclude.add(remote_sha)
    if not include:
        return Outgoing([])
    notes: list[str] = []
    names, targets = _remote_names(repo, remote)
    listed = _listed_remote(repo, remote) if remote is not None else None
    if listed is not None:
        exclude.update(listed)
    else:
        if remote is not None:
            notes.append("could not list the remote's refs; its remote-tracking refs stand in for them")
        for name in targets:
            exclude.update(_tracking_refs(repo, name, names))
    if upstream is not None and upstream.playbook.upstream_remote in names:
        exclude.update(_tracking_refs(repo, upstream.playbook.upstream_remote, names))
    trusted, tag_notes = _trusted_tags(repo, include, exclude, pushed, upstream)
    exclude.update(trusted.values())
    return Outgoing(include + [f"^{sha}" for sha in sorted(exclude)], tuple(sorted(trusted)),
                    tuple(notes) + tag_notes)


def _trusted_tags(repo: Repo, include: list[str], exclude: set[str], pushed: set[str],
                  upstream: Upstream | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """Upstream release tags (name -> commit) that would hide outgoing history and that
    upstream confirms: same name, same commit. Upstream is asked only when such a tag exists."""
    if upstream is None:
        return {}, ()
    # Tags reachable from a pushed sha and from nothing already excluded: only these matter.
    args = [f"--merged={sha}" for sha in include] + [f"--no-merged={sha}" for sha in sorted(exclude)]
    fmt = "--format=%(refname)%00%(objectname)%00%(*objectname)"
    proc = repo.run_raw("for-each-ref", fmt, *args, "refs/tags/")
    if proc.returncode != 0:  # e.g. a pushed tag of a tree: then trust no tag (the safe side)
        return {}, ()
    candidates: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        ref, sha, peeled = line.split("\0")
        name = ref.removeprefix("refs/tags/")
        if ref not in pushed and upstream.playbook.version_of_tag(name) is not None:
            candidates[name] = peeled or sha
    if not candidates:
        return {}, ()
    try:
        published = repo.ls_remote_tags(upstream.url)
    except ForkopsError:
        # The URL is not echoed: it may carry credentials.
        return {}, (f"could not list upstream's tags, so {len(candidates)} release tag(s) are not "
                    "trusted: their history is checked too (slower)",)
    trusted = {n: c for n, c in candidates.items() if published.get(n) == c}
    notes = tuple(f"tag {n} is not upstream's release tag at that commit: its history is checked"
                  for n in sorted(set(candidates) - set(trusted)))
    return trusted, notes


# -- hooks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HookInstall:
    hook: str
    path: Path
    action: str  # "installed" | "updated" | "unchanged"
    chained: Path | None  # an earlier hook that ours runs first

    def as_json(self) -> dict[str, object]:
        return {"hook": self.hook, "path": str(self.path), "action": self.action,
                "chained": str(self.chained) if self.chained else None}


def hooks_dir(repo: Repo) -> Path:
    """Where git looks for hooks (``core.hooksPath`` honoured), absolute."""
    p = Path(repo.run("rev-parse", "--git-path", "hooks").strip())
    return p if p.is_absolute() else (repo.path / p)


def chain_line(hook: str) -> str:
    """The line a tracked hook runs to call forkops' hook installed in the git directory."""
    return (f'h="$(git rev-parse --git-common-dir)/{PRIVATE_HOOKS}/{hook}"; '
            f'if [ -e "$h" ]; then "$h" "$@" || exit $?; fi')


def _tracked_hooks_dir(repo: Repo, directory: Path) -> bool:
    """``directory`` is inside the worktree and git tracks something in it (a husky-style
    shared hooks folder): writing this machine's hook there would get it committed."""
    top = repo.run_raw("rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return False
    root = Path(top.stdout.decode().strip()).resolve()
    try:
        rel = directory.resolve().relative_to(root)
    except ValueError:
        return False
    return bool(repo.run("ls-files", "-z", "--", rel.as_posix() or ".").strip("\0"))


def hook_script(hook: str, keys_path: Path, python: str, package_root: Path) -> str:
    """The hook: fails closed when ``python`` is gone; ``-S`` skips site-packages (forkops'
    hook path needs the standard library only), so ``package_root`` goes on PYTHONPATH."""
    run = f'"$python" -S -P -m forkops.guard {hook} --keys {shlex.quote(str(keys_path))} -- "$@"'
    lines = [
        "#!/bin/sh",
        f"{MARKER} installed by `forkops guard install`; re-run it to update this file.",
        "# Refuses a commit or push that holds the model key (or a non-default IV).",
        f"# A hook that was here before was moved to {hook}{CHAINED_SUFFIX}; it runs first and its",
        "# failure still blocks. The key is read from the keys file, never passed on a command line.",
        f"python={shlex.quote(python)}",
        'if [ ! -x "$python" ]; then',
        "  echo \"forkops guard: refusing: this hook's Python ($python) is gone; reinstall the hook with "
        "'forkops guard install' (or bypass once with --no-verify)\" >&2",
        "  exit 1",
        "fi",
        f'PYTHONPATH={shlex.quote(str(package_root))}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH',
        'hooks_dir=$(dirname "$0")',
        f'chained="$hooks_dir/{hook}{CHAINED_SUFFIX}"',
    ]
    if hook == "pre-push":
        # git feeds the pushed refs on stdin; both hooks need them.
        lines += [
            "input=$(cat)",
            "feed() { if [ -n \"$input\" ]; then printf '%s\\n' \"$input\"; fi; }",
            'if [ -x "$chained" ]; then feed | "$chained" "$@" || exit $?; fi',
            f"feed | {run}",
        ]
    else:
        lines += [
            'if [ -x "$chained" ]; then "$chained" "$@" || exit $?; fi',
            f"exec {run}",
        ]
    return "\n".join(lines) + "\n"


def is_ours(path: Path) -> bool:
    try:
        return MARKER.encode() in path.read_bytes()[:512]
    except OSError:
        return False




def check_installable(repo_path: Path) -> None:
    """BadInput (before anything is written) when the hooks folder is tracked in the
    worktree and its hooks do not yet call forkops' hooks; the message says how to chain."""
    repo = Repo(repo_path)
    directory = hooks_dir(repo)
    if not _tracked_hooks_dir(repo, directory):
        return
    missing = [h for h in HOOKS if f"{PRIVATE_HOOKS}/{h}" not in _read(directory / h)]
    if missing:
        raise BadInput(
            f"{repo_path}: core.hooksPath {directory} is a folder the repository tracks; forkops will not "
            "write its hooks (this machine's paths) there, where a commit would publish them",
            hint="chain them instead: add this line near the top of " + ", ".join(
                str(directory / h) for h in missing) + " (with HOOK replaced by the file's name): "
            + chain_line("HOOK") + " ; then run `forkops guard install` again")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def install_hooks(repo_path: Path, keys_path: Path, *, python: str | None = None) -> list[HookInstall]:
    """Install the guard hooks, chaining (never clobbering) a hook already there. Idempotent.
    With a tracked ``core.hooksPath`` they go to ``<git dir>/forkops-hooks`` for the tracked
    hooks to call (see :func:`check_installable`, which this runs first)."""
    import forkops

    check_installable(repo_path)
    repo = Repo(repo_path)
    directory = hooks_dir(repo)
    private = _tracked_hooks_dir(repo, directory)
    if private:
        directory = Path(repo.run("rev-parse", "--git-common-dir").strip())
        directory = (directory if directory.is_absolute() else repo.path / directory) / PRIVATE_HOOKS
    directory.mkdir(parents=True, exist_ok=True)
    package_root = Path(forkops.__file__).resolve().parent.parent
    for hook in RETIRED_HOOKS:
        _retire(directory, hook)
    results = []
    for hook in HOOKS:
        path = directory / hook
        chained = directory / f"{hook}{CHAINED_SUFFIX}"
        script = hook_script(hook, keys_path.resolve(), python or sys.executable, package_root)
        if path.exists() or path.is_symlink():
            if is_ours(path):
                action = "unchanged" if path.read_text() == script else "updated"
            else:
                if chained.exists() or chained.is_symlink():
                    raise BadInput(f"{path}: an existing hook is in the way and {chained.name} is taken; "
                                   "merge them by hand, then re-run `forkops guard install`")
                os.replace(path, chained)  # keeps its mode: it still runs only if it was executable
                action = "installed"
        else:
            action = "installed"
        if action != "unchanged":
            write_atomic(path, script, mode=0o755)
        results.append(HookInstall(hook, path, action,
                                   chained if chained.exists() or chained.is_symlink() else None))
    return results


def _retire(directory: Path, hook: str) -> None:
    """Remove forkops' own ``hook`` (an earlier version's), putting back the hook it chained."""
    path, chained = directory / hook, directory / f"{hook}{CHAINED_SUFFIX}"
    if not is_ours(path):
        return
    if chained.exists() or chained.is_symlink():
        os.replace(chained, path)
    else:
        path.unlink()


def installed(repo_path: Path) -> dict[str, bool]:
    """Which guard hooks are in place and executable (where git or the tracked hooks run them)."""
    repo = Repo(repo_path)
    directory = hooks_dir(repo)
    if _tracked_hooks_dir(repo, directory):
        common = Path(repo.run("rev-parse", "--git-common-dir").strip())
        directory = (common if common.is_absolute() else repo.path / common) / PRIVATE_HOOKS
    return {h: is_ours(directory / h) and bool((directory / h).stat().st_mode & stat.S_IXUSR)
            for h in HOOKS}


# -- the hook entry point (run by the installed scripts; no typer, rich or GitPython) ------------------
def _say(line: str) -> None:
    print(f"forkops guard: {line}", file=sys.stderr)


def _refuse(action: str, findings: list[Finding], hint: str) -> int:
    for f in findings:
        _say(f.describe())
    _say(f"refusing the {action}: it contains the model key or IV ({len(findings)} object(s)); {hint}")
    return 1


def run_hook(hook: str, keys_path: Path, args: list[str], stdin: IO[str]) -> int:
    """Run one hook in the current repository; the exit code git sees (0 allows)."""
    from forkops import keyfile

    try:
        material: KeyMaterial = keyfile.load(keys_path)
    except ForkopsError as exc:
        # Fail closed: without the key the guard cannot tell, so it refuses.
        _say(f"cannot read the keys file, so it refuses: {exc.message}"
             + (f" ({exc.hint})" if exc.hint else " (fix it, or bypass once with --no-verify)"))
        return 2
    matcher = Matcher(material)
    repo = Repo(Path.cwd())
    if hook == "pre-commit":
        findings = scan_staged(repo, matcher, index_file=os.environ.get("GIT_INDEX_FILE"))
        return _refuse("commit", findings, "unstage it (`git restore --staged PATH`) or put the committed "
                       "values back (`forkops set-key --clear`), then stage again") if findings else 0
    if hook == "commit-msg":
        if not args:
            _say("commit-msg: git passed no message file, so it refuses")
            return 2
        findings = scan_staged(repo, matcher, index_file=os.environ.get("GIT_INDEX_FILE"))
        if findings:
            return _refuse("commit", findings, "unstage it (`git restore --staged PATH`) or put the committed "
                           "values back (`forkops set-key --clear`), then commit again")
        findings = scan_message(Path(args[0]), matcher)
        return _refuse("commit", findings, "write the message without it") if findings else 0
    if hook == "pre-push":
        # git runs the hook as `pre-push <remote name or URL> <URL>`.
        sent = outgoing(repo, stdin.read().splitlines(), remote=args[0] if args else None,
                        upstream=upstream_of(repo.path))
        for note in sent.notes:
            _say(f"note: {note}")
        if not sent.revs:
            return 0
        result = scan_objects(repo, sent.revs, matcher)
        if result.findings:
            return _refuse("push", list(result.findings),
                           "rewrite those commits or tags without the key (e.g. `git rebase -i`), then push")
        skipped = (f" (history of upstream tag(s) {', '.join(sent.trusted_tags)} skipped)"
                   if sent.trusted_tags else "")
        _say(f"checked {result.commits} outgoing commit(s), {result.objects} object(s): no key{skipped}")
        return 0
    _say(f"unknown hook {hook!r}, so it refuses")
    return 2


def main(argv: list[str]) -> int:
    """``python -m forkops.guard HOOK --keys FILE [--] [ARGS...]``."""
    if len(argv) < 3 or argv[1] != "--keys":
        _say("usage: python -m forkops.guard HOOK --keys FILE [-- ARGS]; reinstall with `forkops guard install`")
        return 2
    hook, keys_path, rest = argv[0], Path(argv[2]), argv[3:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        return run_hook(hook, keys_path, rest, sys.stdin)
    except ForkopsError as exc:
        _say(f"refusing: {exc.message}")
        return 2 if exc.exit_code == 2 else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
