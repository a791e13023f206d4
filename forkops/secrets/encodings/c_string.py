"""``c-string``: a C string literal with its quotes (``"My123sjsrjsd2345"``).

Printable ASCII is written as itself, anything else as ``\\xNN`` for every byte. Read the
way a C compiler reads it: ``\\x`` takes every following hex digit, octal escapes take up to
three digits, the simple escapes (``\\n``, ``\\"``, ...) are known. The matcher also knows what
the compiler joins: adjacent literals (``"My12" "3sjs"``, comments between) and backslash-
newline continuations.
"""

from __future__ import annotations

import re
import string

from forkops.secrets.encodings import WS_OR_COMMENT, Spelling, ci_hex, starts

NAME = "c-string"

# Printable ASCII that needs no escape. '?' is left out so a value can never form a trigraph
# ("??/" is a backslash in pre-C++17 compilers).
_SAFE = frozenset(c for c in string.printable if (c not in '"\\?' and c not in string.whitespace) or c == " ")
_SIMPLE = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}
_SIMPLE_OF = {v: k for k, v in _SIMPLE.items()}
_ENC, _ERRORS = "utf-8", "surrogateescape"


def encode(value: bytes) -> str:
    if all(chr(b) in _SAFE for b in value):
        return '"' + value.decode("ascii") + '"'
    # Every byte as \xNN: a hex digit right after \xNN would continue the escape, so no byte is
    # ever left unescaped next to one (the next character is '\' or the quote).
    return '"' + "".join(f"\\x{b:02x}" for b in value) + '"'


def decode(text: str) -> bytes:
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
        elif e in _SIMPLE:
            out.append(_SIMPLE[e])
            i += 2
        else:
            raise ValueError("C string literal has an unknown escape")
    return bytes(out)


def byte_alternatives(b: int) -> list[bytes]:
    """Every way one byte can stand inside a C string literal, each a regex starting with a
    literal: ``\\x``/``\\X`` escapes (any leading zeros, any case), octal escapes of 1-3
    digits, a simple escape, the byte itself."""
    alts = [rb"\\x0*" + ci_hex(b), rb"\\X0*" + ci_hex(b)]
    octal = f"{b:o}"
    alts += [rb"\\" + b"0" * pad + octal.encode() for pad in range(4 - len(octal))]
    if b in _SIMPLE_OF:
        alts.append(re.escape(("\\" + _SIMPLE_OF[b]).encode()))
    if b not in (0x22, 0x5C):  # '"' and '\' never stand for themselves
        alts.append(re.escape(bytes([b])))
    return alts


def byte_spelling(b: int) -> bytes:
    return b"(?:" + b"|".join(byte_alternatives(b)) + b")"


# Between two bytes: the end of a literal and the start of the next (the compiler joins them),
# or a backslash-newline continuation.
JOIN = rb'(?:"' + WS_OR_COMMENT + rb'*"|\\\r?\n)*'


def spellings(secret: bytes) -> list[Spelling]:
    rest = [JOIN + byte_spelling(b) for b in secret[1:]]
    return starts("C string escapes", byte_alternatives(secret[0]), rest)
