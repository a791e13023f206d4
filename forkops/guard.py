"""The commit/push guard (SPEC section 6): the key never reaches a commit or a push.

``forkops set-key`` installs ``pre-commit`` and ``pre-push`` hooks in every fork clone. They
run ``<the installing python> -P -m forkops guard hook NAME --keys PATH``: the hook knows only
the keys file's *path* and reads the key itself, so the key is never on a command line.

What counts as a leak: a blob that contains the key (always) or the IV (only when it is not
the fork's public default sixteen '7' bytes, which upstream code and docs carry; flagging it
would block ordinary upstream history) in any supported encoding:

* the raw bytes (a C string literal, a Bazel define, keys.toml itself), case-sensitive;
* hex digits (``key_hex``, ``openssl -K``), case-insensitive;
* C ``\\xNN`` escapes, case-insensitive;
* a C byte array ``0x8b, 0x8b, ...`` (or decimal elements), case-insensitive, with any
  whitespace or line breaks between elements.

Whole blobs are scanned, not diff lines, so an array split over lines is still seen, and a
file that already holds the key cannot be committed again without it being noticed.

Which content is scanned: ``pre-commit`` the staged blob of every added or modified path (the
index git is committing, ``$GIT_INDEX_FILE`` included, so ``git commit -a`` and
``git commit PATH`` are covered); ``pre-push`` every blob introduced by an outgoing commit.

Which history a push may skip (it is already published, or it is upstream's):

* commits reachable from the remote-tracking refs of the remote being pushed to
  (``refs/remotes/<remote>/*``; a push to a bare URL uses the remotes with that URL) and from
  the remote's old values of the pushed refs (git's pre-push stdin);
* commits reachable from the upstream remote's tracking refs (``refs/remotes/tf/*``) and from
  *confirmed* upstream release tags: a local tag whose name matches the playbook's upstream tag
  pattern and which ``git ls-remote`` of the workspace's upstream URL reports with the same
  commit. Upstream content never holds the private key, and skipping it keeps the push of a
  new fork branch (rebased onto a new release tag) from reading all of upstream's history.

Nothing else hides history: not a local-only tag (``git tag wip`` on a leak must not let it
through), not a tag named like a release that upstream does not have at that commit, not the
tracking refs of other remotes. Outside a workspace (no playbook) only the first rule applies;
when upstream cannot be listed the tags are simply not trusted (slower, never less safe).
Upstream is asked only about release tags that would actually hide outgoing history.
``forkops guard scan`` reads everything.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from forkops.errors import BadInput, ForkopsError, GitError
from forkops.git import Repo
from forkops.keyfile import DEFAULT_IV, KeyMaterial, fingerprint
from forkops.playbook import Playbook

HOOKS = ("pre-commit", "pre-push")
MARKER = "# forkops-guard:"
CHAINED_SUFFIX = ".forkops-chained"
_ZERO = re.compile(r"0+")
# rev-list options `guard scan` accepts besides revisions: they only select refs.
SCAN_OPTIONS = ("--all", "--branches", "--tags", "--remotes", "--glob")
_WHITESPACE = b" \t\r\n\f\v"


# -- matching -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Needle:
    what: str  # "key" | "iv"
    fingerprint: str
    raw: bytes
    hex: bytes  # lowercase hex digits
    escaped: bytes  # \xNN\xNN... lowercase
    array: re.Pattern[bytes]  # on squeeze()d text: lowercased, whitespace runs made one space


def squeeze(data: bytes) -> tuple[bytes, list[int]]:
    """``data`` lowercased with every whitespace run made one space, and for each byte of the
    result its offset in ``data`` (so a match can be mapped back, e.g. for redaction)."""
    out, where = bytearray(), []
    for i, c in enumerate(data.lower()):
        if c in _WHITESPACE:
            if out and out[-1] == 0x20:
                continue
            c = 0x20
        out.append(c)
        where.append(i)
    return bytes(out), where


def _needle(what: str, secret: bytes) -> _Needle:
    # Elements may be hex (0x8b, 0X08) or decimal (139), separated by commas and any whitespace
    # (squeezed to one space); a word or a brace may stand right before the array.
    elements = [rb"(?:0x0*" + f"{b:x}".encode() + rb"|" + str(b).encode() + rb")" for b in secret]
    array = re.compile(rb"(?<![0-9a-z_])" + rb" ?, ?".join(elements) + rb"(?![0-9a-z_])")
    return _Needle(what, fingerprint(secret), secret, secret.hex().encode(),
                   b"".join(b"\\x" + f"{b:02x}".encode() for b in secret), array)


class Matcher:
    """Finds the key (and a non-default IV) in content; reports forms, never the value."""

    def __init__(self, material: KeyMaterial) -> None:
        self.needles = [_needle("key", material.key)]
        if material.iv != DEFAULT_IV:
            self.needles.append(_needle("iv", material.iv))

    def find(self, data: bytes) -> list[tuple[str, str]]:
        """(what, form) for each secret found in ``data``: what is 'key'/'iv'."""
        hits: list[tuple[str, str]] = []
        norm: bytes | None = None
        for n in self.needles:
            if n.raw in data:
                hits.append((n.what, "text"))
                continue
            if norm is None:
                norm = data.lower().translate(None, _WHITESPACE)
            if n.hex in norm:
                hits.append((n.what, "hex"))
            elif n.escaped in norm:
                hits.append((n.what, "C \\x escapes"))
            elif n.array.search(squeeze(data)[0]):
                hits.append((n.what, "C byte array"))
        return hits


@dataclass(frozen=True)
class Finding:
    """A secret found in a blob: where, which secret (by fingerprint), in what form."""

    commit: str | None  # None: the staged content of the index
    path: str
    what: str  # "key" | "iv"
    fingerprint: str
    form: str

    def describe(self) -> str:
        where = f"commit {self.commit[:12]} " if self.commit else "staged "
        return f"{where}{self.path}: the {self.what} ({self.fingerprint}) as {self.form}"

    def as_json(self) -> dict[str, object]:
        return {"commit": self.commit, "path": self.path, "what": self.what,
                "fingerprint": self.fingerprint, "form": self.form}


def _read_blobs(repo: Repo, shas: list[str], chunk: int = 500) -> Iterator[tuple[str, bytes]]:
    """(sha, content) for each blob, one ``git cat-file --batch`` per chunk (bounded memory)."""
    for i in range(0, len(shas), chunk):
        part = shas[i:i + chunk]
        for sha, data in zip(part, repo.read_blobs(part), strict=True):
            if data is not None:
                yield sha, data


def _scan(repo: Repo, entries: list[tuple[str | None, str, str]], matcher: Matcher) -> list[Finding]:
    """entries: (commit, path, blob sha), first introduction first; each blob is read once."""
    first: dict[str, tuple[str | None, str]] = {}
    for commit, path, blob in entries:
        first.setdefault(blob, (commit, path))
    findings = []
    for blob, data in _read_blobs(repo, list(first)):
        commit, path = first[blob]
        for what, form in matcher.find(data):
            fp = next(n.fingerprint for n in matcher.needles if n.what == what)
            findings.append(Finding(commit, path, what, fp, form))
    return findings


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
    base = repo.rev_parse("HEAD^{commit}") or repo.run(
        "hash-object", "-t", "tree", "--stdin", input=b"").strip()
    out = repo.run("diff-index", "--cached", "-z", "--no-renames", "--diff-filter=d", base, env=env)
    entries: list[tuple[str | None, str, str]] = [(None, path, sha) for path, sha in _raw_entries(out.split("\0"))]
    return _scan(repo, entries, matcher)


def scan_commits(repo: Repo, revs: list[str], matcher: Matcher) -> tuple[int, list[Finding]]:
    """Blobs introduced by each commit ``git rev-list`` lists for ``revs`` (one per line, as
    given to ``rev-list --stdin``: ``SHA``, ``^SHA``, ``A..B``; or one of the ref-selecting
    options in ``SCAN_OPTIONS`` such as ``--all``). Returns (commits, findings)."""
    opts = [r for r in revs if r.startswith("--")]
    bad = [o for o in opts if o.split("=", 1)[0] not in SCAN_OPTIONS]
    if bad:
        raise BadInput(f"unsupported option {bad[0]!r} (use revisions, ranges or {', '.join(SCAN_OPTIONS)})")
    lines = "".join(f"{r}\n" for r in revs if not r.startswith("--"))
    try:
        listed = repo.run("rev-list", "--reverse", *opts, "--stdin", input=lines)
    except GitError as exc:
        raise BadInput(f"not a revision range git understands: {' '.join(revs)}",
                       hint=exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else None) from None
    commits = listed.split()
    if not commits:
        return 0, []
    out = repo.run("diff-tree", "--stdin", "-r", "--root", "-m", "--no-renames", "-z",
                   input="".join(f"{c}\n" for c in commits))
    entries: list[tuple[str | None, str, str]] = []
    commit = ""
    tokens = out.split("\0")
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith(":"):
            for path, sha in _raw_entries(tokens[i:i + 2]):
                entries.append((commit, path, sha))
            i += 2
        else:
            if tok:
                commit = tok.split()[0]
            i += 1
    return len(commits), _scan(repo, entries, matcher)


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


def outgoing(repo: Repo, push_lines: Iterable[str], *, remote: str | None,
             upstream: Upstream | None) -> Outgoing:
    """What a push to ``remote`` (the hook's first argument) sends, from git's pre-push stdin
    lines ``<local ref> <local sha> <remote ref> <remote sha>``. See the module docstring for
    which history counts as published; everything else reachable from a pushed sha is sent."""
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
        if not _ZERO.fullmatch(remote_sha) and repo.ok("cat-file", "-e", f"{remote_sha}^{{commit}}"):
            exclude.add(remote_sha)
    if not include:
        return Outgoing([])
    names, targets = _remote_names(repo, remote)
    for name in targets:
        exclude.update(_tracking_refs(repo, name, names))
    if upstream is not None and upstream.playbook.upstream_remote in names:
        exclude.update(_tracking_refs(repo, upstream.playbook.upstream_remote, names))
    trusted, notes = _trusted_tags(repo, include, exclude, pushed, upstream)
    exclude.update(trusted.values())
    return Outgoing(include + [f"^{sha}" for sha in sorted(exclude)], tuple(sorted(trusted)), notes)


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


def hooks_dir(repo: Repo) -> Path:
    """Where git looks for hooks (``core.hooksPath`` honoured), absolute."""
    p = Path(repo.run("rev-parse", "--git-path", "hooks").strip())
    return p if p.is_absolute() else (repo.path / p)


def hook_script(hook: str, keys_path: Path, python: str) -> str:
    run = (f"{shlex.quote(python)} -P -m forkops guard hook {hook} "
           f"--keys {shlex.quote(str(keys_path))} -- \"$@\"")
    lines = [
        "#!/bin/sh",
        f"{MARKER} installed by `forkops set-key`; re-run it to update this file.",
        "# Refuses a commit or push whose content holds the model key (or a non-default IV).",
        f"# A hook that was here before was moved to {hook}{CHAINED_SUFFIX}; it runs first and its",
        "# failure still blocks. The key is read from the keys file, never passed on a command line.",
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


def install_hooks(repo_path: Path, keys_path: Path, *, python: str | None = None) -> list[HookInstall]:
    """Install the guard hooks, chaining (never clobbering) a hook already there. Idempotent."""
    repo = Repo(repo_path)
    directory = hooks_dir(repo)
    directory.mkdir(parents=True, exist_ok=True)
    results = []
    for hook in HOOKS:
        path = directory / hook
        chained = directory / f"{hook}{CHAINED_SUFFIX}"
        script = hook_script(hook, keys_path.resolve(), python or sys.executable)
        if path.exists() or path.is_symlink():
            if is_ours(path):
                action = "unchanged" if path.read_text() == script else "updated"
            else:
                if chained.exists() or chained.is_symlink():
                    raise BadInput(f"{path}: an existing hook is in the way and {chained.name} is taken; "
                                   "merge them by hand, then re-run `forkops set-key`")
                os.replace(path, chained)  # keeps its mode: it still runs only if it was executable
                action = "installed"
        else:
            action = "installed"
        if action != "unchanged":
            tmp = path.with_name(f".{hook}.forkops.tmp")
            tmp.write_text(script)
            tmp.chmod(0o755)
            os.replace(tmp, path)
        results.append(HookInstall(hook, path, action,
                                   chained if chained.exists() or chained.is_symlink() else None))
    return results


def installed(repo_path: Path) -> dict[str, bool]:
    """Which guard hooks are in place and executable."""
    directory = hooks_dir(Repo(repo_path))
    return {h: is_ours(directory / h) and bool((directory / h).stat().st_mode & stat.S_IXUSR)
            for h in HOOKS}
