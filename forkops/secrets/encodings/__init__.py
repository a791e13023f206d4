"""The key-site encodings (docs/SPEC.md section 4), one module each, looked up by playbook name.

Each module has ``NAME``, ``encode(value) -> str`` (the whole ``value`` group of a site),
``decode(text) -> bytes`` (ValueError without the value when malformed) and
``spellings(secret) -> list[Spelling]``: every way the encoded secret can be written that
``decode`` accepts, as byte regexes for :class:`forkops.secrets.Matcher`. Invariant (tested):
whatever ``decode`` reads as the secret, the matcher finds.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Spelling(NamedTuple):
    """A family of spellings of one secret: the form name shown to people, and a bytes regex."""

    form: str
    pattern: bytes
    word_start: bool = False  # a hit right after a letter, digit or '_' does not count
    head: bytes | None = None  # a regex for the first few elements: no head match, no hit


class Unencodable(ValueError):
    """A value cannot be written in a site's encoding; the message never contains the value."""


class Encoding(Protocol):
    NAME: str

    def encode(self, value: bytes) -> str: ...

    def decode(self, text: str) -> bytes: ...

    def spellings(self, secret: bytes) -> list[Spelling]: ...


def registry() -> dict[str, Encoding]:
    """Encoding name -> module, in the order playbooks document them."""
    from forkops.secrets.encodings import bazel_define, c_bytes, c_string

    mods: tuple[Encoding, ...] = (c_string, c_bytes, bazel_define)
    return {m.NAME: m for m in mods}


NAMES = ("c-string", "c-bytes", "bazel-define")  # == tuple(registry()); a test keeps them equal


def get(name: str) -> Encoding:
    try:
        return registry()[name]
    except KeyError:
        raise Unencodable(f"unknown encoding {name!r}") from None


# -- regex pieces shared by the C encodings ---------------------------------------------------
WS_OR_COMMENT = rb"(?:\s|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/|//[^\n]*)"


HEAD_ELEMENTS = 3


def starts(form: str, firsts: list[bytes], rest: list[bytes], *, word_start: bool = False) -> list[Spelling]:
    """One spelling per way of writing the first element, each starting with a literal (no
    class, no repeat): ``re`` then finds candidates with its fast literal search, ten times
    faster than trying a class or an alternation at every offset. ``rest`` holds the regex of
    each following element (with what may precede it); the first few make the ``head``."""
    tail = b"".join(rest)
    head = b"".join(rest[:HEAD_ELEMENTS - 1])
    return [Spelling(form, first + tail, word_start, first + head) for first in firsts]


def literal_cases(digits: str) -> list[bytes]:
    """``digits`` with its first character in each case (the rest as a case-free regex)."""
    head, tail = digits[0], digits[1:]
    heads = sorted({head.lower(), head.upper()})
    return [h.encode() + ci_text(tail) for h in heads]


def ci_text(text: str) -> bytes:
    return b"".join(b"[" + c.lower().encode() + c.upper().encode() + b"]" if c.isalpha() else c.encode()
                    for c in text)


def ci_hex(n: int) -> bytes:
    """``n`` in hex digits without leading zeros, each letter in either case, as a regex."""
    return b"".join(b"[" + c.lower().encode() + c.upper().encode() + b"]" if c.isalpha() else c.encode()
                    for c in f"{n:x}")
