"""Redaction of a line stream (build logs): a secret split across output lines is caught.

Per-line redaction misses ``...KEY_FIRST_HALF\\n`` + ``SECOND_HALF...``. The redactor holds
the newest ``hold`` lines back and matches the window they form together; a line is released
only when ``hold`` newer lines have arrived (or at :meth:`StreamRedactor.flush`), so every
secret written over at most ``hold + 1`` lines is masked in each line it touches before any of
them is released. The cost: live output lags ``hold`` lines behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forkops.secrets.mask import _merge, _withheld
from forkops.secrets.matcher import Matcher

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial

HOLD_LINES = 16  # a 16-byte key written one array element per line still fits


def _body_end(line: bytes) -> int:
    return len(line.rstrip(b"\r\n"))


class StreamRedactor:
    """``feed`` lines (bytes, with their line ends) in, get released lines out; ``flush`` at
    the end of the stream. Invariant: the concatenation of released lines holds no secret the
    matcher finds within any ``hold + 1`` consecutive lines."""

    def __init__(self, material: KeyMaterial | Matcher, *, hold: int = HOLD_LINES) -> None:
        self.matcher = material if isinstance(material, Matcher) else Matcher(material)
        self.hold = hold
        self._held: list[bytes] = []

    def feed(self, line: bytes) -> list[bytes]:
        self._held.append(line)
        self._mask_window()
        out: list[bytes] = []
        while len(self._held) > self.hold:
            out.append(self._held.pop(0))
        return out

    def flush(self) -> list[bytes]:
        out, self._held = self._held, []
        return out

    def _mask_window(self) -> None:
        # Matched without the line ends, so a secret a tool wrapped over lines is whole again.
        bodies = [line[:_body_end(line)] for line in self._held]
        hits = self.matcher.spans(b"".join(bodies))
        if not hits:
            return
        starts, pos = [], 0
        for body in bodies:
            starts.append(pos)
            pos += len(body)
        new = list(bodies)
        for a, b, label in reversed(_merge(hits)):  # from the end: earlier offsets stay valid
            labelled = False
            for i, s in enumerate(starts):
                lo, hi = max(a, s) - s, min(b, s + len(bodies[i])) - s
                if lo >= hi:
                    continue
                new[i] = new[i][:lo] + (b"" if labelled else label.encode()) + new[i][hi:]
                labelled = True
        if self.matcher.first(b"".join(new)) is not None:
            new = [_withheld(self.matcher).encode() for _ in new]
        self._held = [body + line[_body_end(line):] for body, line in zip(new, self._held, strict=True)]
