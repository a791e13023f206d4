"""Key sites (SPEC section 4): write the key and IV into the fork's working tree, read them
back, verify they agree, and put the committed values back.

A *site instance* is one match of a playbook :class:`~forkops.playbook.KeySite` pattern in one
existing file of the working tree; its ``value`` group is the encoded value exactly as it
appears (a C string literal with its quotes, a C byte array with its braces, a bare Bazel
define value).

Invariants:

* Nothing here returns, prints or raises the key or IV: results carry SHA-256 fingerprints.
* Every write is planned in full first (a site that cannot hold the value refuses the whole
  operation before any file changes), then each file is replaced atomically, once.
* Only the ``value`` spans change; every other byte of a file is preserved, as is its mode.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from forkops.errors import BadInput, ConfigError, NeedsPerson
from forkops.fsutil import write_atomic
from forkops.git import Repo
from forkops.keyfile import KeyMaterial, fingerprint
from forkops.playbook import KeySite, Playbook

# Printable ASCII that needs no escape in a C string literal. '?' is left out so a value can
# never form a trigraph ("??/" is a backslash in pre-C++17 compilers).
_C_STRING_SAFE = frozenset(
    c for c in string.printable if (c not in '"\\?' and c not in string.whitespace) or c == " "
)
# A .bazelrc token is split on whitespace and may be quoted; a define value that must round
# trip through Bazel, the shell of a genrule and a -D copt stays within these characters.
_BAZEL_SAFE = frozenset(string.ascii_letters + string.digits + "-_.+:@%,/=~^")
_BAZEL_SAFE_TEXT = "letters, digits and -_.+:@%,/=~^"

# Read files as UTF-8 with surrogateescape so any byte round-trips unchanged.
_ENC, _ERRORS = "utf-8", "surrogateescape"


class Unencodable(ValueError):
    """A value cannot be written in a site's encoding; the message never contains the value."""


# -- encodings ----------------------------------------------------------------------------------
def encode(value: bytes, encoding: str) -> str:
    """The value as it must appear in the source (the whole ``value`` group)."""
    if encoding == "c-string":
        if all(chr(b) in _C_STRING_SAFE for b in value):
            return '"' + value.decode("ascii") + '"'
        # Every byte as \xNN: a hex digit right after \xNN would continue the escape, so no
        # byte is ever left unescaped next to one (the next character is '\' or the quote).
        return '"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if encoding == "c-bytes":
        return "{" + ", ".join(f"0x{b:02x}" for b in value) + "}"
    if encoding == "bazel-define":
        if value and all(chr(b) in _BAZEL_SAFE for b in value):
            return value.decode("ascii")
        raise Unencodable(
            f"a Bazel define can only carry {_BAZEL_SAFE_TEXT}; this value has other bytes "
            "(a key_hex key): use a printable key (`forkops set-key --generate` without --hex)"
        )
    raise Unencodable(f"unknown encoding {encoding!r}")


_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11,
                   "\\": 92, "'": 39, '"': 34, "?": 63}


def decode(text: str, encoding: str) -> bytes:
    """The bytes an encoded value stands for; ValueError (without the value) if malformed."""
    if encoding == "c-string":
        return _decode_c_string(text)
    if encoding == "c-bytes":
        return _decode_c_bytes(text)
    if encoding == "bazel-define":
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        return text.encode(_ENC, _ERRORS)
    raise ValueError(f"unknown encoding {encoding!r}")


def _decode_c_string(text: str) -> bytes:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("not a C string literal")
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode(_ENC, _ERRORS)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("C string literal ends in a backslash")
        e = body[i + 1]
        if e in "xX":
            j = i + 2
            while j < len(body) and body[j] in string.hexdigits:
                j += 1  # C reads every following hex digit into the same escape
            if j == i + 2 or int(body[i + 2:j], 16) > 0xFF:
                raise ValueError("C string literal has an invalid \\x escape")
            out.append(int(body[i + 2:j], 16))
            i = j
        elif e in "01234567":
            j = i + 1
            while j < len(body) and j < i + 4 and body[j] in "01234567":
                j += 1
            if int(body[i + 1:j], 8) > 0xFF:
                raise ValueError("C string literal has an invalid octal escape")
            out.append(int(body[i + 1:j], 8))
            i = j
        elif e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        else:
            raise ValueError("C string literal has an unknown escape")
    return bytes(out)


_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_C_INT = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[uU]?")


def _decode_c_bytes(text: str) -> bytes:
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("not a C array initializer")
    items = [t.strip() for t in _C_COMMENT.sub(" ", text[1:-1]).split(",")]
    if items and items[-1] == "":
        items.pop()  # a trailing comma is legal C
    out = bytearray()
    for item in items:
        m = _C_INT.fullmatch(item)
        if m is None:
            raise ValueError("C byte array has an element that is not an integer literal")
        value = int(m.group(1), 0) if not re.fullmatch(r"0[0-7]+", m.group(1)) else int(m.group(1), 8)
        if value > 0xFF:
            raise ValueError("C byte array has an element above 0xff")
        out.append(value)
    return bytes(out)


# -- site instances -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteResult:
    """One site instance as read from the working tree. Never holds the value itself."""

    path: str  # repo-relative, '/'-separated
    site: str  # KeySite.name
    value: str  # "key" | "iv"
    encoding: str
    line: int
    fingerprint: str | None  # of the decoded value; None if it cannot be decoded
    problem: str | None = None  # why it cannot be decoded (never contains the value)

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "site": self.site, "value": self.value, "encoding": self.encoding,
                "line": self.line, "fingerprint": self.fingerprint, "problem": self.problem}


@dataclass(frozen=True)
class _Instance:
    site: KeySite
    path: str
    start: int  # span of the value group in the file text
    end: int
    line: int


def _read_text(path: Path) -> str:
    return path.read_bytes().decode(_ENC, _ERRORS)


def _instances_in(text: str, path: str, sites: Iterable[KeySite]) -> list[_Instance]:
    found: list[_Instance] = []
    for site in sites:
        for m in site.regex.finditer(text):
            start, end = m.span("value")
            found.append(_Instance(site, path, start, end, text.count("\n", 0, start) + 1))
    found.sort(key=lambda i: i.start)
    for a, b in itertools.pairwise(found):
        if b.start < a.end:
            raise ConfigError([f"{path}: key sites {a.site.name!r} and {b.site.name!r} "
                               "match overlapping text; fix their patterns"])
    return found


def _files_with_sites(repo_path: Path, playbook: Playbook) -> dict[str, tuple[str, list[_Instance]]]:
    """Every existing site path with at least one match: path -> (text, instances)."""
    by_path: dict[str, list[KeySite]] = {}
    for site in playbook.key_sites:
        for p in site.paths:
            by_path.setdefault(p, []).append(site)
    files: dict[str, tuple[str, list[_Instance]]] = {}
    for rel, sites in sorted(by_path.items()):
        full = repo_path / rel
        if not full.is_file():
            continue
        text = _read_text(full)
        found = _instances_in(text, rel, sites)
        if found:
            files[rel] = (text, found)
    return files


def _reading(inst: _Instance, text: str) -> SiteResult:
    raw = text[inst.start:inst.end]
    try:
        fp: str | None = fingerprint(decode(raw, inst.site.encoding))
        problem = None
    except ValueError as exc:
        fp, problem = None, str(exc)
    return SiteResult(inst.path, inst.site.name, inst.site.value, inst.site.encoding, inst.line, fp, problem)


def site_paths(repo_path: Path, playbook: Playbook) -> list[str]:
    """Repo-relative paths that currently hold at least one site instance."""
    return sorted(_files_with_sites(repo_path, playbook))


def read_sites(repo_path: Path, playbook: Playbook) -> list[SiteResult]:
    """Every site instance in the working tree, decoded to a fingerprint."""
    return [_reading(inst, text)
            for text, found in _files_with_sites(repo_path, playbook).values() for inst in found]


def expected_fingerprints(material: KeyMaterial) -> dict[str, str]:
    return {"key": material.key_fingerprint, "iv": material.iv_fingerprint}


def disagreements(results: Iterable[SiteResult], material: KeyMaterial) -> list[SiteResult]:
    """Site instances that do not decode to the key file's key (or IV)."""
    want = expected_fingerprints(material)
    return [r for r in results if r.fingerprint != want[r.value]]


# -- writing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """New contents for every file that holds a site instance (planned, not yet written)."""

    repo_path: Path
    playbook: Playbook
    files: dict[str, str]  # repo-relative path -> new text (only files that change)
    instances: int

    def apply(self) -> None:
        for rel, text in self.files.items():
            full = self.repo_path / rel
            mode = full.stat().st_mode & 0o7777
            write_atomic(full, text.encode(_ENC, _ERRORS), mode=mode)


def _splice(text: str, found: list[_Instance], values: list[str]) -> str:
    parts, pos = [], 0
    for inst, value in zip(found, values, strict=True):
        parts += [text[pos:inst.start], value]
        pos = inst.end
    parts.append(text[pos:])
    return "".join(parts)


def plan_sites(repo_path: Path, playbook: Playbook, material: KeyMaterial) -> Plan:
    """Plan writing ``material`` into every site instance; BadInput if any site cannot hold it."""
    files = _files_with_sites(repo_path, playbook)
    problems: list[str] = []
    new_files: dict[str, str] = {}
    count = 0
    for rel, (text, found) in files.items():
        values = []
        for inst in found:
            count += 1
            secret = material.key if inst.site.value == "key" else material.iv
            try:
                values.append(encode(secret, inst.site.encoding))
            except Unencodable as exc:
                problems.append(f"{rel}:{inst.line}: key site {inst.site.name!r} refused: {exc}")
                values.append(text[inst.start:inst.end])
        new = _splice(text, found, values)
        if new != text:
            new_files[rel] = new
    if problems:
        raise ConfigError(problems)
    return Plan(repo_path, playbook, new_files, count)


def write_sites(repo_path: Path, playbook: Playbook, material: KeyMaterial) -> list[SiteResult]:
    """Write the key and IV into every existing site instance of the working tree.

    Planned in full first (BadInput, nothing written, if a site cannot hold the value), then
    each changed file is replaced atomically. Returns what the sites hold afterwards, read
    back from disk; NeedsPerson if a site does not read back as written (a playbook pattern
    that does not match its own output).
    """
    plan_sites(repo_path, playbook, material).apply()
    results = read_sites(repo_path, playbook)
    bad = disagreements(results, material)
    if bad:
        raise NeedsPerson("key sites do not read back as written: "
                          + ", ".join(f"{r.path}:{r.line} ({r.site})" for r in bad))
    return results


def clear_sites(repo_path: Path, playbook: Playbook) -> list[SiteResult]:
    """Put HEAD's committed value back into every site instance of the working tree.

    Only the value spans change, so other uncommitted edits in those files survive; a file
    whose only difference from HEAD was its site values becomes identical to HEAD again.
    BadInput (nothing written) if HEAD lacks the file or holds a different number of matches
    for a site, since it is then unclear which committed value belongs where.
    """
    repo = Repo(repo_path)
    problems: list[str] = []
    new_files: dict[str, str] = {}
    for rel, (text, found) in _files_with_sites(repo_path, playbook).items():
        blob = repo.show_file("HEAD", rel)
        if blob is None:
            problems.append(f"{rel}: not in HEAD, so there is no committed value to restore")
            continue
        head_text = blob.decode(_ENC, _ERRORS)
        head_found = _instances_in(head_text, rel, {i.site.name: i.site for i in found}.values())
        committed: dict[str, list[str]] = {}
        for inst in head_found:
            committed.setdefault(inst.site.name, []).append(head_text[inst.start:inst.end])
        values: list[str] = []
        used: dict[str, int] = {}
        for inst in found:
            n = used.get(inst.site.name, 0)
            used[inst.site.name] = n + 1
            options = committed.get(inst.site.name, [])
            values.append(options[n] if n < len(options) else "")
        mismatched = [name for name, n in used.items() if n != len(committed.get(name, []))]
        if mismatched:
            problems.extend(f"{rel}: key site {name!r} matches {used[name]} time(s) in the working "
                            f"tree but {len(committed.get(name, []))} in HEAD" for name in mismatched)
            continue
        new = _splice(text, found, values)
        if new != text:
            new_files[rel] = new
    if problems:
        raise BadInput("; ".join(problems))
    Plan(repo_path, playbook, new_files, 0).apply()
    return read_sites(repo_path, playbook)


def relpath(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when inside it (for messages), else as given."""
    try:
        return os.path.relpath(path, start) if path.is_relative_to(start) else str(path)
    except ValueError:
        return str(path)
