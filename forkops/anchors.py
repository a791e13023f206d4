"""Patch anchors (SPEC section 4), evaluated on any tree-ish without a worktree.

An anchor says: the function defining ``symbol`` must contain ``must_contain``. The symbol is
located with ``git grep`` across the whole tree, so a moved file is found; the playbook's
``locations`` say which definition is the compiled one when several files define it (upstream
sometimes leaves the old copy behind, and a rebase then applies "cleanly" to a dead file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forkops.git import Repo
from forkops.playbook import Anchor
from forkops.version import Version


@dataclass(frozen=True)
class AnchorResult:
    name: str
    ok: bool
    path: str | None  # the definition that counts (None when not found or ambiguous)
    defined_in: tuple[str, ...] = ()  # every file that defines the symbol
    patched_in: tuple[str, ...] = ()  # files whose definition satisfies must_contain
    expected: tuple[str, ...] = ()  # where the playbook says it lives for this version
    detail: str = ""

    @property
    def left_behind(self) -> tuple[str, ...]:
        """Files where the patch still sits although the live definition is elsewhere."""
        return tuple(p for p in self.patched_in if p != self.path)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "ok": self.ok, "path": self.path, "defined_in": list(self.defined_in),
            "patched_in": list(self.patched_in), "expected": list(self.expected), "detail": self.detail,
        }


def function_body(text: str, start: int) -> str | None:
    """The brace-balanced block following offset ``start`` (the definition's match)."""
    open_at = text.find("{", start)
    semicolon = text.find(";", start)
    if open_at < 0 or (0 <= semicolon < open_at):
        return None  # a declaration, not a definition
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at : i + 1]
    return text[open_at:]


def definitions(repo: Repo, treeish: str, anchor: Anchor) -> dict[str, str]:
    """path -> function body, for every file in ``treeish`` that defines the anchor's symbol."""
    found: dict[str, str] = {}
    definition = re.compile(anchor.definition, re.MULTILINE)
    for path in repo.grep_files(treeish, anchor.symbol, fixed=True):
        blob = repo.show_file(treeish, path)
        if blob is None:
            continue
        text = blob.decode("utf-8", "replace")
        for m in definition.finditer(text):
            body = function_body(text, m.end())
            if body is not None:
                found[path] = body
                break
    return found


def check(repo: Repo, treeish: str, anchor: Anchor, version: Version | None) -> AnchorResult:
    defs = definitions(repo, treeish, anchor)
    must = re.compile(anchor.must_contain, re.MULTILINE)
    patched = tuple(sorted(p for p, body in defs.items() if must.search(body)))
    expected = tuple(anchor.expected_paths(version)) if version is not None else ()
    defined = tuple(sorted(defs))

    def result(ok: bool, path: str | None, detail: str) -> AnchorResult:  # noqa: FBT001
        return AnchorResult(anchor.name, ok, path, defined, patched, expected, detail)

    if not defs:
        return result(False, None, f"{anchor.symbol} is not defined anywhere")
    live_candidates = [p for p in expected if p in defs] or (list(defined) if len(defined) == 1 else [])
    if not live_candidates:
        return result(False, None, f"{anchor.symbol} is defined in {', '.join(defined)}; "
                      f"the playbook names none of them for {version}")
    live = live_candidates[0]
    if live in patched:
        note = "" if not expected or live in expected else (
            f" (not where the playbook expects: {', '.join(expected)})")
        return result(True, live, f"{anchor.symbol} in {live} is patched{note}")
    if patched:
        return result(False, live, f"{anchor.symbol} now lives in {live}; "
                      f"the patch stayed behind in {', '.join(patched)}")
    return result(False, live, f"{anchor.symbol} in {live} does not match /{anchor.must_contain}/")


def check_all(repo: Repo, treeish: str, anchors: tuple[Anchor, ...], version: Version | None) -> list[AnchorResult]:
    return [check(repo, treeish, a, version) for a in anchors]
