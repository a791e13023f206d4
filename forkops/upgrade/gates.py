"""Gates before anything is committed or published (issue 10 part 3).

* Markers and whitespace: ``git diff --check`` of what would be committed (the staged content
  at a stop, a file forkops commits, the whole new stack before a push). A problem the fork's
  own commit already had (a reStructuredText ``=======`` line, its trailing blanks) is not new
  and passes; any other one refuses with ``file:line``.
* The key: rebase commits run no pre-commit hook, so every commit the run creates and the
  staged content at each ``--continue`` are scanned with the commit guard's matcher
  (``forkops.secrets.Matcher`` / ``scan_staged`` / ``scan_commits``). A hit names the commit and
  the file, never the key.
"""

from __future__ import annotations

from collections.abc import Sequence

from forkops import keyfile
from forkops.errors import ForkopsError
from forkops.git import DiffProblem, Repo
from forkops.keyfile import KeyMaterial
from forkops.workspace import Workspace


def key_material(ws: Workspace) -> KeyMaterial | None:
    """The workspace's key when a usable keys file exists (only to recognise it in content)."""
    try:
        return keyfile.find(None, ws.root, required=False)
    except ForkopsError:
        return None


def _new_problems(found: Sequence[DiffProblem], known: Sequence[DiffProblem]) -> list[DiffProblem]:
    seen = {(p.path, p.problem, p.text) for p in known}
    return [p for p in found if (p.path, p.problem, p.text) not in seen]


def staged_problems(repo: Repo, original: str | None) -> list[str]:
    """Problems in the staged content against HEAD that ``original`` (the fork commit being
    replayed) did not already have; ``file:line: problem`` each."""
    found = repo.diff_check("--cached", "HEAD", "--")
    if not found:
        return []
    known = repo.diff_check(f"{original}^", original, "--") if original else []
    return [p.describe() for p in _new_problems(found, known)]


def stack_problems(repo: Repo, onto: str, tip: str, base: str, start: str) -> list[str]:
    """Problems the new stack (onto..tip) has that the old one (base..start) did not."""
    found = repo.diff_check(onto, tip, "--")
    if not found:
        return []
    return [p.describe() for p in _new_problems(found, repo.diff_check(base, start, "--"))]


def _known(repo: Repo, matcher: object, known: list[str]) -> set[tuple[str, str]]:
    from forkops.guard import scan_commits
    from forkops.secrets import Matcher

    assert isinstance(matcher, Matcher)
    return {(f.path, f.what) for f in scan_commits(repo, known, matcher)[1]} if known else set()


def staged_key_hits(repo: Repo, material: KeyMaterial | None, known: list[str]) -> list[str]:
    """The key in the staged content, where the commits ``known`` (the old stack: an old-style
    fork hard-codes the key in its own commits) did not already hold it in that file."""
    if material is None:
        return []
    from forkops.guard import scan_staged
    from forkops.secrets import Matcher

    matcher = Matcher(material)
    found = scan_staged(repo, matcher)
    if not found:
        return []
    seen = _known(repo, matcher, known)
    return [f.describe() for f in found if (f.path, f.what) not in seen]


def commit_key_hits(repo: Repo, material: KeyMaterial | None, revs: list[str], known: list[str], *,
                    by_path: bool = True) -> list[str]:
    """Findings in the commits ``revs`` selects (e.g. ``["^START", "^ONTO", "BRANCH"]``: the
    commits the run created), except in files where the commits ``known`` already held it
    (``by_path=False``: except when they held it anywhere, for a patch moved to another file)."""
    if material is None:
        return []
    from forkops.guard import scan_commits
    from forkops.secrets import Matcher

    matcher = Matcher(material)
    found = scan_commits(repo, revs, matcher)[1]
    if not found:
        return []
    seen = _known(repo, matcher, known)
    if not by_path:
        whats = {what for _path, what in seen}
        return [f.describe() for f in found if f.what not in whats]
    return [f.describe() for f in found if (f.path, f.what) not in seen]
