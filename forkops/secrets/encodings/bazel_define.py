"""``bazel-define``: the bare value of ``build --define=NAME=VALUE`` in a ``.bazelrc``.

The value must survive Bazel's rc tokenizer, a genrule's shell and a ``-D`` copt, so only
letters, digits and ``-_.+:@%,/=~^`` are written; it may be read quoted.
"""

from __future__ import annotations

import re
import string

from forkops.secrets.encodings import Spelling, Unencodable

NAME = "bazel-define"

_SAFE = frozenset(string.ascii_letters + string.digits + "-_.+:@%,/=~^")
_SAFE_TEXT = "letters, digits and -_.+:@%,/=~^"


def encode(value: bytes) -> str:
    if value and all(chr(b) in _SAFE for b in value):
        return value.decode("ascii")
    raise Unencodable(f"a Bazel define can only carry {_SAFE_TEXT}; this value has other bytes "
                      "(a key_hex key): use a printable key (`forkops set-key --generate` without --hex)")


def decode(text: str) -> bytes:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text.encode("utf-8", "surrogateescape")


def spellings(secret: bytes) -> list[Spelling]:
    # The value is the raw bytes, quoted or not: the raw text form finds it.
    return [Spelling("text", re.escape(secret))]
