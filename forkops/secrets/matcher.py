"""One matcher for the key and a non-default IV, over bytes and text.

Forms found (the contract, tested by enumeration in tests/test_secrets.py):

* every spelling a key-site encoding's ``decode`` reads as the secret (the encodings
  registry's ``spellings``: C string literals with any mix of plain characters, ``\\x``,
  octal and simple escapes, adjacent literals and continuations; C byte arrays in hex of any
  case, octal or decimal, with suffixes, comments and line breaks between elements; the raw
  bytes of a Bazel define);
* hex digits of the secret in any case, whitespace (line breaks) allowed between digits;
* base64 and base64url of the secret, at any of the three alignments inside a longer
  base64 text, whitespace allowed between characters.

Whitespace and comments are allowed by the patterns themselves, so no input is copied or
normalised byte by byte. The IV is left out when it is the fork's public default (sixteen
'7' bytes), which upstream code and docs carry. Nothing here returns the secret: a hit says
which secret (by fingerprint), in what form, and where.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from forkops.secrets.encodings import Spelling, ci_text, literal_cases, registry, starts

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial

DEFAULT_IV = b"7" * 16  # forkops.keyfile.DEFAULT_IV, repeated so the hooks need not import keyfile
_ENC, _ERRORS = "utf-8", "surrogateescape"


class Hit(NamedTuple):
    """One occurrence: which secret, in what form, at ``start:end`` of the searched data
    (bytes offsets for bytes, character offsets for text)."""

    what: str  # "key" | "iv"
    fingerprint: str
    form: str
    start: int
    end: int


def _fingerprint(secret: bytes) -> str:
    import hashlib

    return hashlib.sha256(secret).hexdigest()[:8]


def _hex(secret: bytes) -> list[Spelling]:
    digits = secret.hex()
    rest = [rb"\s*" + ci_text(d) for d in digits[1:]]
    return starts("hex", literal_cases(digits[0]), rest)


def _base64(secret: bytes) -> list[Spelling]:
    """The characters of base64(secret) that only the secret's bits decide, for each of the
    three byte alignments the secret can have inside a longer encoded text."""
    out = []
    for name, alphabet in (("base64", b"+/"), ("base64url", b"-_")):
        for offset in range(3):
            enc = base64.b64encode(bytes(offset) + secret, altchars=alphabet)
            first = -(-8 * offset // 6)  # first sextet that starts inside the secret
            last = (8 * (offset + len(secret))) // 6  # sextets that end inside it
            core = enc[first:last]
            out.append(Spelling(name, rb"\s*".join(re.escape(bytes([c])) for c in core)))
    return out


def spellings(secret: bytes) -> list[Spelling]:
    """Every spelling family of ``secret``, the raw text first (it names the form best)."""
    found = [Spelling("text", re.escape(secret)), *_hex(secret)]
    for enc in registry().values():
        found += enc.spellings(secret)
    found += _base64(secret)
    unique: dict[bytes, Spelling] = {}
    for s in found:
        unique.setdefault(s.pattern, s)
    return list(unique.values())


_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


def _after_word(data: bytes, start: int) -> bool:
    """A word character precedes ``start``, leading zeros of the same number aside."""
    i = start - 1
    while i >= 0 and data[i] == 0x30:
        i -= 1
    return i >= 0 and data[i] in _WORD


_META = frozenset(b".^$*+?{}[]\\|()")


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match of ``pattern`` starts with (a prefix of its leading literals)."""
    out, i = bytearray(), 0
    while i < len(pattern):
        c = pattern[i]
        if c == 0x5C:  # an escaped punctuation character stands for itself; \s, \d, ... do not
            if i + 1 >= len(pattern) or chr(pattern[i + 1]).isalnum():
                break
            lit, step = pattern[i + 1], 2
        elif c in _META:
            break
        else:
            lit, step = c, 1
        if pattern[i + step:i + step + 1] in (b"*", b"?", b"{"):
            break  # optional or counted: not certain to be there
        out.append(lit)
        i += step
    return bytes(out)


class _Form:
    """One spelling family, compiled lazily in two steps: nothing until its literal prefix
    occurs in the data, then the short ``head`` regex, and the long full one only when the
    head matches. Most data never gets that far, and compiling is the bulk of a hook's
    start-up."""

    def __init__(self, spelling: Spelling) -> None:
        self.form = spelling.form
        self.word_start = spelling.word_start
        self._pattern = spelling.pattern
        self._head_pattern = spelling.head
        self._literal = literal_prefix(spelling.head or spelling.pattern)
        self._head: re.Pattern[bytes] | None = None
        self._full: re.Pattern[bytes] | None = None

    def finditer(self, data: bytes) -> Iterator[tuple[int, int]]:
        if self._full is None:
            if self._head is None:
                if self._literal not in data:
                    return
                if self._head_pattern is None:
                    self._full = re.compile(self._pattern)
                else:
                    self._head = re.compile(self._head_pattern)
            if self._full is None:
                assert self._head is not None
                if self._head.search(data) is None:
                    return
                self._full = re.compile(self._pattern)
        pos = 0
        while (m := self._full.search(data, pos)) is not None:
            if self.word_start and _after_word(data, m.start()):
                pos = m.start() + 1
                continue
            yield m.span()
            pos = max(m.end(), m.start() + 1)


class _Secret(NamedTuple):
    what: str
    raw: bytes
    forms: tuple[_Form, ...]

    @property
    def fingerprint(self) -> str:  # only a hit needs it (hashlib is not imported otherwise)
        return _fingerprint(self.raw)


def _compile(what: str, secret: bytes) -> _Secret:
    # One regex per spelling family, each starting with a literal byte or a byte class, so
    # `re` skips to candidate offsets in C (one alternation of all of them would try every
    # offset and is ten times slower).
    return _Secret(what, secret, tuple(_Form(s) for s in spellings(secret)))


class Matcher:
    """Finds the key (and a non-default IV) in bytes or text; reports forms and spans."""

    def __init__(self, material: KeyMaterial) -> None:
        self.secrets = [_compile("key", material.key)]
        if material.iv != DEFAULT_IV:
            self.secrets.append(_compile("iv", material.iv))

    def spans(self, data: bytes) -> list[Hit]:
        """Every hit in ``data`` (per form non-overlapping), ordered by start."""
        hits = [Hit(s.what, s.fingerprint, f.form, a, b)
                for s in self.secrets for f in s.forms for a, b in f.finditer(data)]
        return sorted(hits, key=lambda h: (h.start, -h.end))

    def first(self, data: bytes) -> Hit | None:
        """A hit if ``data`` holds any secret (the fast question a scan asks)."""
        for s in self.secrets:
            for f in s.forms:
                for a, b in f.finditer(data):
                    return Hit(s.what, s.fingerprint, f.form, a, b)
        return None

    def firsts(self, data: bytes) -> list[Hit]:
        """The first hit (of the first form that finds it) of each secret in ``data``."""
        found: list[Hit] = []
        for s in self.secrets:
            hit = next((Hit(s.what, s.fingerprint, f.form, a, b) for f in s.forms for a, b in f.finditer(data)), None)
            if hit is not None:
                found.append(hit)
        return found

    def find(self, data: bytes) -> list[tuple[str, str]]:
        """(what, form) for each secret in ``data``, the first form that finds it; [] when clean."""
        return [(h.what, h.form) for h in self.firsts(data)]

    def text_spans(self, text: str) -> list[Hit]:
        """:meth:`spans` of ``text`` (as UTF-8, undecodable bytes kept), in character offsets."""
        data = text.encode(_ENC, _ERRORS)
        if data.isascii():
            return self.spans(data)

        def char(offset: int) -> int:
            return len(data[:offset].decode(_ENC, _ERRORS))

        return [h._replace(start=char(h.start), end=char(h.end)) for h in self.spans(data)]
