"""Masking: the secrets replaced by ``<key FP>`` / ``<iv FP>`` in a text, a blob or a log stream.

Invariant of every function here: what it returns holds no secret the
:class:`~forkops.secrets.Matcher` finds. A hit that survives replacement (it cannot, but the
check is cheap) withholds the whole text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forkops.secrets.matcher import Hit, Matcher

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.playbook import Playbook

MASKED_SITE = "<key site: masked>"


def _merge(hits: list[Hit]) -> list[tuple[int, int, str]]:
    merged: list[tuple[int, int, str]] = []
    for h in sorted(hits, key=lambda h: (h.start, -h.end)):
        label = f"<{h.what} {h.fingerprint}>"
        if merged and h.start < merged[-1][1]:
            a, b, first = merged[-1]
            merged[-1] = (a, max(b, h.end), first)
        else:
            merged.append((h.start, h.end, label))
    return merged


def _withheld(matcher: Matcher) -> str:
    return "<withheld: it holds key material (" + ", ".join(
        f"{s.what} {s.fingerprint}" for s in matcher.secrets) + ")>"


def mask_bytes(data: bytes, matcher: Matcher) -> bytes:
    """``data`` with every hit replaced by its label."""
    out, pos = bytearray(), 0
    for a, b, label in _merge(matcher.spans(data)):
        out += data[pos:a] + label.encode()
        pos = b
    out += data[pos:]
    if matcher.first(bytes(out)) is not None:
        return _withheld(matcher).encode()
    return bytes(out)


def mask_text(text: str, matcher: Matcher) -> str:
    """``text`` with every hit replaced by its label."""
    parts, pos = [], 0
    for a, b, label in _merge(matcher.text_spans(text)):
        parts += [text[pos:a], label]
        pos = b
    parts.append(text[pos:])
    out = "".join(parts)
    if matcher.text_spans(out):
        return _withheld(matcher)
    return out


def _site_value_spans(text: str, pb: Playbook) -> list[tuple[int, int]]:
    """Spans of every key site's ``value`` group in ``text``, also where the text is a diff:
    each line is matched once more without its ``+``/``-``/`` `` column (a pattern anchored
    with ``^`` would miss it otherwise), and those spans are mapped back."""
    stripped: list[str] = []
    where: list[int] = []  # original offset of each character of the stripped text
    pos = 0
    for line in text.splitlines(keepends=True):
        cut = 1 if line[:1] in ("+", "-", " ") else 0
        stripped.append(line[cut:])
        where.extend(range(pos + cut, pos + len(line)))
        pos += len(line)
    where.append(pos)
    plain = "".join(stripped)
    spans = []
    for site in pb.key_sites:
        spans += [m.span("value") for m in site.matches(text, "diff")]
        spans += [(where[m.start("value")], where[m.end("value")]) for m in site.matches(plain, "diff")]
    return spans


def mask_secrets(text: str, pb: Playbook, material: KeyMaterial | None) -> str:
    """``text`` (e.g. the fork's diff of a key site file, shown and stored on an anchor failure)
    with every key site value replaced by ``<key site: masked>``, and with ``material`` every
    occurrence of the key or IV, in any form the matcher knows, also when a diff splits it
    over lines (each line's ``+``/``-``/`` `` column is looked through)."""
    merged: list[list[int]] = []
    for a, b in sorted(_site_value_spans(text, pb)):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in reversed(merged):
        text = text[:a] + MASKED_SITE + text[b:]
    if material is None:
        return text
    matcher = Matcher(material)
    text = mask_text(text, matcher)
    # A diff's column characters sit between the pieces of a secret split over lines.
    lines = text.splitlines(keepends=True)
    plain = "".join(ln[1:] if ln[:1] in ("+", "-", " ") else ln for ln in lines)
    if matcher.text_spans(plain):
        return "<the change is withheld: it holds the key>"
    return text
