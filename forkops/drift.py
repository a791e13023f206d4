"""API drift: the fork's own lines use a name that upstream has removed from its whole tree.

A rebase can be clean and every anchor hold while the result no longer compiles: the fork's
patch calls ``Status::OK()``, which upstream deleted in the meantime. For a rebased tree
(``tip_tree``, the simulated or real result on upstream's ``tag``) drift is every use, in a
line the fork's patches added or kept (the ``+`` lines of ``git diff TAG tip_tree``), of an
identifier that

* upstream's tree at ``base`` (the tag the stack was cut from) contains, and
* upstream's whole tree at ``tag`` does not contain any more.

So names the patch brings itself (absent at ``base``, or declared in the fork's lines),
``std::`` names and APIs upstream still has never count. Only files of the playbook's
``[drift]`` scope (paths, languages: C/C++ and Starlark) are read.

Identifiers: a qualified name ``a::b::c`` counts as its last two parts (``b::c``, so
``::tensorflow::Status::OK`` and ``Status::OK`` are the same API); a plain name as itself.
"Contains" means a word-bounded occurrence anywhere (code, comments, any file type), as
``git grep -w`` sees it. Comments and string literals of the fork's lines are not read.

Cost (a 35,000-file tree, 30 tags): one ``git grep`` over the base tree for the candidate
names; one ``git diff-tree --stdin`` for every tag's changes since base; a name whose every
file at base is unchanged at ``tag`` is present without looking further, so only the blobs
upstream changed are read (``git cat-file --batch``, each blob once), and only for names
whose every base file changed. No worktree, nothing written.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

from forkops.errors import GitError
from forkops.git import Repo
from forkops.playbook import DriftSpec, Playbook

# `git log -S` (the commit that removed a name) looks only at the files that used the name at
# base, and not at all for a name that more files used (its history is too long to diff).
REMOVED_BY_MAX_PATHS = 200

_CPP_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx", ".inc", ".cu", ".ipp", ".tcc")
_STARLARK_NAMES = ("BUILD", "BUILD.bazel", "WORKSPACE", "WORKSPACE.bazel", "WORKSPACE.bzlmod", "MODULE.bazel")
_STARLARK_SUFFIXES = (".bzl", ".star", ".bazel", ".sky")

_CPP_KEYWORDS = """
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
co_return co_yield decltype default define defined delete do double dynamic_cast elif else endif
enum error explicit export extern false final float for friend goto if ifdef ifndef import include
inline int long mutable namespace new noexcept not not_eq nullptr operator or or_eq override
pragma private protected public register reinterpret_cast requires return short signed sizeof
static static_assert static_cast struct switch template this thread_local throw true try typedef
typeid typename undef union unsigned using virtual void volatile wchar_t while xor xor_eq
size_t ssize_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t NULL
"""
_CPP_WORDS = frozenset(_CPP_KEYWORDS.split())
_STARLARK_KEYWORDS = """
and as assert break class continue def del elif else except False finally for from global if
import in is lambda load None nonlocal not or pass raise return True try while with yield
"""
_STARLARK_WORDS = frozenset(_STARLARK_KEYWORDS.split())

_NAME = re.compile(r"(?<![\w:])(?:::)?([A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)")
_TEXT_TOKEN = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*")
_CPP_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_PY_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_CPP_DECL = re.compile(
    r"(?:\b(?:class|struct|enum|union|namespace|typedef|using)\s+(?:class\s+)?([A-Za-z_]\w*))"
    r"|(?:#\s*define\s+([A-Za-z_]\w*))"
    r"|(?:[\w>\]]\s*[\*&]*\s+[\*&]*([A-Za-z_]\w*)\s*(?=[;=\[\({,)]))")
_CPP_NOT_TYPES = frozenset({"return", "new", "delete", "throw", "case", "else", "goto", "co_return",
                            "co_yield", "co_await", "sizeof", "typeid", "decltype", "not", "and", "or"})
_STARLARK_DECL = re.compile(r"^\s*def\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*=(?!=)")
_STARLARK_KWARG = re.compile(r"\b([A-Za-z_]\w*)\s*=(?!=)")


@dataclass(frozen=True)
class Removal:
    """The upstream commit after which a name is gone (the last one that changed its count)."""

    sha: str
    subject: str

    def as_json(self) -> dict[str, str]:
        return {"sha": self.sha, "subject": self.subject}


@dataclass(frozen=True)
class Drift:
    """One use of a removed upstream name in a line of the fork (path and 1-based line in the
    rebased tree)."""

    identifier: str
    path: str
    line: int
    removed_by: Removal | None = None

    def as_json(self) -> dict[str, object]:
        return {"identifier": self.identifier, "path": self.path, "line": self.line,
                "removed_by": self.removed_by.sha if self.removed_by else None,
                "removed_by_subject": self.removed_by.subject if self.removed_by else None}

    def describe(self) -> str:
        why = (f"removed by {self.removed_by.sha[:10]} {self.removed_by.subject}" if self.removed_by
               else "removed upstream")
        return f"{self.path}:{self.line}: {self.identifier} ({why})"


# ---------------------------------------------------------------------------------------
# Scope and tokens
# ---------------------------------------------------------------------------------------
def language_of(path: str) -> str | None:
    """``c++``, ``starlark`` or None (not read)."""
    name = PurePosixPath(path).name
    if name in _STARLARK_NAMES or name.endswith(_STARLARK_SUFFIXES):
        return "starlark"
    if name.endswith(_CPP_SUFFIXES):
        return "c++"
    return None


def in_scope(spec: DriftSpec, path: str) -> bool:
    lang = language_of(path)
    if lang is None or lang not in spec.languages:
        return False
    return any(path.startswith(p) if p.endswith("/") else fnmatch.fnmatchcase(path, p) for p in spec.paths)


def _key(qualified: str) -> str:
    parts = qualified.split("::")
    return "::".join(parts[-2:])


class _Lines:
    """Strips comments and string literals of one file's added lines, in order (a block
    comment may span lines)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.in_block = False

    def code(self, line: str) -> str:
        if self.lang == "starlark":
            return _PY_STRINGS.sub('""', line).split("#", 1)[0]
        out: list[str] = []
        rest = _CPP_STRINGS.sub('""', line)
        while rest:
            if self.in_block:
                end = rest.find("*/")
                if end < 0:
                    return "".join(out)
                rest, self.in_block = rest[end + 2:], False
                continue
            line_comment, block = rest.find("//"), rest.find("/*")
            if line_comment >= 0 and (block < 0 or line_comment < block):
                out.append(rest[:line_comment])
                break
            if block >= 0:
                out.append(rest[:block])
                rest, self.in_block = rest[block + 2:], True
                continue
            out.append(rest)
            break
        text = "".join(out)
        return "" if text.lstrip().startswith("#include") else text


def uses(lang: str, code: str) -> list[str]:
    """The identifiers a line of code uses (qualified names as their last two parts; std::
    names and the language's keywords left out)."""
    words = _STARLARK_WORDS if lang == "starlark" else _CPP_WORDS
    kwargs = {m.group(1) for m in _STARLARK_KWARG.finditer(code)} if lang == "starlark" else set()
    found = []
    for m in _NAME.finditer(code):
        name = m.group(1)
        if name.startswith("std::") or m.group(0).startswith("::std::"):
            continue
        if "::" not in name and (name in words or name in kwargs):
            continue
        found.append(_key(name))
    return found


def declares(lang: str, code: str) -> set[str]:
    """Names a line of code declares (so a use of them is the fork's own name)."""
    if lang == "starlark":
        return {g for m in _STARLARK_DECL.finditer(code) for g in m.groups() if g}
    names = set()
    for m in _CPP_DECL.finditer(code):
        name = m.group(1) or m.group(2) or m.group(3)
        if m.group(3):
            before = code[:m.start(3)].split()
            if before and before[-1].strip("*&") in _CPP_NOT_TYPES:
                continue
        names.add(name)
    return names


def names_in(text: str, wanted: set[str] | frozenset[str]) -> set[str]:
    """Which of ``wanted`` occur word-bounded in ``text`` (also inside a longer qualified
    name: ``a::Status::OK`` contains ``Status::OK``, ``Status`` and ``OK``)."""
    found: set[str] = set()
    # A name that occurs as a token occurs as a substring: most files hold none of the names,
    # and a substring search is far cheaper than tokenizing them.
    wanted = {w for w in wanted if w in text}
    if not wanted:
        return found
    for m in _TEXT_TOKEN.finditer(text):
        parts = m.group(0).split("::")
        for i, part in enumerate(parts):
            if part in wanted:
                found.add(part)
            if i + 1 < len(parts) and (pair := f"{part}::{parts[i + 1]}") in wanted:
                found.add(pair)
    return found


# ---------------------------------------------------------------------------------------
# The fork's lines in a rebased tree
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Use:
    identifier: str
    path: str
    line: int


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_PAIR = re.compile(r"^([0-9a-f]{40,64}) ([0-9a-f]{40,64})$")


def _unquote(path: str) -> str:
    if path.startswith('"') and path.endswith('"'):
        raw = path[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        return raw.encode("latin-1", "replace").decode("utf-8", "replace")
    return path


def _fork_lines(repo: Repo, spec: DriftSpec, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[_Use], set[str]]]:
    """Per (upstream tree, rebased tree): the identifiers the added lines use, and the names
    they declare. One ``git diff-tree --stdin`` for every pair."""
    out: list[tuple[list[_Use], set[str]]] = [([], set()) for _ in pairs]
    if not pairs:
        return out
    stdin = "".join(f"{a} {b}\n" for a, b in pairs)
    proc = repo.run_raw("-c", "core.quotePath=false", "diff-tree", "--stdin", "-r", "-p", "-U0",
                        "--no-renames", "--no-prefix", "--no-color", "--no-ext-diff", input=stdin)
    if proc.returncode != 0:
        raise GitError(["diff-tree", "--stdin", "-p"], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    index = -1
    path: str | None = None
    lines: _Lines | None = None
    lineno = 0
    parsed: dict[tuple[str, str], tuple[tuple[str, ...], set[str]]] = {}
    for raw in proc.stdout.decode("utf-8", "replace").split("\n"):
        if _PAIR.match(raw):
            index, path, lines = index + 1, None, None
            continue
        if raw.startswith("diff --git "):
            path, lines = None, None
            continue
        if raw.startswith("+++ "):
            target = raw[4:]
            path = None if target == "/dev/null" else _unquote(target)
            lang = language_of(path) if path else None
            lines = _Lines(lang) if path and lang and in_scope(spec, path) else None
            continue
        if lines is None or path is None:
            continue
        if (m := _HUNK.match(raw)) is not None:
            lineno = int(m.group(1))
            continue
        if raw.startswith("+"):
            key = (lines.lang, lines.code(raw[1:]))
            if key not in parsed:  # every tag's result carries the same fork lines
                parsed[key] = (tuple(dict.fromkeys(uses(*key))), declares(*key))
            names, declared = parsed[key]
            uses_, decls = out[index]
            uses_.extend(_Use(name, path, lineno) for name in names)
            decls.update(declared)
            lineno += 1
    return out


# ---------------------------------------------------------------------------------------
# Upstream's trees
# ---------------------------------------------------------------------------------------
def _grep_names(repo: Repo, treeish: str, names: Iterable[str]) -> dict[str, set[str]]:
    """name -> the paths of ``treeish`` that contain it (one ``git grep`` for all names)."""
    wanted = frozenset(names)
    where: dict[str, set[str]] = {n: set() for n in wanted}
    if not wanted:
        return where
    args = ["grep", "--no-color", "-I", "-w", "-F", "--null"]
    for name in sorted(wanted):
        args += ["-e", name]
    proc = repo.run_raw(*args, treeish, "--")
    if proc.returncode not in (0, 1):
        raise GitError(["grep", "-w", "-F", treeish], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    prefix = f"{treeish}:"
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        path, _, text = line.partition("\0")
        path = path.removeprefix(prefix)
        for name in names_in(text, wanted):
            where[name].add(path)
    return where


def tree_changes(repo: Repo, pairs: Sequence[tuple[str, str]]) -> list[dict[str, str | None]]:
    """Per (old tree, new tree): path -> its blob in the new tree (None: deleted), for every
    path that differs."""
    out: list[dict[str, str | None]] = [{} for _ in pairs]
    if not pairs:
        return out
    proc = repo.run_raw("-c", "core.quotePath=false", "diff-tree", "--stdin", "-r", "--no-renames",
                        input="".join(f"{a} {b}\n" for a, b in pairs))
    if proc.returncode != 0:
        raise GitError(["diff-tree", "--stdin", "-r"], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    index = -1
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if _PAIR.match(line):
            index += 1
            continue
        if not line.startswith(":"):
            continue
        meta, _, path = line.partition("\t")
        fields = meta.split()
        out[index][_unquote(path)] = None if fields[4] == "D" else fields[3]
    return out


def _removed_by(repo: Repo, name: str, base: str, tags: Sequence[str],
                paths: Iterable[str]) -> dict[str, Removal | None]:
    """Per tag (a commit): the newest commit of base..tag that changed how often ``name``
    occurs in the files that used it at base (``git log -S``; the name is gone at the tag,
    so that commit removed its last use there).

    Bounded: pickaxe diffs only those paths, and a name used in more than
    ``REMOVED_BY_MAX_PATHS`` files is not searched (None). One ``git log -S`` over every
    tag, then, per commit it finds, one ``git for-each-ref --contains`` tells which tags
    (as upstream tags of this clone) have it; a tag that is no tag ref gets its own log."""
    limited = sorted(paths)
    found: dict[str, Removal | None] = dict.fromkeys(tags)
    if not limited or len(limited) > REMOVED_BY_MAX_PATHS or not tags:
        return found
    proc = repo.run_raw("log", "-S", name, "--no-renames", "--format=%H%x00%s", f"^{base}", *tags, "--", *limited)
    if proc.returncode != 0:
        return found
    rows = [line.split("\0", 1) for line in proc.stdout.decode("utf-8", "replace").splitlines() if "\0" in line]
    if len(tags) == 1:
        return {tags[0]: Removal(*rows[0]) if rows else None}
    open_tags = set(tags)
    for sha, subject in rows:  # newest first
        out = repo.run("for-each-ref", f"--contains={sha}", "--format=%(objectname) %(*objectname)", "refs/tags")
        having = {word for line in out.splitlines() for word in line.split()}
        for tag in [t for t in open_tags if t in having]:
            found[tag] = Removal(sha, subject)
            open_tags.discard(tag)
        if not open_tags:
            break
    for tag in sorted(open_tags):
        found.update(_removed_by(repo, name, base, [tag], limited))
    return found


# ---------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------
def find_many_in_scope(repo: Repo, spec: DriftSpec, base: str, targets: Sequence[tuple[str, str]], *,
                       trees: Mapping[str, str] | None = None, parallel: bool = False) -> list[list[Drift]]:
    """Drift for each (upstream tag commit or tree-ish, rebased tree), in order.

    ``repo`` must be able to read every tree (inside a prediction: the simulator's
    repository, whose temporary objects hold the predicted trees). ``trees``: tree-ish ->
    tree, for those the caller knows (the others are resolved with one rev-parse).
    ``parallel``: upstream's changes are read while the fork's lines are parsed (else one after
    the other: git calls in a fixed order)."""
    if not spec.enabled or not targets:
        return [[] for _ in targets]
    # diff-tree --stdin reads two commits on a line as "commit parent": give it trees.
    tree_of = dict(trees or {})
    names = [n for n in dict.fromkeys([*(x for pair in targets for x in pair), base]) if n not in tree_of]
    if names:
        tree_of.update(zip(names, repo.lines("rev-parse", *(f"{n}^{{tree}}" for n in names)), strict=True))
    tag_trees, base_tree = [tree_of[t] for t, _ in targets], tree_of[base]
    tip_trees = [tree_of[tip] for _, tip in targets]
    with ThreadPoolExecutor(max_workers=1) as background:
        # upstream's changes since base do not depend on the fork's lines: read side by side
        pairs = [(base_tree, tt) for tt in tag_trees]
        changing = background.submit(tree_changes, repo, pairs) if parallel else None
        per_tag = _fork_lines(repo, spec, list(zip(tag_trees, tip_trees, strict=True)))
        declared = set().union(*(d for _u, d in per_tag))
        candidates = {u.identifier for uses_, _d in per_tag for u in uses_} - declared
        at_base = ({n: paths for n, paths in _grep_names(repo, base_tree, candidates).items() if paths}
                   if candidates else {})
        if changing is not None:
            changes = changing.result()
        elif candidates:
            changes = tree_changes(repo, pairs)
    if not candidates:
        return [[] for _ in targets]
    # A name is still upstream at a tag when one of its files at base is unchanged there;
    # only names whose every base file changed need the tag's changed blobs read.
    suspects: list[set[str]] = []
    for (uses_, _d), changed in zip(per_tag, changes, strict=True):
        used = {u.identifier for u in uses_} & at_base.keys()
        suspects.append({n for n in used if at_base[n] <= changed.keys()})
    wanted = frozenset(set().union(*suspects))
    blobs = sorted({b for s, ch in zip(suspects, changes, strict=True) if s for b in ch.values() if b})
    found: dict[str, set[str]] = {}
    if wanted and blobs:
        for blob, data in zip(blobs, repo.read_blobs(blobs), strict=True):
            found[blob] = names_in(data.decode("utf-8", "replace"), wanted) if data else set()
    gone_at = [sus - (set().union(*(found.get(b, set()) for b in changed.values() if b)) if sus else set())
               for changed, sus in zip(changes, suspects, strict=True)]
    removals: dict[str, dict[str, Removal | None]] = {}
    for name in set().union(*gone_at):
        tags = [tag for (tag, _tip), gone in zip(targets, gone_at, strict=True) if name in gone]
        removals[name] = _removed_by(repo, name, base, list(dict.fromkeys(tags)), at_base[name])
    return [[Drift(u.identifier, u.path, u.line, removals[u.identifier][tag]) for u in uses_ if u.identifier in gone]
            for (tag, _tip), (uses_, _d), gone in zip(targets, per_tag, gone_at, strict=True)]


def find(repo: Repo, pb: Playbook, base: str, tip_tree: str, tag: str) -> list[Drift]:
    """Drift of one rebased tree ``tip_tree`` on upstream's ``tag`` (a stack cut from
    ``base``): what ``forkops upgrade --plan`` and an upgrade's completion report."""
    return find_many_in_scope(repo, pb.drift, base, [(tag, tip_tree)])[0]
