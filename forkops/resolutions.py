"""Recorded conflict resolutions: git's rerere as reviewable data kept in the workspace.

When a person resolves a stop of ``forkops upgrade`` and continues, each resolved file's
conflict is written to ``resolutions/<repo>/<id>.txt`` in the workspace (committed beside
``forkops.toml``): the conflict's hunks -- the two sides of each -- and the text the person
replaced each hunk with. Wherever the same hunks recur (another clone, a teammate, the nightly
CI job, a later release), ``upgrade`` applies the recorded text and ``check`` simulates past the
stop.

Invariants:

* The hunks of a conflicted file are always computed the same way, from its index stages
  (base, ours, theirs) with ``git merge-file`` under fixed settings (``merge`` conflict style,
  a 20-character marker): never from the markers in a worktree, whose labels, style
  (diff3/zdiff3) and marker size depend on the user's configuration. The same stages therefore
  always give the same hunks, in the simulation (stages from ``merge-tree``) and in a real
  rebase (stages from the index).
* A hunk's identity is rerere's: the SHA-1 of its two sides, sorted, each followed by NUL. The
  order of the sides (rebase vs. merge) and the markers' labels never matter.
* A file is resolved only when *every* hunk of it has a recorded resolution; the text outside
  the hunks is the merge's own, so upstream changes there are kept.
* A record is written only when substituting its per-hunk resolutions into the conflict gives
  back exactly what the person committed; a resolution that also edited text outside the hunks,
  deleted the file, or holds key material (a key site's value, the key) is reported and not
  recorded -- the resolutions folder is committed, the key never is.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from forkops import fsutil
from forkops.errors import BadInput, GitError
from forkops.git import Repo

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.playbook import Playbook
    from forkops.workspace import Workspace

DIRNAME = "resolutions"
FORMAT_LINE = "forkops resolution 1"
MARKER_SIZE = 20  # longer than any marker a source file is likely to contain
# Only regular files are resolved as text: a symlink's target (120000) is no file content to write.
FILE_MODES = frozenset({"100644", "100755"})
_PENDING = "resolutions-pending.json"  # under <git dir>/forkops/

# (mode, oid) of each index stage present: 1 base, 2 ours (upstream + the patches so far),
# 3 theirs (the fork's commit being replayed).
Stages = Mapping[int, tuple[str, str]]


# ---------------------------------------------------------------------------------------
# Hunks: the normalised shape of a conflicted file
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hunk:
    """One conflicting region: upstream's side and the fork's side, as merged."""

    ours: bytes
    theirs: bytes

    @property
    def id(self) -> str:
        """rerere's conflict hash: both sides sorted, each followed by NUL."""
        a, b = sorted((self.ours, self.theirs))
        return hashlib.sha1(a + b"\0" + b + b"\0", usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Merged:
    """A three-way merge of one file: ``common`` has one more element than ``hunks``; the file
    with hunk ``i`` resolved to ``r[i]`` is ``common[0] + r[0] + common[1] + ... + common[-1]``."""

    common: tuple[bytes, ...]
    hunks: tuple[Hunk, ...]

    def substitute(self, texts: Sequence[bytes]) -> bytes:
        out = [self.common[0]]
        for text, after in zip(texts, self.common[1:], strict=True):
            out += [text, after]
        return b"".join(out)


def merge_stages(repo: Repo, base: bytes, ours: bytes, theirs: bytes) -> Merged | None:
    """Merge three versions of a file with ``git merge-file`` (fixed settings, see the module
    docstring); None when git cannot merge them as text (binary content)."""
    with tempfile.TemporaryDirectory(prefix="forkops-merge-") as tmp:
        names = []
        for label, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / label
            path.write_bytes(data)
            names.append(str(path))
        args = ["-c", "merge.conflictStyle=merge", "merge-file", "-p", f"--marker-size={MARKER_SIZE}",
                "-L", "ours", "-L", "base", "-L", "theirs", *names]
        proc = repo.run_raw(*args)
    if proc.returncode < 0 or proc.returncode > 127:
        if b"binary" in proc.stderr.lower():
            return None
        raise GitError(["merge-file", "-p"], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return _parse_markers(proc.stdout)


# git's conflict markers (default size) at the start of a line: a file holding them is not resolved
_MARKERS = re.compile(rb"^(?:<{7} |={7}$|>{7} )", re.MULTILINE)
_OPEN, _MID, _CLOSE = b"<" * MARKER_SIZE + b" ours", b"=" * MARKER_SIZE, b">" * MARKER_SIZE + b" theirs"


def _parse_markers(text: bytes) -> Merged:
    common: list[bytes] = []
    hunks: list[Hunk] = []
    current: list[bytes] = []
    ours: list[bytes] = []
    state = "common"
    for line in text.splitlines(keepends=True):
        bare = line.rstrip(b"\r\n")
        if state == "common" and bare == _OPEN:
            common.append(b"".join(current))
            current, state = [], "ours"
        elif state == "ours" and bare == _MID:
            ours, current, state = current, [], "theirs"
        elif state == "theirs" and bare == _CLOSE:
            hunks.append(Hunk(b"".join(ours), b"".join(current)))
            current, state = [], "common"
        else:
            current.append(line)
    if state != "common":
        raise BadInput("git merge-file wrote an unterminated conflict")
    common.append(b"".join(current))
    return Merged(tuple(common), tuple(hunks))


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _align(merged: Merged, resolved: bytes) -> tuple[list[bytes], bool]:
    """What ``resolved`` has in place of each hunk, and whether that alone explains it.

    Aligns the merge's common text (each hunk a sentinel no line equals) with the resolved file
    line by line (difflib): a hunk's text is what replaces its sentinel when the sentinel is
    replaced alone; the result is exact when no common line changed (checked by substituting)."""
    import difflib

    seq: list[object] = []
    for i, text in enumerate(merged.common):
        if i:
            seq.append(("hunk", i - 1))
        seq += _lines(text)
    got = _lines(resolved)
    texts = [b""] * len(merged.hunks)
    exact = True
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, seq, got, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if i2 - i1 == 1 and isinstance(seq[i1], tuple):
            texts[seq[i1][1]] = b"".join(got[j1:j2])  # type: ignore[index]
        else:
            exact = False  # common lines edited, or text added outside any hunk
    return texts, exact and merged.substitute(texts) == resolved


def split_resolution(merged: Merged, resolved: bytes) -> list[bytes] | None:
    """The text the person put in place of each hunk, or None when the resolution also changed
    text outside the hunks."""
    texts, exact = _align(merged, resolved)
    return texts if exact else None


@dataclass(frozen=True)
class Edit:
    """A change the person made outside the hunks: one hunk of a unified diff (3 lines of
    context) of the file with the hunk resolutions substituted -> the committed file. ``lines``
    start with ' ', '-' or '+' (no newline)."""

    start: int  # 1-based line of the first context/removed line in the substituted file
    lines: tuple[str, ...]

    @property
    def before(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "-")]

    @property
    def after(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]


def _text_lines(data: bytes) -> list[str] | None:
    """Lines without newlines, or None for content whose last line has no newline."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        return None
    return _text(data).split("\n")[:-1]


def diff_edits(substituted: bytes, resolved: bytes) -> tuple[Edit, ...] | None:
    """The edits from ``substituted`` to ``resolved`` (None: not expressible as line edits)."""
    import difflib

    a, b = _text_lines(substituted), _text_lines(resolved)
    if a is None or b is None:
        return None
    edits = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(3):
        lines: list[str] = []
        for op, i1, i2, j1, j2 in group:
            if op == "equal":
                lines += [" " + x for x in a[i1:i2]]
            else:
                lines += ["-" + x for x in a[i1:i2]] + ["+" + x for x in b[j1:j2]]
        edits.append(Edit(group[0][1] + 1, tuple(lines)))
    return tuple(edits)


def apply_edits(content: bytes, edits: Sequence[Edit]) -> bytes | None:
    """``content`` with ``edits`` applied, each where its context and removed lines are found
    nearest to its recorded line (after the previous edit); None when one is not found."""
    lines = _text_lines(content)
    if lines is None:
        return None if edits else content
    floor, delta = 0, 0
    for edit in edits:
        before, after = edit.before, edit.after
        expected = edit.start - 1 + delta
        spots = [p for p in range(floor, len(lines) - len(before) + 1) if lines[p:p + len(before)] == before]
        if not before:
            spots = [min(max(expected, floor), len(lines))]
        if not spots:
            return None
        at = min(spots, key=lambda p: abs(p - expected))
        lines[at:at + len(before)] = after
        floor, delta = at + len(after), delta + len(after) - len(before)
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def resolution_of(merged: Merged, resolved: bytes) -> tuple[list[bytes], tuple[Edit, ...]] | None:
    """How ``resolved`` resolves ``merged``: a text per hunk and, when the person also changed
    text outside the hunks, those edits; None when it cannot be reproduced that way."""
    texts, exact = _align(merged, resolved)
    if exact:
        return texts, ()
    edits = diff_edits(merged.substitute(texts), resolved)
    if edits is None or apply_edits(merged.substitute(texts), edits) != resolved:
        return None
    return texts, edits


# ---------------------------------------------------------------------------------------
# Records: the reviewable files
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedHunk:
    hunk: Hunk
    resolution: bytes

    def as_json(self) -> dict[str, str]:
        return {"id": self.hunk.id, "ours": _text(self.hunk.ours), "theirs": _text(self.hunk.theirs),
                "resolution": _text(self.resolution)}


@dataclass(frozen=True)
class Record:
    """One resolved conflicted file, as stored in ``resolutions/<repo>/<id>.txt``."""

    repo: str
    path: str  # where it was recorded (a hunk applies wherever it recurs)
    commit: str  # "<sha> <subject>" of the fork commit that stopped
    onto: str  # what the rebase went onto, for the reader
    hunks: tuple[RecordedHunk, ...]
    edits: tuple[Edit, ...] = ()  # changes outside the hunks, applied after them
    file: Path | None = None

    @property
    def id(self) -> str:
        joined = "\n".join(h.hunk.id for h in self.hunks)
        return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()[:16]

    def render(self) -> str:
        lines = [
            FORMAT_LINE,
            "# A conflict `forkops upgrade` stopped on and how a person resolved it. Wherever every",
            "# hunk below recurs (sides in either order), `forkops upgrade` writes the resolution",
            "# and `forkops check` simulates past the stop. Review it like code; remove it with",
            f"# `forkops resolutions forget {self.id}`. Lines of content start with '|'.",
            f"repo: {self.repo}",
            f"path: {self.path}",
            f"commit: {self.commit}",
            f"onto: {self.onto}",
            f"hunks: {len(self.hunks)}",
        ]
        for n, h in enumerate(self.hunks, start=1):
            lines += ["", f"hunk {n} of {len(self.hunks)}: {h.hunk.id}", "ours (upstream):"]
            lines += _block(h.hunk.ours)
            lines.append("theirs (the fork's commit):")
            lines += _block(h.hunk.theirs)
            lines.append("resolution:")
            lines += _block(h.resolution)
        if self.edits:
            lines += ["", _EDITS_HEADER]
            for e in self.edits:
                before, after = len(e.before), len(e.after)
                lines.append(f"@@ -{e.start},{before} +{e.start},{after} @@")
                lines += ["| " + line for line in e.lines]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        return f"{self.id}  {self.path}  ({len(self.hunks)} hunk{'s' * (len(self.hunks) != 1)}; {self.commit})"

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "repo": self.repo, "path": self.path, "commit": self.commit, "onto": self.onto,
                "file": str(self.file) if self.file else None, "hunks": [h.as_json() for h in self.hunks],
                "edits": [{"start": e.start, "lines": list(e.lines)} for e in self.edits]}


_NO_EOL = "\\ no newline at end"
_EDITS_HEADER = "outside the conflict (a diff: the file with the resolutions above -> the committed file):"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _block(data: bytes) -> list[str]:
    """Content lines prefixed with '| ' ('|' alone for an empty line), like a diff's
    "\\ No newline" mark when the last line has no newline."""
    if not data:
        return []
    text = _text(data)
    body = text[:-1] if text.endswith("\n") else text
    out = ["| " + line if line else "|" for line in body.split("\n")]
    return out if text.endswith("\n") else [*out, _NO_EOL]


def parse(text: str, *, source: str) -> Record:
    """A record file's text -> Record; a malformed file is BadInput naming the line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pos = 0

    def fail(problem: str) -> BadInput:
        return BadInput(f"{source}: line {min(pos, len(lines)) + 1}: {problem}")

    if not lines or lines[0] != FORMAT_LINE:
        raise fail(f"not a forkops resolution (first line must be {FORMAT_LINE!r})")
    pos = 1
    header: dict[str, str] = {}
    while pos < len(lines) and lines[pos] != "":
        line = lines[pos]
        if not line.startswith("#"):
            key, sep, value = line.partition(": ")
            if not sep or key not in ("repo", "path", "commit", "onto", "hunks"):
                raise fail(f"unexpected header line {line!r}")
            header[key] = value
        pos += 1
    missing = [k for k in ("repo", "path", "commit", "onto", "hunks") if k not in header]
    if missing:
        raise fail(f"missing header {', '.join(missing)}")

    def block() -> bytes:
        nonlocal pos
        out: list[str] = []
        no_eol = False
        while pos < len(lines) and (lines[pos] == "|" or lines[pos].startswith("| ") or lines[pos] == _NO_EOL):
            if no_eol:
                raise fail("content after the no-newline mark")
            no_eol = lines[pos] == _NO_EOL
            if not no_eol:
                out.append(lines[pos][2:])
            pos += 1
        text = "\n".join(out) + ("" if no_eol or not out else "\n")
        return text.encode("utf-8", "surrogateescape")

    def expect(line: str) -> None:
        nonlocal pos
        if pos >= len(lines) or lines[pos] != line:
            raise fail(f"expected {line!r}")
        pos += 1

    hunks: list[RecordedHunk] = []
    edits: list[Edit] = []
    while pos < len(lines):
        if lines[pos] == "":
            pos += 1
            continue
        if lines[pos] == _EDITS_HEADER or edits:
            if lines[pos] == _EDITS_HEADER:
                pos += 1
            m = re.fullmatch(r"@@ -(\d+),\d+ \+\d+,\d+ @@", lines[pos]) if pos < len(lines) else None
            if not m:
                raise fail("expected '@@ -N,N +N,N @@'")
            pos += 1
            body: list[str] = []
            while pos < len(lines) and (lines[pos] == "|" or lines[pos].startswith("| ")):
                line = lines[pos][2:]
                if line[:1] not in (" ", "-", "+"):
                    line = " " + line  # an empty context line whose trailing space an editor removed
                body.append(line)
                pos += 1
            edits.append(Edit(int(m.group(1)), tuple(body)))
            continue
        m = re.fullmatch(r"hunk (\d+) of (\d+): ([0-9a-f]{40})", lines[pos])
        if not m:
            raise fail(f"expected 'hunk N of M: ID', got {lines[pos][:40]!r}")
        pos += 1
        expect("ours (upstream):")
        ours = block()
        expect("theirs (the fork's commit):")
        theirs = block()
        expect("resolution:")
        resolution = block()
        hunk = Hunk(ours, theirs)
        if hunk.id != m.group(3):
            raise fail(f"hunk {m.group(1)}: its sides do not hash to {m.group(3)[:12]} (edited by hand?)")
        hunks.append(RecordedHunk(hunk, resolution))
    if str(len(hunks)) != header["hunks"]:
        raise fail(f"header says {header['hunks']} hunks, found {len(hunks)}")
    return Record(header["repo"], header["path"], header["commit"], header["onto"], tuple(hunks), tuple(edits))


def folder(root: Path, repo_name: str) -> Path:
    return root / DIRNAME / repo_name


def load(root: Path, repo_name: str) -> list[Record]:
    """Every record of ``repo_name`` in the workspace at ``root``, by file name."""
    where = folder(root, repo_name)
    if not where.is_dir():
        return []
    records = []
    for path in sorted(where.glob("*.txt")):
        rel = path.relative_to(root).as_posix()
        record = parse(path.read_text(encoding="utf-8", errors="surrogateescape"), source=rel)
        if path.stem != record.id:
            raise BadInput(f"{rel}: its hunks make id {record.id}, not {path.stem} (rename it or record it again)")
        records.append(Record(record.repo, record.path, record.commit, record.onto, record.hunks,
                              record.edits, path))
    return records


# ---------------------------------------------------------------------------------------
# Applying: in memory (the simulation) and in a worktree (upgrade)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """A conflicted file resolved from records."""

    path: str
    records: tuple[str, ...]  # ids of the records whose hunks were used

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "records": list(self.records)}


# (object type, bodies) -> their ids, in order: where a batch of new objects is written
ObjectWriter = Callable[[str, Sequence[bytes]], list[str]]


def _stage_key(stages: Stages) -> tuple[tuple[int, str, str], ...]:
    return tuple(sorted((k, *v) for k, v in stages.items()))


def _side(text: bytes) -> bytes:
    """A hunk side as it can occur in its file: git merge-file ends a side with a newline the
    file's last line may lack."""
    return text.removesuffix(b"\n")


class Book:
    """The recorded resolutions of one repository, by hunk id."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = tuple(records)
        self._by_hunk: dict[str, tuple[bytes, Record]] = {}
        # the same stages recur across tags (a check of 40 tags meets one conflict 40 times)
        self._files: dict[tuple[tuple[int, str, str], ...], tuple[str, bytes, tuple[str, ...]] | None] = {}
        for record in self.records:
            for h in record.hunks:
                self._by_hunk.setdefault(h.hunk.id, (h.resolution, record))
        self._sides = [(_side(h.hunk.ours), _side(h.hunk.theirs)) for r in self.records for h in r.hunks]

    @classmethod
    def of(cls, root: Path, repo_name: str) -> Book:
        return cls(load(root, repo_name))

    def __bool__(self) -> bool:
        return bool(self.records)

    def resolve(self, merged: Merged) -> tuple[bytes, tuple[str, ...]] | None:
        """The resolved content and the records used, when every hunk is covered."""
        if not merged.hunks or any(h.id not in self._by_hunk for h in merged.hunks):
            return None
        found = [self._by_hunk[h.id] for h in merged.hunks]
        used = list({id(r): r for _t, r in found}.values())
        content: bytes | None = merged.substitute([f[0] for f in found])
        present = {h.id for h in merged.hunks}
        for record in used:
            if record.edits:
                # edits outside the hunks belong to the whole conflict they were made for
                if any(h.hunk.id not in present for h in record.hunks):
                    return None
                content = apply_edits(content, record.edits) if content is not None else None
        return (content, tuple(r.id for r in used)) if content is not None else None

    def resolve_file(self, repo: Repo, stages: Stages) -> tuple[str, bytes, tuple[str, ...]] | None:
        """(mode, content, record ids) for a conflicted file given its stages, or None when it is
        not a text conflict of both sides (modify/delete, rename, binary, mode, a symlink or
        submodule) or not covered."""
        self._resolve_files(repo, [stages])
        return self._files[_stage_key(stages)]

    def _may_cover(self, ours: bytes, theirs: bytes) -> bool:
        """Whether some recorded hunk could be a hunk of merging ``ours`` with ``theirs``: each
        side of a hunk is a run of lines of its file. Only a file that passes is merged (a
        ``git merge-file`` process): a check meets many conflicts no record covers."""
        return any((a in ours and b in theirs) or (b in ours and a in theirs) for a, b in self._sides)

    def _resolve_files(self, repo: Repo, many: Sequence[Stages], also: Sequence[str] = (), *,
                       parallel: bool = False) -> list[bytes | None]:
        """Fill the cache for every stages of ``many``: the blobs of all in one ``git cat-file
        --batch`` (which also reads the trees ``also`` names: their bodies are returned), then
        one ``git merge-file`` per file some record may cover (two at a time when ``parallel``;
        else one after the other, git calls in a fixed order)."""
        todo: dict[tuple[tuple[int, str, str], ...], Stages] = {}
        for stages in many:
            key = _stage_key(stages)
            if key in self._files or key in todo:
                continue
            if 2 not in stages or 3 not in stages or stages[2][0] != stages[3][0] or stages[2][0] not in FILE_MODES:
                self._files[key] = None
            else:
                todo[key] = stages
        oids = sorted({oid for stages in todo.values() for _mode, oid in stages.values()})
        read = _read_objects(repo, [*oids, *also]) if oids or also else []
        have = {oid: obj[1] if obj and obj[0] == b"blob" else None for oid, obj in zip(oids, read, strict=False)}
        merges: dict[tuple[tuple[int, str, str], ...], tuple[bytes, bytes, bytes]] = {}
        for key, stages in todo.items():
            base = have[stages[1][1]] if 1 in stages else b""
            ours, theirs = have[stages[2][1]], have[stages[3][1]]
            self._files[key] = None
            if base is not None and ours is not None and theirs is not None and self._may_cover(ours, theirs):
                merges[key] = (base, ours, theirs)
        if parallel and len(merges) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2) as pool:
                done = list(pool.map(lambda sides: merge_stages(repo, *sides), merges.values()))
        else:
            done = [merge_stages(repo, *sides) for sides in merges.values()]
        for key, merged in zip(merges, done, strict=True):
            resolved = self.resolve(merged) if merged is not None else None
            self._files[key] = (todo[key][2][0], *resolved) if resolved is not None else None
        return [obj[1] if obj and obj[0] == b"tree" else None for obj in read[len(oids):]]

    def resolve_trees(self, repo: Repo, merges: Sequence[tuple[str, Mapping[str, Stages]]], *,
                      write: ObjectWriter, parallel: bool = False) -> list[tuple[str, list[Applied]] | None]:
        """Per (tree, conflicts) -- a merge result with conflicted files and their stages --
        that tree with every conflicted file resolved from the records, and what was applied;
        None unless every file is covered. For many merge results at once (one step of a
        simulation over many tags) with a fixed number of git processes; new objects are
        written by ``write`` (the simulation's temporary object store)."""
        out: list[tuple[str, list[Applied]] | None] = [None] * len(merges)
        if not self.records:
            return out
        # the trees a resolution rewrites are read with the stages' blobs (one cat-file)
        names = list(dict.fromkeys(_tree_name(tree, d) for tree, conflicts in merges if conflicts
                                   for d in _dirs_of(conflicts)))
        bodies = dict(zip(names, self._resolve_files(
            repo, [st for _tree, conflicts in merges for st in conflicts.values()], names, parallel=parallel),
            strict=True))
        jobs: list[tuple[int, str, dict[str, tuple[str, bytes]], list[Applied]]] = []
        for i, (tree, conflicts) in enumerate(merges):
            found = {path: self._files[_stage_key(st)] for path, st in sorted(conflicts.items())}
            if conflicts and all(found.values()):
                files = {path: (f[0], f[1]) for path, f in found.items() if f}
                jobs.append((i, tree, files, [Applied(path, f[2]) for path, f in found.items() if f]))
        trees = replace_in_trees(repo, [(tree, files) for _i, tree, files, _a in jobs], write=write, read=bodies)
        for (i, _tree, _files, applied), new_tree in zip(jobs, trees, strict=True):
            out[i] = (new_tree, applied) if new_tree is not None else None
        return out


def _dirs_of(paths: Iterable[str]) -> list[str]:
    """The directories holding ``paths``, deepest first, the root ("") last."""
    return sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(p.count("/") + 1)},
                  key=lambda d: (-d.count("/") - bool(d), d))


def _tree_name(tree: str, d: str) -> str:
    return f"{tree}:{d}" if d else tree


def replace_in_trees(repo: Repo, jobs: Sequence[tuple[str, Mapping[str, tuple[str, bytes]]]], *,
                     write: ObjectWriter, read: Mapping[str, bytes | None] | None = None) -> list[str | None]:
    """Per (tree, files): ``tree`` with each existing file ``path`` set to (mode, content);
    None when a path is not a file of ``tree``. Only the trees on the paths are rewritten, so
    the cost does not grow with the tree's size (a TensorFlow tree has 35,000 files, and an
    index of it costs half a second): those trees read with one ``git cat-file --batch``
    (``TREE:DIR`` names; those in ``read`` were read already), every new blob and tree written
    with one ``write`` call each."""
    plans = [(tree, files, _dirs_of(files)) for tree, files in jobs]
    known = dict(read or {})
    unread = [n for n in dict.fromkeys(_tree_name(tree, d) for tree, _f, dirs in plans for d in dirs)
              if n not in known]
    known.update(zip(unread, _read_trees(repo, unread) if unread else [], strict=True))
    raw = iter([known[_tree_name(tree, d)] for tree, _f, dirs in plans for d in dirs])
    contents = [b for _t, files, _d in plans for _m, b in files.values()]
    blob_ids = iter(write("blob", contents) if contents else [])
    out: list[str | None] = []
    trees: list[tuple[bytes, str]] = []  # (body, id) of every rewritten tree
    for tree, files, dirs in plans:
        blobs = {path: next(blob_ids) for path in files}
        out.append(_rewrite(tree, files, blobs, dirs, [next(raw) for _ in dirs], trees))
    if trees:
        written = write("tree", [body for body, _id in trees])
        assert written == [i for _b, i in trees], "git hashed a rewritten tree differently"
    return out


def _rewrite(tree: str, files: Mapping[str, tuple[str, bytes]], blobs: Mapping[str, str], dirs: Sequence[str],
             raw: Sequence[bytes | None], trees: list[tuple[bytes, str]]) -> str | None:
    """The new id of ``tree`` with ``files`` (already written as ``blobs``) in place, appending
    the rewritten trees (body, id; deepest first) to ``trees``; None (nothing appended) when a
    path is not a file of ``tree``."""
    import hashlib as _hashlib

    algo = "sha256" if len(tree) == 64 else "sha1"
    size = 32 if algo == "sha256" else 20
    new: dict[str, str] = {}  # dir -> its rewritten tree id
    mine: list[tuple[bytes, str]] = []
    for d, body in zip(dirs, raw, strict=True):
        if body is None:
            return None
        wanted: dict[bytes, tuple[bytes, str]] = {}
        for path, (file_mode, _c) in files.items():
            if path.rpartition("/")[0] == d:
                wanted[path.rpartition("/")[2].encode("utf-8", "surrogateescape")] = (file_mode.encode(), blobs[path])
        for sub, sha in new.items():
            if sub.rpartition("/")[0] == d and sub:
                wanted[sub.rpartition("/")[2].encode("utf-8", "surrogateescape")] = (b"40000", sha)
        out, pos, seen = [], 0, 0
        while pos < len(body):
            space = body.index(b" ", pos)
            nul = body.index(b"\0", space)
            mode, name = body[pos:space], body[space + 1:nul]
            oid = body[nul + 1:nul + 1 + size]
            pos = nul + 1 + size
            if name in wanted:
                new_mode, hex_id = wanted[name]
                if (mode == b"40000") != (new_mode == b"40000"):
                    return None  # a file where a directory is, or the reverse: not ours to touch
                mode, oid, seen = new_mode, bytes.fromhex(hex_id), seen + 1
            out.append(mode + b" " + name + b"\0" + oid)
        if seen != len(wanted):
            return None
        data = b"".join(out)
        new[d] = _hashlib.new(algo, b"tree %d\0" % len(data) + data).hexdigest()
        mine.append((data, new[d]))
    trees += mine
    return new[""]


def _read_trees(repo: Repo, ids: Sequence[str]) -> list[bytes | None]:
    """The raw contents of tree objects, from one ``git cat-file --batch``."""
    return [obj[1] if obj and obj[0] == b"tree" else None for obj in _read_objects(repo, ids)]


def _read_objects(repo: Repo, names: Sequence[str]) -> list[tuple[bytes, bytes] | None]:
    """(type, raw content) of each named object (None when missing), from one ``git cat-file
    --batch``."""
    proc = repo.run_raw("cat-file", "--batch", input="".join(f"{i}\n" for i in names))
    if proc.returncode != 0:
        raise GitError(["cat-file", "--batch"], proc.returncode, proc.stderr.decode("utf-8", "replace"))
    out, pos = proc.stdout, 0
    result: list[tuple[bytes, bytes] | None] = []
    for _ in names:
        eol = out.index(b"\n", pos)
        header = out[pos:eol].split()
        pos = eol + 1
        if len(header) == 3:
            size = int(header[2])
            result.append((header[1], out[pos:pos + size]))
            pos += size + 1
        else:
            result.append(None)
    return result


def parse_stage_entries(entries: Iterable[str]) -> dict[str, dict[int, tuple[str, str]]]:
    """``MODE OID STAGE<TAB>PATH`` entries (``git ls-files -u -z``, ``merge-tree -z``) -> path
    -> stage -> (mode, oid)."""
    found: dict[str, dict[int, tuple[str, str]]] = {}
    for entry in entries:
        if not entry:
            continue
        meta, _, path = entry.partition("\t")
        mode, oid, stage = meta.split()
        found.setdefault(path, {})[int(stage)] = (mode, oid)
    return found


def unmerged_stages(repo: Repo, paths: Sequence[str] = ()) -> dict[str, dict[int, tuple[str, str]]]:
    return parse_stage_entries(repo.run("ls-files", "-u", "-z", "--", *paths).split("\0"))


def _pending_path(repo: Repo) -> Path:
    return repo.git_dir / "forkops" / _PENDING


def _stopped_commit(repo: Repo) -> str | None:
    return repo.rev_parse("REBASE_HEAD")


def apply(ws: Workspace, repo_name: str, repo: Repo, paths: Sequence[str] = ()) -> list[Applied]:
    """At a stop of a rebase: write the resolved content of every conflicted file (of ``paths``,
    default all) whose hunks are all recorded into the worktree, and remember every conflicted
    file's stages so that :func:`record` can find them after the person's ``git add``.

    The index is left unmerged, as git's rerere leaves it: staging is the person's (or
    ``--continue``'s) confirmation."""
    stages = unmerged_stages(repo, paths)
    commit = _stopped_commit(repo)
    pending = {"commit": commit,
               "paths": {p: {str(k): list(v) for k, v in s.items()} for p, s in stages.items()}}
    fsutil.write_atomic(_pending_path(repo), json.dumps(pending, indent=1) + "\n")
    book = Book.of(ws.root, repo_name)
    applied = []
    for path, st in sorted(stages.items()):
        found = book.resolve_file(repo, st) if book else None
        if found is None:
            continue
        mode, content, ids = found
        target = repo.path / path
        fsutil.write_atomic(target, content, mode=0o755 if mode == "100755" else 0o644)
        applied.append(Applied(path, ids))
    return applied


RecordStatus = Literal["recorded", "unchanged", "skipped"]


@dataclass(frozen=True)
class Recorded:
    path: str
    status: RecordStatus
    id: str | None = None
    reason: str = ""  # why it was skipped

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "status": self.status, "id": self.id, "reason": self.reason}


def record(ws: Workspace, repo_name: str, repo: Repo, *, onto: str = "", pb: Playbook | None = None,
           material: KeyMaterial | None = None) -> list[Recorded]:
    """Before ``git rebase --continue``: record how each file conflicted at this stop (as
    :func:`apply` remembered them) is now resolved in the index. Files still unmerged, deleted,
    resolved with edits outside the hunks, or whose text holds key material are skipped (with
    the reason). Does nothing when the stop is not the one :func:`apply` saw."""
    pending_file = _pending_path(repo)
    if not pending_file.is_file():
        return []
    try:
        pending = json.loads(pending_file.read_text())
    except ValueError:
        pending_file.unlink()
        return []
    commit = _stopped_commit(repo)
    if commit is None or pending.get("commit") != commit:
        pending_file.unlink()
        return []
    subject = repo.run("log", "-1", "--format=%s", commit).strip()
    still = set(unmerged_stages(repo))
    paths: dict[str, dict[str, list[str]]] = pending["paths"]
    staged = _staged(repo, [p for p in paths if p not in still])
    out = []
    for path, raw in sorted(paths.items()):
        stages = {int(k): (v[0], v[1]) for k, v in raw.items()}
        if path in still:
            out.append(Recorded(path, "skipped", reason="still unmerged"))
            continue
        if path not in staged:
            out.append(Recorded(path, "skipped", reason="deleted (only content resolutions are recorded)"))
            continue
        if 2 not in stages or 3 not in stages:
            out.append(Recorded(path, "skipped", reason="not a content conflict"))
            continue
        if not {stages[2][0], stages[3][0]} <= FILE_MODES:
            out.append(Recorded(path, "skipped", reason="not a regular file"))
            continue
        oids = [stages[s][1] for s in (1, 2, 3) if s in stages]
        blobs = dict(zip(oids, repo.read_blobs(oids), strict=True))
        resolved = repo.read_blobs([staged[path]])[0]
        base = blobs[stages[1][1]] if 1 in stages else b""
        ours, theirs = blobs[stages[2][1]], blobs[stages[3][1]]
        merged = None
        if base is not None and ours is not None and theirs is not None and resolved is not None:
            merged = merge_stages(repo, base, ours, theirs)
        if merged is None or not merged.hunks or resolved is None:
            out.append(Recorded(path, "skipped", reason="not a text conflict"))
            continue
        if _MARKERS.search(resolved):
            out.append(Recorded(path, "skipped", reason="it still holds conflict markers"))
            continue
        how = resolution_of(merged, resolved)
        if how is None:
            out.append(Recorded(path, "skipped", reason="the resolution cannot be replayed as line edits"))
            continue
        rec = Record(repo_name, path, f"{commit[:12]} {subject}", onto,
                     tuple(RecordedHunk(h, t) for h, t in zip(merged.hunks, how[0], strict=True)), how[1])
        why = _holds_secret(rec.render(), pb, material)
        if why:
            out.append(Recorded(path, "skipped", reason=why))
            continue
        target = folder(ws.root, repo_name) / f"{rec.id}.txt"
        text = rec.render()
        if target.is_file() and target.read_text(encoding="utf-8", errors="surrogateescape") == text:
            out.append(Recorded(path, "unchanged", rec.id))
            continue
        fsutil.write_atomic(target, text.encode("utf-8", "surrogateescape"))
        out.append(Recorded(path, "recorded", rec.id))
    pending_file.unlink()
    return out


def _staged(repo: Repo, paths: Sequence[str]) -> dict[str, str]:
    """path -> the blob staged at stage 0, for those of ``paths`` that are in the index."""
    if not paths:
        return {}
    out = repo.run("ls-files", "-s", "-z", "--", *paths)
    found = {}
    for entry in out.split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            _mode, oid, stage = meta.split()
            if stage == "0":
                found[path] = oid
    return found


def _holds_secret(text: str, pb: Playbook | None, material: KeyMaterial | None) -> str:
    """Why ``text`` must not be committed to the workspace ('' when it may)."""
    if pb is not None:
        for site in pb.key_sites:
            if site.regex.search(text):
                return f"it holds key site {site.name!r} (the key is never recorded)"
    if material is not None:
        from forkops.secrets import Matcher

        if Matcher(material).find(text.encode("utf-8", "surrogateescape")):
            return "it holds the key or IV (the key is never recorded)"
    return ""


def find(root: Path, repo_name: str | None, ident: str) -> Record:
    """The one record (of ``repo_name``, or of any repository) whose id starts with ``ident``;
    BadInput when none does or several do."""
    if not re.fullmatch(r"[0-9a-f]{4,16}", ident):
        raise BadInput(f"{ident!r} is not a resolution id (4 to 16 hex digits, from `forkops resolutions list`)")
    names = [repo_name] if repo_name else sorted(p.name for p in (root / DIRNAME).glob("*") if p.is_dir())
    hits = [r for name in names for r in load(root, name) if r.id.startswith(ident)]
    if not hits:
        raise BadInput(f"no recorded resolution {ident}" + (f" for {repo_name}" if repo_name else ""))
    if len(hits) > 1:
        raise BadInput(f"{ident} is ambiguous: {', '.join(f'{r.repo} {r.id}' for r in hits)}")
    return hits[0]
