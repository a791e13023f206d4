"""``c-bytes``: a C array initializer with its braces (``{0x4d, 0x79, ...}``).

Written as lowercase ``0xNN``. Read as C reads integer literals: hex (any case), octal
(leading 0), decimal, a ``u``/``U`` suffix, comments and any whitespace between elements, a
trailing comma. The matcher also allows ``l``/``L`` suffixes.
"""

from __future__ import annotations

import re

from forkops.secrets.encodings import WS_OR_COMMENT, Spelling, ci_hex, starts

NAME = "c-bytes"

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_INT = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[uU]?")


def encode(value: bytes) -> str:
    return "{" + ", ".join(f"0x{b:02x}" for b in value) + "}"


def decode(text: str) -> bytes:
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("not a C array initializer")
    items = [t.strip() for t in _COMMENT.sub(" ", text[1:-1]).split(",")]
    if items and items[-1] == "":
        items.pop()  # a trailing comma is legal C
    out = bytearray()
    for item in items:
        m = _INT.fullmatch(item)
        if m is None:
            raise ValueError("C byte array has an element that is not an integer literal")
        digits = m.group(1)
        value = int(digits, 8) if re.fullmatch(r"0[0-7]+", digits) else int(digits, 0)
        if value > 0xFF:
            raise ValueError("C byte array has an element above 0xff")
        out.append(value)
    return bytes(out)


_SUFFIX = rb"(?:[uU][lL]{0,2}|[lL]{1,2}[uU]?)?(?![0-9A-Za-z_])"
_SEP = WS_OR_COMMENT + rb"*," + WS_OR_COMMENT + rb"*"


def alternatives(b: int) -> list[bytes]:
    """One array element equal to ``b``, each way a regex starting with a literal: hex (any
    case, leading zeros), octal (the literal starts at its last leading zero), decimal."""
    alts = [rb"0x0*" + ci_hex(b), rb"0X0*" + ci_hex(b), b"0" + (f"{b:o}".encode() if b else b"")]
    if b:
        alts.append(str(b).encode())
    return alts


def element(b: int) -> bytes:
    return b"(?:" + b"|".join(alternatives(b)) + b")" + _SUFFIX


def spellings(secret: bytes) -> list[Spelling]:
    # The matcher drops a hit preceded by a word character other than a leading zero
    # ("184, 121, ..." is not the array "84, 121, ..."): a lookbehind here would cost `re`
    # its fast literal search.
    rest = [_SUFFIX + _SEP + element(secret[1])] + [_SEP + element(b) for b in secret[2:]]
    return starts("C byte array", alternatives(secret[0]), rest, word_start=True)
