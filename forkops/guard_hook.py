"""What the installed guard hooks run (docs/SPEC.md section 6), and the object reading that
``forkops guard scan`` shares with them.

Every commit and every push pays this module's start-up, so it imports the standard library
(``re``, ``subprocess``, ``tomllib``), :mod:`forkops.secrets` and the keys reader of
:mod:`forkops.keyfile` only: no typer, rich, GitPython, dataclasses or pathlib, and no
playbook unless a push carries history that an upstream tag may vouch for (then
:mod:`forkops.guard` decides which). The git processes are few: ``commit-msg`` runs
``diff-index`` and one ``cat-file --batch``; ``pre-push`` runs ``ls-remote`` (only when a
pushed ref is new to the remote or its old value is unknown here), one ``git log --raw`` for
all pushed refs and one ``cat-file --batch``.

Which objects a push sends: its commits are ``git log`` of the pushed tips minus what the
remote has (git's own old values of the pushed refs and, when needed, what ``git ls-remote``
lists); its blobs are those the commits' first-parent diffs name. That is every blob a push
can add: a blob of a pushed commit either differs from its first parent's (then the diff
names it) or is the parent's (then the parent is pushed too, or the remote has it). Pushed
tags (their text, their targets: commits, blobs, trees, other tags) are read from the tips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, NamedTuple

from forkops.errors import ExternalError, ForkopsError, GitError
from forkops.gitenv import git_env, trace
from forkops.secrets.matcher import Hit, Matcher

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree: a first commit's base
SCISSORS = b"# ------------------------ >8 ------------------------"
_BATCH_BYTES = 1 << 20  # objects are matched in batches this large, then singly on a hit
_END = "forkops-end-of-batch"  # a name cat-file reports missing: marks the end of a stream
# Replacement refs would make git show us other objects than the ones a push sends.
_NO_REPLACE = {"GIT_NO_REPLACE_OBJECTS": "1"}


def _zero(sha: str) -> bool:
    return not sha.strip("0")


# -- findings ---------------------------------------------------------------------------------------
class Finding(NamedTuple):
    """A secret found in an object: where, which secret (by fingerprint), in what form.

    ``kind`` is ``file`` (a blob: ``path`` names it, ``commit`` the commit of the scanned
    range that has it, None for a staged file or a blob only a tag reaches), ``commit`` (the
    commit's text: message, author), ``tag`` (an annotated tag's text; ``path`` is its name),
    ``path`` (a path name) or ``message`` (a commit message being written). A NamedTuple,
    not a dataclass: every hook imports it."""

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


# -- git ----------------------------------------------------------------------------------------------
def run_git(cwd: str, *args: str, input: bytes | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=False,
                              env=git_env({**_NO_REPLACE, **(env or {})}))
    except OSError as exc:
        raise ExternalError(f"cannot run git: {exc}") from None
    trace(args, cwd, proc.returncode, started)
    return proc


def _checked(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    if proc.returncode != 0:
        raise GitError(proc.args[1:], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc.stdout


class CatFile:
    """One ``git cat-file --batch`` for every object a hook or a scan reads: asked a few names
    at a time (:meth:`get`) or fed a long stream by a thread (:meth:`stream`), so neither side
    waits on a full pipe and memory stays bounded."""

    def __init__(self, cwd: str, env: Mapping[str, str] | None = None) -> None:
        self.cwd, self.started = cwd, time.perf_counter()
        self.proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=git_env({**_NO_REPLACE, **(env or {})}))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.out = self.proc.stdin, self.proc.stdout

    def _read(self) -> tuple[str, str, bytes] | None:
        """The next object: (sha, type, content), or None for a name git does not have."""
        header = self.out.readline()
        if not header:
            raise GitError(["cat-file", "--batch"], self.proc.poll() or -1, "ended early")
        parts = header.split()
        if len(parts) != 3:
            return None  # "<name> missing" (or ambiguous)
        data = self.out.read(int(parts[2]))
        self.out.read(1)
        return parts[0].decode(), parts[1].decode(), data

    def get(self, names: list[str]) -> list[tuple[str, str, bytes] | None]:
        """The objects ``names`` (a few: they are written before anything is read)."""
        self.stdin.write("".join(f"{n}\n" for n in names).encode())
        self.stdin.flush()
        return [self._read() for _ in names]

    def stream(self, names: Iterable[str]) -> Iterator[tuple[str, str, bytes]]:
        """(sha, type, content) of every object of ``names`` git has, in order."""
        failed: list[BaseException] = []

        def feed() -> None:
            try:
                for name in names:
                    self.stdin.write(name.encode() + b"\n")
            except BaseException as exc:  # re-raised by the reader
                failed.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    self.stdin.write(f"{_END}\n".encode())
                    self.stdin.flush()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            while True:
                header = self.out.readline()
                if not header or header.startswith(_END.encode()):
                    break
                parts = header.split()
                if len(parts) != 3:
                    continue
                data = self.out.read(int(parts[2]))
                self.out.read(1)
                yield parts[0].decode(), parts[1].decode(), data
        finally:
            feeder.join()
        if failed:
            raise failed[0]
        if not header:
            raise GitError(["cat-file", "--batch"], self.proc.poll() or -1, "ended early")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        self.out.close()
        code = self.proc.wait()
        trace(["cat-file", "--batch"], self.cwd, code, self.started)

    def __enter__(self) -> CatFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batcher:
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


def path_findings(paths: Mapping[str, str], matcher: Matcher) -> list[Finding]:
    """Path names are content too (a file named after the key): ``paths`` maps object -> path."""
    found = []
    names_blob = "\n".join(paths.values()).encode("utf-8", "surrogateescape")
    for hit in matcher.spans(names_blob):
        line_start = names_blob.rfind(b"\n", 0, hit.start) + 1
        line_end = names_blob.find(b"\n", hit.start)
        line_end = len(names_blob) if line_end < 0 else line_end
        path = names_blob[line_start:line_end].decode("utf-8", "surrogateescape")
        found.append(Finding(None, "", hit.what, hit.fingerprint, hit.form, "path",
                             next((sha for sha, p in paths.items() if p == path), None)))
    return found


def _raw_entries(tokens: list[str]) -> Iterator[tuple[str, str]]:
    """(path, new blob sha) from ``-z`` raw diff output; skips deletions and submodules."""
    i = 0
    while i < len(tokens):
        tok = tokens[i].lstrip("\n")
        if tok.startswith(":"):
            _, new_mode, _, new_sha, status = tok[1:].split(" ")
            path = tokens[i + 1]
            i += 2
            if status.startswith("D") or new_mode == "160000" or _zero(new_sha):
                continue
            yield path, new_sha
        else:
            i += 1


# -- commit-msg ---------------------------------------------------------------------------------------
def scan_staged(cwd: str, matcher: Matcher, *, index_file: str | None = None) -> list[Finding]:
    """Staged blobs of added/modified paths (against HEAD, or everything in a first commit)."""
    env = {"GIT_INDEX_FILE": os.path.abspath(index_file)} if index_file else None
    args = ("diff-index", "--cached", "-z", "--no-renames", "--diff-filter=d")
    proc = run_git(cwd, *args, "HEAD", env=env)
    if proc.returncode != 0:  # no HEAD yet (or an unreadable one: then the empty tree must fail too)
        proc = run_git(cwd, *args, EMPTY_TREE, env=env)
    where: dict[str, str] = {}
    for path, sha in _raw_entries(_checked(proc).decode("utf-8", "surrogateescape").split("\0")):
        where.setdefault(sha, path)
    if not where:
        return []
    findings: list[Finding] = []
    with CatFile(cwd, env) as objects:
        for sha, _kind, data in objects.stream(where):
            findings += [Finding(None, where[sha], h.what, h.fingerprint, h.form) for h in matcher.firsts(data)]
    return findings


def scan_message(path: str, matcher: Matcher) -> list[Finding]:
    """The commit message git is about to use (what ``commit -v`` appends below the scissors
    line is git's own diff, not part of the message)."""
    with open(path, "rb") as fh:
        data = fh.read().split(SCISSORS, 1)[0]
    return [Finding(None, "", h.what, h.fingerprint, h.form, "message") for h in matcher.firsts(data)]


# -- pre-push -----------------------------------------------------------------------------------------
class PushScan(NamedTuple):
    commits: int
    objects: int
    findings: list[Finding]
    trusted_tags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class _Listing(NamedTuple):
    commits: list[str]
    blobs: dict[str, str]  # blob -> path
    introduced_by: dict[str, str]  # blob -> the commit whose diff names it
    decorated: bool  # a tag or a remote-tracking ref points at a listed commit


def _list_commits(cwd: str, revs: list[str]) -> _Listing:
    """The commits ``revs`` (``log --stdin`` lines) select and the blobs their first-parent
    diffs add, with the tags and remote-tracking refs among them noted."""
    proc = run_git(cwd, "log", "--stdin", "--ignore-missing", "-z", "--raw", "--no-renames", "--no-abbrev",
                   "--root", "--diff-merges=first-parent", "--no-show-signature", "--no-color",
                   "--decorate-refs=refs/tags/", "--decorate-refs=refs/remotes/", "--format=%H %D",
                   input="".join(f"{r}\n" for r in revs).encode())
    tokens = _checked(proc).decode("utf-8", "surrogateescape").split("\0")
    commits: list[str] = []
    blobs: dict[str, str] = {}
    introduced_by: dict[str, str] = {}
    decorated = False
    i = 0
    while i < len(tokens):
        tok = tokens[i].lstrip("\n")
        i += 1
        if not tok:
            continue
        if tok.startswith(":"):
            _, new_mode, _, new_sha, status = tok[1:].split(" ")
            path = tokens[i]
            i += 1
            if status.startswith("D") or new_mode == "160000" or _zero(new_sha):
                continue
            blobs.setdefault(new_sha, path)
            introduced_by[new_sha] = commits[-1]  # log lists newest first: the oldest wins
            continue
        sha, _, refs = tok.partition(" ")
        if not commits or commits[-1] != sha:
            commits.append(sha)
        decorated = decorated or bool(refs.strip())
    return _Listing(commits, blobs, introduced_by, decorated)


def _ls_remote(cwd: str, remote: str) -> list[str] | None:
    """The objects the remote's refs point at (one ``git ls-remote``); None when it cannot be listed."""
    proc = run_git(cwd, "ls-remote", "--", remote)
    if proc.returncode != 0:
        return None
    return sorted({line.split("\t", 1)[0] for line in proc.stdout.decode("utf-8", "replace").splitlines()
                   if "\t" in line})


def scan_push(cwd: str, remote: str | None, lines: Iterable[str], matcher: Matcher, *,
              upstream: bool = True) -> PushScan:
    """Scan what a push to ``remote`` (the hook's first argument: a name or a URL) sends, from
    git's pre-push stdin ``lines`` (``<local ref> <local sha> <remote ref> <remote sha>``).

    History the push may skip: what the remote has (git's old values of the pushed refs; when
    a pushed ref is new there or its old value is unknown here, everything ``git ls-remote``
    lists; when the remote cannot be listed, its remote-tracking refs stand in) and, with
    ``upstream``, upstream's own history as :func:`forkops.guard.upstream_exclusions` confirms
    it. Everything else a pushed object reaches is read."""
    tips: list[str] = []
    pushed_refs: set[str] = set()
    old: list[str] = []
    new_ref = False
    for line in lines:
        parts = line.split()
        if len(parts) != 4 or _zero(parts[1]):
            continue  # deleting a remote ref sends nothing
        tips.append(parts[1])
        pushed_refs.add(parts[0])
        if _zero(parts[3]):
            new_ref = True
        else:
            old.append(parts[3])
    if not tips:
        return PushScan(0, 0, [])
    findings: list[Finding] = []
    notes: list[str] = []
    with CatFile(cwd) as objects:
        # The tips first: tags are followed to what they point at; old values that git does
        # not have here cannot exclude anything, so the remote is asked what it has.
        known = [o for o in objects.get(old) if o is not None]
        commit_tips, blobs, trees, counted = _resolve_tips(objects, tips, matcher, findings)
        exclude = {sha for sha, _, _ in known}
        if new_ref or len(known) < len(old):
            listed = _ls_remote(cwd, remote) if remote is not None else None
            if listed is not None:
                exclude.update(listed)
            else:
                from forkops import guard  # rare: a remote git cannot list

                if remote is not None:
                    notes.append("could not list the remote's refs; its remote-tracking refs stand in for them")
                exclude.update(guard.tracking_refs_of(cwd, remote))
        revs = commit_tips + [f"^{sha}" for sha in sorted(exclude)]
        listing = _list_commits(cwd, revs) if commit_tips else _Listing([], {}, {}, False)
        trusted: tuple[str, ...] = ()
        if upstream and listing.decorated:
            from forkops import guard  # only when an upstream ref may vouch for some history

            more, trusted, tag_notes = guard.upstream_exclusions(cwd, commit_tips, exclude, pushed_refs)
            notes += tag_notes
            if more:
                listing = _list_commits(cwd, revs + [f"^{sha}" for sha in sorted(more)])
        for tree in trees:
            for path, sha in _tree_blobs(cwd, tree):
                blobs.setdefault(sha, path)
        blobs = {**listing.blobs, **blobs}

        def report(sha: str, kind: str, hit: Hit) -> None:
            if kind == "commit":
                findings.append(Finding(sha, "", hit.what, hit.fingerprint, hit.form, "commit", sha))
            else:
                findings.append(Finding(listing.introduced_by.get(sha), blobs.get(sha, ""), hit.what,
                                        hit.fingerprint, hit.form, "file", sha))

        batch = Batcher(matcher, report)
        count = counted
        for sha, kind, data in objects.stream([*listing.commits, *blobs]):
            count += 1
            batch.add(sha, kind, data)
        batch.flush()
    findings += path_findings(blobs, matcher)
    return PushScan(len(listing.commits), count, findings, trusted, tuple(notes))


def _resolve_tips(objects: CatFile, tips: list[str], matcher: Matcher,
                  findings: list[Finding]) -> tuple[list[str], dict[str, str], list[str], int]:
    """(commit tips, blobs -> path, trees, objects read) of the pushed objects: tags are scanned
    and followed (a tag of a tag, of a blob, of a tree) to what they point at."""
    commits: list[str] = []
    blobs: dict[str, str] = {}
    trees: list[str] = []
    pending, names, read = list(tips), dict.fromkeys(tips, ""), 0
    while pending:
        batch, pending = pending, []
        for got in objects.get(batch):
            if got is None:
                continue
            sha, kind, data = got
            read += 1
            if kind == "commit":
                commits.append(sha)
            elif kind == "tree":
                trees.append(sha)
            elif kind == "blob":
                blobs[sha] = names.get(sha, "")
                hit = matcher.first(data)
                if hit is not None:
                    findings.append(Finding(None, names.get(sha, ""), hit.what, hit.fingerprint, hit.form,
                                            "file", sha))
            elif kind == "tag":
                header = data.split(b"\n\n", 1)[0].decode("utf-8", "replace").splitlines()
                fields = dict(line.split(" ", 1) for line in header if " " in line)
                name = fields.get("tag", "")
                hit = matcher.first(data)
                if hit is not None:
                    findings.append(Finding(None, name, hit.what, hit.fingerprint, hit.form, "tag", sha))
                if "object" in fields:
                    names.setdefault(fields["object"], "")
                    pending.append(fields["object"])
    return commits, blobs, trees, read


def _tree_blobs(cwd: str, tree: str) -> Iterator[tuple[str, str]]:
    """(path, blob) of every file in ``tree`` (a pushed tree: rare, read whole)."""
    out = _checked(run_git(cwd, "ls-tree", "-r", "-z", "--full-tree", tree)).decode("utf-8", "surrogateescape")
    for entry in out.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob":
            yield path, parts[2]


# -- the hook entry point ---------------------------------------------------------------------------
def _say(line: str) -> None:
    print(f"forkops guard: {line}", file=sys.stderr)


def _refuse(action: str, findings: list[Finding], hint: str) -> int:
    for f in findings:
        _say(f.describe())
    _say(f"refusing the {action}: it contains the model key or IV ({len(findings)} object(s)); {hint}")
    return 1


def run_hook(hook: str, keys_path: str, args: list[str], stdin: IO[str]) -> int:
    """Run one hook in the current repository (git runs hooks at the worktree's top); the exit
    code git sees (0 allows)."""
    from forkops import keyfile

    try:
        material = keyfile.load(keys_path)
    except ForkopsError as exc:
        # Fail closed: without the key the guard cannot tell, so it refuses.
        _say(f"cannot read the keys file, so it refuses: {exc.message}"
             + (f" ({exc.hint})" if exc.hint else " (fix it, or bypass once with --no-verify)"))
        return 2
    matcher = Matcher(material)
    cwd = os.getcwd()
    staged_hint = ("unstage it (`git restore --staged PATH`) or put the committed values back "
                   "(`forkops set-key --clear`), then commit again")
    if hook == "pre-commit":  # installed by earlier versions
        findings = scan_staged(cwd, matcher, index_file=os.environ.get("GIT_INDEX_FILE"))
        return _refuse("commit", findings, staged_hint) if findings else 0
    if hook == "commit-msg":
        if not args:
            _say("commit-msg: git passed no message file, so it refuses")
            return 2
        findings = scan_staged(cwd, matcher, index_file=os.environ.get("GIT_INDEX_FILE"))
        if findings:
            return _refuse("commit", findings, staged_hint)
        findings = scan_message(args[0], matcher)
        return _refuse("commit", findings, "write the message without it") if findings else 0
    if hook == "pre-push":
        # git runs the hook as `pre-push <remote name or URL> <URL>`.
        result = scan_push(cwd, args[0] if args else None, stdin.read().splitlines(), matcher)
        for note in result.notes:
            _say(f"note: {note}")
        if result.findings:
            return _refuse("push", result.findings,
                           "rewrite those commits or tags without the key (e.g. `git rebase -i`), then push")
        if result.objects:
            skipped = (f" (history of upstream tag(s) {', '.join(result.trusted_tags)} skipped)"
                       if result.trusted_tags else "")
            _say(f"checked {result.commits} outgoing commit(s), {result.objects} object(s): no key{skipped}")
        return 0
    _say(f"unknown hook {hook!r}, so it refuses")
    return 2


def main(argv: list[str]) -> int:
    """``HOOK --keys FILE [--] [ARGS...]``: what the installed hook scripts run."""
    if len(argv) < 3 or argv[1] != "--keys":
        _say("usage: HOOK --keys FILE [-- ARGS]; reinstall the hooks with `forkops guard install`")
        return 2
    hook, keys_path, rest = argv[0], argv[2], argv[3:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        return run_hook(hook, keys_path, rest, sys.stdin)
    except ForkopsError as exc:
        _say(f"refusing: {exc.message}")
        return 2 if exc.exit_code == 2 else 3
