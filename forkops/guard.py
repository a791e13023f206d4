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

import os
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.errors import BadInput, ForkopsError, GitError
from forkops.fsutil import write_atomic
from forkops.git import Repo
from forkops.gitenv import git_env
from forkops.guard_hook import Batcher, CatFile, Finding, path_findings
from forkops.secrets import Hit, Matcher

if TYPE_CHECKING:
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
_PROGRESS_EVERY = 5000  # objects


@dataclass(frozen=True)
class ScanResult:
    commits: int
    objects: int
    findings: tuple[Finding, ...]


# -- reading objects ----------------------------------------------------------------------------------
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
    # The objects themselves, not what replacement refs (`git replace`) would show instead.
    repo = Repo(repo.path, env={**repo.extra_env, "GIT_NO_REPLACE_OBJECTS": "1"})
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

    batch = Batcher(matcher, report)
    with CatFile(str(repo.path), repo.extra_env) as objects:
        for sha, kind, data in objects.stream(names()):
            counts[0] += 1
            if kind in ("blob", "commit", "tag"):
                batch.add(sha, kind, data)
            if progress is not None and counts[0] % _PROGRESS_EVERY == 0:
                progress(counts[0], counts[1])
    batch.flush()
    found += path_findings(paths, matcher)
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


def scan_staged(repo: Repo, matcher: Matcher, *, index_file: str | None = None) -> list[Finding]:
    """Staged blobs of added/modified paths (:func:`forkops.guard_hook.scan_staged`)."""
    from forkops import guard_hook

    return guard_hook.scan_staged(str(repo.path), matcher, index_file=index_file)


# -- what a push may skip (the pre-push hook asks only when it needs to) ------------------------------
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


def tracking_refs_of(cwd: str, remote: str | None) -> list[str]:
    """What stands in for a remote that cannot be listed: the commits of its remote-tracking
    refs (for a push to a bare URL, of the configured remotes with that URL)."""
    repo = Repo(Path(cwd))
    names, targets = _remote_names(repo, remote)
    return [sha for name in targets for sha in _tracking_refs(repo, name, names)]


def upstream_exclusions(cwd: str, include: list[str], exclude: set[str],
                        pushed: set[str]) -> tuple[set[str], tuple[str, ...], tuple[str, ...]]:
    """(more commits a push may skip, the upstream tags trusted, notes) for a push of
    ``include`` minus ``exclude`` from the clone at ``cwd``: upstream's history, as the
    upstream remote's tracking refs (``refs/remotes/tf/*``) and *confirmed* upstream release
    tags reach it. Nothing outside a forkops workspace whose playbook loads."""
    repo = Repo(Path(cwd))
    upstream = upstream_of(repo.path)
    if upstream is None:
        return set(), (), ()
    names = repo.lines("remote")
    more: set[str] = set()
    if upstream.playbook.upstream_remote in names:
        more.update(_tracking_refs(repo, upstream.playbook.upstream_remote, names))
    trusted, notes = _trusted_tags(repo, include, exclude | more, pushed, upstream)
    more.update(trusted.values())
    return more - exclude, tuple(sorted(trusted)), notes


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


# The hook's Python program. With -I, PYTHONPATH and user site-packages are ignored, so no other
# copy of forkops can stand in; forkops' folder (maybe a whole site-packages) goes after the
# standard library, so nothing in it can shadow a standard module either. A forkops that is gone
# is one line, not a traceback.
_ENTRY = """import sys
sys.path.append(sys.argv.pop(1))
try:
    from forkops.guard_hook import main
except ImportError as e:
    sys.exit("forkops guard: refusing: cannot import forkops (%s); reinstall the hook with "
             "forkops guard install (or bypass once with --no-verify)" % e)
sys.exit(main(sys.argv[1:]))"""


def hook_script(hook: str, keys_path: Path, python: str, package_root: Path) -> str:
    """The hook: fails closed when ``python`` is gone. Python runs isolated (``-I``: no
    environment variables, no user site) and without site-packages (``-S``): the hook path
    needs the standard library and forkops only. No helper process but Python itself (and
    ``cat`` when a chained pre-push hook needs git's input too)."""
    run = (f'"$python" -I -S -c "$entry" {shlex.quote(str(package_root))} {hook} '
           f'--keys {shlex.quote(str(keys_path))} -- "$@"')
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
        f'chained="${{0%/*}}/{hook}{CHAINED_SUFFIX}"',
        f"entry={shlex.quote(_ENTRY)}",
    ]
    if hook == "pre-push":
        # git feeds the pushed refs on stdin; a chained hook needs them too.
        lines += [
            'if [ -x "$chained" ]; then',
            "  input=$(cat)",
            "  feed() { if [ -n \"$input\" ]; then printf '%s\\n' \"$input\"; fi; }",
            '  feed | "$chained" "$@" || exit $?',
            f"  feed | {run}",
            "  exit $?",
            "fi",
        ]
    else:
        lines += ['if [ -x "$chained" ]; then "$chained" "$@" || exit $?; fi']
    lines.append(f"exec {run}")
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


if __name__ == "__main__":  # hooks installed before forkops.guard_hook existed run `-m forkops.guard`
    from forkops.guard_hook import main

    sys.exit(main(sys.argv[1:]))
