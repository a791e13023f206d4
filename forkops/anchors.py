"""Patch anchors (docs/SPEC.md section 4), evaluated on any tree-ish without a worktree.

An anchor says: the function defining ``symbol`` must contain ``must_contain``. The symbol is
located with ``git grep`` across the whole tree, so a moved file is found; the playbook's
``locations`` say which definition is the compiled one when several files define it (upstream
sometimes leaves the old copy behind, and a rebase then applies "cleanly" to a dead file).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.drift import tree_changes
from forkops.errors import GitError
from forkops.git import Repo
from forkops.playbook import Anchor, Playbook
from forkops.version import Version

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial


@dataclass(frozen=True)
class ForkChange:
    """A fork commit's change to a file where its anchor held (the diff masked: key sites and
    the key never shown)."""

    sha: str
    subject: str
    path: str
    diff: str

    def as_json(self) -> dict[str, str]:
        return {"sha": self.sha, "subject": self.subject, "path": self.path, "diff": self.diff}


@dataclass(frozen=True)
class AnchorResult:
    name: str
    ok: bool
    path: str | None  # the definition that counts (None when not found or ambiguous)
    defined_in: tuple[str, ...] = ()  # every file that defines the symbol
    patched_in: tuple[str, ...] = ()  # files whose definition satisfies must_contain
    expected: tuple[str, ...] = ()  # where the playbook says it lives for this version
    detail: str = ""
    # Set when the patch stayed behind in this file and a three-way merge re-applies it to
    # ``path`` cleanly (what `forkops upgrade` does); ``ok`` then describes the result after that.
    reapply_from: str | None = None
    # When it fails: the fork commits whose change to the anchored code is missing here.
    missing: tuple[ForkChange, ...] = ()

    @property
    def left_behind(self) -> tuple[str, ...]:
        """Files where the patch still sits although the live definition is elsewhere."""
        return tuple(p for p in self.patched_in if p != self.path)

    @property
    def dead_copies(self) -> tuple[str, ...]:
        """Patched copies that are not the live definition although the anchor holds (the
        live one is patched, or will be by re-applying): dead code worth a ``git rm``."""
        return self.left_behind if self.ok and self.path else ()

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "ok": self.ok, "path": self.path, "defined_in": list(self.defined_in),
            "patched_in": list(self.patched_in), "expected": list(self.expected), "detail": self.detail,
            "reapply_from": self.reapply_from, "dead_copies": list(self.dead_copies),
            "missing": [c.as_json() for c in self.missing],
        }


def function_body(text: str, start: int) -> str | None:
    """The brace-balanced block following offset ``start`` (the definition's match)."""
    open_at = text.find("{", start)
    semicolon = text.find(";", start)
    if open_at < 0 or (0 <= semicolon < open_at):
        return None  # a declaration, not a definition
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at : i + 1]
    return text[open_at:]


def body_in(text: str, anchor: Anchor) -> str | None:
    """The body of the first definition of the anchor's symbol in ``text``, or None."""
    for m in re.finditer(anchor.definition, text, re.MULTILINE):
        body = function_body(text, m.end())
        if body is not None:
            return body
    return None


def definitions(repo: Repo, treeish: str, anchor: Anchor) -> dict[str, str]:
    """path -> function body, for every file in ``treeish`` that defines the anchor's symbol."""
    found: dict[str, str] = {}
    paths = repo.grep_files(treeish, anchor.symbol, fixed=True)
    for path, blob in zip(paths, repo.read_blobs([f"{treeish}:{p}" for p in paths]), strict=True):
        body = None if blob is None else body_in(blob.decode("utf-8", "replace"), anchor)
        if body is not None:
            found[path] = body
    return found


def check(repo: Repo, treeish: str, anchor: Anchor, version: Version | None) -> AnchorResult:
    defs = definitions(repo, treeish, anchor)
    must = re.compile(anchor.must_contain, re.MULTILINE)
    patched = tuple(sorted(p for p, body in defs.items() if must.search(body)))
    expected = tuple(anchor.expected_paths(version)) if version is not None else ()
    defined = tuple(sorted(defs))

    def result(ok: bool, path: str | None, detail: str) -> AnchorResult:  # noqa: FBT001
        return AnchorResult(anchor.name, ok, path, defined, patched, expected, detail)

    if not defs:
        return result(False, None, f"{anchor.symbol} is not defined anywhere")
    live_candidates = [p for p in expected if p in defs] or (list(defined) if len(defined) == 1 else [])
    if not live_candidates:
        return result(False, None, f"{anchor.symbol} is defined in {', '.join(defined)}; "
                      f"the playbook names none of them for {version}")
    live = live_candidates[0]
    if live in patched:
        note = "" if not expected or live in expected else (
            f" (not where the playbook expects: {', '.join(expected)})")
        return result(True, live, f"{anchor.symbol} in {live} is patched{note}")
    if patched:
        return result(False, live, f"{anchor.symbol} now lives in {live}; "
                      f"the patch stayed behind in {', '.join(patched)}")
    return result(False, live, f"{anchor.symbol} in {live} does not match /{anchor.must_contain}/")


# A tree that differs from its reference in more files than this is grepped whole instead:
# reading that many changed blobs costs more than git grep's own (threaded) walk.
GREP_WHEN_CHANGED = 3000


@dataclass(frozen=True)
class Located:
    """Answers of ``git grep -l -F SYMBOL TREE`` and ``git cat-file blob TREE:PATH`` for
    many trees, computed together (see :func:`locate`)."""

    files: dict[tuple[str, str], list[str]]  # (tree, symbol) -> sorted paths containing it
    blobs: dict[tuple[str, str], bytes]  # (tree, path) -> content, for every path in files


def _grep_l(repo: Repo, tree: str, symbol: str) -> list[str]:
    proc = repo.run_raw("grep", "-l", "-F", "-e", symbol, tree, "--")
    if proc.returncode not in (0, 1):
        raise GitError(["grep", "-l", symbol, tree], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return [line.removeprefix(f"{tree}:") for line in proc.stdout.decode("utf-8", "replace").splitlines()]


def locate(repo: Repo, chain: list[tuple[str, str | None]], symbols: list[str], *,
           trees: Mapping[str, str] | None = None, parallel: bool = False) -> Located:
    """For each (tree, reference) of ``chain``, which files contain each symbol, exactly as
    ``git grep -l -F`` says, and their contents.

    A tree without a reference (or one that changed too much) is grepped; any other is
    derived from its reference, which must come earlier in ``chain``: its files unchanged
    since the reference keep their answer, and only the blobs that differ are read (one
    ``git diff-tree --stdin`` and one ``git cat-file --batch`` for the whole chain). So
    a chain of release tags, each the reference of the next and of its rebased result,
    costs one grep instead of one per tree. ``trees``: tree-ish -> tree, for those the caller
    knows (the others are resolved with one rev-parse). ``parallel``: the greps run while the
    changes are read (else one after the other: git calls in a fixed order)."""
    pairs = [(ref, tree) for tree, ref in chain if ref is not None]
    # diff-tree --stdin reads two commits on a line as "commit parent": give it trees.
    tree_of = dict(trees or {})
    names = [n for n in dict.fromkeys(x for pair in pairs for x in pair) if n not in tree_of]
    if names:
        tree_of.update(zip(names, repo.lines("rev-parse", *(f"{n}^{{tree}}" for n in names)), strict=True))
    roots = [tree for tree, ref in chain if ref is None]
    jobs = [(tree, symbol) for tree in roots for symbol in symbols]
    if parallel and jobs:
        with ThreadPoolExecutor(max_workers=len(jobs)) as background:
            # the trees without a reference are grepped while the others' changes are read
            grepped = {key: background.submit(_grep_l, repo, *key) for key in jobs}
            changes = tree_changes(repo, [(tree_of[a], tree_of[b]) for a, b in pairs])
            early = {key: sorted(f.result()) for key, f in grepped.items()}
    else:
        early = {key: sorted(_grep_l(repo, *key)) for key in jobs}
        changes = tree_changes(repo, [(tree_of[a], tree_of[b]) for a, b in pairs])
    changed_by_pair = dict(zip(pairs, changes, strict=True))
    derived: dict[str, dict[str, str | None]] = {}
    derived_from: dict[str, str] = {}
    for tree, ref in chain:
        if ref is not None and len(changed_by_pair[(ref, tree)]) <= GREP_WHEN_CHANGED:
            derived[tree], derived_from[tree] = changed_by_pair[(ref, tree)], ref
    # One read for the changed blobs and the grepped trees' files; a derived tree's file is its
    # changed blob or, unchanged, its reference's.
    changed_blobs = sorted({b for ch in derived.values() for b in ch.values() if b})
    root_files = sorted({(t, p) for (t, _s), paths in early.items() for p in paths})
    data = repo.read_blobs([*changed_blobs, *(f"{t}:{p}" for t, p in root_files)])
    contents = dict(zip(changed_blobs, data, strict=False))
    blobs = {key: d for key, d in zip(root_files, data[len(changed_blobs):], strict=True) if d is not None}
    files: dict[tuple[str, str], list[str]] = {}
    for tree, ref in chain:
        for symbol in symbols:
            if tree not in derived or ref is None:
                grepped_early = early.get((tree, symbol))
                files[(tree, symbol)] = grepped_early if grepped_early is not None else sorted(
                    _grep_l(repo, tree, symbol))
                continue
            changed = derived[tree]
            needle = symbol.encode()
            kept = {p for p in files[(ref, symbol)] if p not in changed}
            kept.update(p for p, b in changed.items() if b and needle in (contents.get(b) or b""))
            files[(tree, symbol)] = sorted(kept)
    unread = []
    for tree in dict.fromkeys(tree for tree, _ref in chain):  # a reference comes before its derived trees
        for path in sorted({p for symbol in symbols for p in files[(tree, symbol)]}):
            if (tree, path) in blobs:
                continue
            if tree in derived:
                changed = derived[tree]
                content = (contents.get(changed[path] or "") if path in changed
                           else blobs.get((derived_from[tree], path)))
                if content is not None:
                    blobs[(tree, path)] = content
                    continue
            unread.append((tree, path))
    for key, d in zip(unread, repo.read_blobs([f"{t}:{p}" for t, p in unread]), strict=True):
        if d is not None:
            blobs[key] = d
    return Located(files, blobs)


def check_all(repo: Repo, treeish: str, anchors: tuple[Anchor, ...], version: Version | None) -> list[AnchorResult]:
    return [check(repo, treeish, a, version) for a in anchors]


@dataclass(frozen=True)
class Reapplied:
    """The fork's change to the file it stayed behind in (``old``), three-way merged into
    the live file: ``merged`` is the result, with conflict markers when ``conflicts`` > 0
    (what a person resolves); None with ``why`` when there is nothing to merge."""

    old: str
    merged: bytes | None
    conflicts: int = 0
    why: str = ""


def merge_into_live(repo: Repo, res: AnchorResult, *, base: str, start: str, live: str) -> Reapplied:
    """Three-way merge the fork's change to the old file (``base``..``start``) into the file
    where the symbol lives now in tree-ish ``live`` (``git merge-file``; conflict markers
    labelled with the three files). Writes nothing into the repository."""
    old = res.left_behind[0] if res.left_behind else ""
    if res.path is None or not res.left_behind:
        return Reapplied(old, None, why="nothing was left behind")
    before, after, current = repo.read_blobs([f"{base}:{old}", f"{start}:{old}", f"{live}:{res.path}"])
    if before is None or after is None or before == after or current is None:
        return Reapplied(old, None, why=f"the fork's patch stack has no change to {old} to re-apply")
    with tempfile.TemporaryDirectory(prefix="forkops-reapply-") as tmp:
        files = []
        for name, data in (("current", current), ("base", before), ("fork", after)):
            (Path(tmp) / name).write_bytes(data)
            files.append(str(Path(tmp) / name))
        proc = repo.run_raw("merge-file", "-p", "-L", res.path, "-L", f"{old} before the patches",
                            "-L", f"{old} with the patches", *files)
    if proc.returncode < 0 or proc.returncode >= 128:
        return Reapplied(old, None, why=f"git merge-file failed on {res.path}")
    if proc.returncode > 0:
        return Reapplied(old, proc.stdout, proc.returncode,
                         f"the fork's change to {old} does not apply to {res.path} "
                         f"({proc.returncode} conflicting hunks)")
    return Reapplied(old, proc.stdout)


def retarget(repo: Repo, res: AnchorResult, *, base: str, start: str, live: str) -> tuple[bytes | None, str]:
    """Re-apply a patch that stayed behind (:func:`merge_into_live`): (merged content, "")
    when it merges cleanly, else (None, why not). Writes nothing into the repository."""
    done = merge_into_live(repo, res, base=base, start=start, live=live)
    return (done.merged, "") if done.merged is not None and not done.conflicts else (None, done.why)


def fork_changes(repo: Repo, pb: Playbook, anchor: Anchor, *, base: str, start: str,
                 version: Version | None, material: KeyMaterial | None = None) -> tuple[ForkChange, ...]:
    """The fork commits of ``base..start`` that changed the files where ``anchor`` holds at
    ``start`` (the change a failed anchor is missing), oldest first, each with its diff of
    that file masked (``forkops.secrets.mask_secrets``, also every line holding the
    key of ``material``; cut at 4,000 characters after masking, so a key site's value is never
    half shown)."""
    from forkops.secrets import mask_secrets

    at_start = check(repo, start, anchor, version)
    paths = list(at_start.patched_in)
    if not paths:
        return ()
    out = []
    for row in repo.lines("log", "--reverse", "--format=%H%x00%s", f"{base}..{start}", "--", *paths):
        sha, subject = row.split("\0", 1)
        for path in repo.lines("diff-tree", "-r", "--no-commit-id", "--name-only", sha, "--", *paths):
            diff = repo.run("show", "--format=", "--no-color", "--no-ext-diff", sha, "--", path)
            out.append(ForkChange(sha, subject, path, mask_secrets(diff, pb, material)[:4000]))
    return tuple(out)


def with_reapply(repo: Repo, res: AnchorResult, anchor: Anchor, *, base: str, start: str,
                 live: str) -> AnchorResult:
    """For a failed anchor whose patch stayed behind: the result after re-applying it (what
    `forkops upgrade` will do), or ``res`` with the reason it cannot be re-applied."""
    if res.ok or res.path is None or not res.left_behind:
        return res
    merged, why = retarget(repo, res, base=base, start=start, live=live)
    if merged is None:
        return replace(res, detail=f"{res.detail}; re-applying fails: {why}")
    body = body_in(merged.decode("utf-8", "replace"), anchor)
    if body is None or not re.search(anchor.must_contain, body, re.MULTILINE):
        return replace(res, detail=f"{res.detail}; re-applying does not make it match /{anchor.must_contain}/")
    old = res.left_behind[0]
    return replace(res, ok=True, reapply_from=old,
                   detail=f"{anchor.symbol} now lives in {res.path}; `forkops upgrade` re-applies the patch "
                          f"from {old} there cleanly")


def forget_dropping_resolutions(repo: Repo, anchor: Anchor) -> list[str]:
    """Delete git's recorded resolutions (rerere's ``rr-cache``) that resolve a conflict in the
    anchor's function by dropping the patch: the conflict (preimage) defines the symbol, the
    recorded resolution (postimage) defines it without ``must_contain``. rerere would offer
    that resolution again at the next upgrade; a person who took upstream's side once should
    not be handed the same loss silently. Returns the entries removed (their ids)."""
    import shutil

    cache = Path(repo.run("rev-parse", "--git-path", "rr-cache").strip())
    if not cache.is_absolute():
        cache = repo.path / cache
    if not cache.is_dir():
        return []
    must = re.compile(anchor.must_contain, re.MULTILINE)
    removed = []
    for entry in sorted(p for p in cache.iterdir() if p.is_dir()):
        pre = entry / "preimage"
        if not pre.is_file() or anchor.symbol not in pre.read_text("utf-8", "replace"):
            continue
        for post in entry.glob("postimage*"):
            body = body_in(post.read_text("utf-8", "replace"), anchor)
            if body is not None and not must.search(body):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
                break
    return removed
