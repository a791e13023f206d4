"""Key site values and the key itself masked out of text forkops shows or stores (an anchor
failure shows the fork's diff of a file that old-style forks hard-code the key in)."""

from __future__ import annotations

from forkops.keyfile import KeyMaterial
from forkops.playbook import Playbook

MASKED = "<key site: masked>"


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
        spans += [m.span("value") for m in site.regex.finditer(text)]
        spans += [(where[m.start("value")], where[m.end("value")]) for m in site.regex.finditer(plain)]
    return spans


def mask_secrets(text: str, pb: Playbook, material: KeyMaterial | None) -> str:
    """``text`` (e.g. the fork's diff of a key site file, shown and stored on an anchor failure)
    with every key site value replaced by ``<key site: masked>``; with ``material``, every line
    that still holds the key or IV in a form the commit guard knows is replaced too, and a text
    that holds it across lines even then is withheld whole."""
    spans = sorted(_site_value_spans(text, pb))
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in reversed(merged):
        text = text[:a] + MASKED + text[b:]
    if material is None:
        return text
    from forkops.secrets import Matcher

    matcher = Matcher(material)
    lines = []
    for line in text.splitlines(keepends=True):
        if matcher.find(line.encode("utf-8", "surrogateescape")):
            mark = line[:1] if line[:1] in ("+", "-", " ") else ""
            line = f"{mark}<line masked: it holds the key>" + ("\n" if line.endswith("\n") else "")
        lines.append(line)
    text = "".join(lines)
    plain = "".join(ln[1:] if ln[:1] in ("+", "-", " ") else ln for ln in text.splitlines(keepends=True))
    if any(matcher.find(t.encode("utf-8", "surrogateescape")) for t in (text, plain)):
        return "<the fork's change is withheld: it holds the key>"
    return text
