"""The invariant that a patch cannot get lost, checked from git's own state.

Every commit of the fork's stack (``base..start``) must be accounted for on the new branch:

* ``applied``  a commit with the same author, date and subject (a rebase keeps them) or the
  same patch id is there;
* ``resolved`` the rebase stopped on it, the person resolved it and ran --continue, and the
  commit git made from that (same author, date and subject) is there;
* ``emptied``  ... the person's resolution left nothing to commit (shown in the report);
* ``skipped``  the person ran ``--skip`` on it (recorded then);
* ``upstream`` its patch id is in ``base..tag``: upstream already has it;
* ``missing``  anything else. A run is never "done" while one is missing.

The new branch must also contain the upstream tag.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forkops.git import Repo
from forkops.upgrade.state import RepoState


class Fate(enum.StrEnum):
    APPLIED = "applied"
    RESOLVED = "resolved"
    EMPTIED = "emptied"
    SKIPPED = "skipped"
    UPSTREAM = "upstream"
    MISSING = "missing"


@dataclass(frozen=True)
class Entry:
    sha: str
    subject: str
    fate: Fate
    new: str | None  # the commit on the new branch that carries it

    def as_json(self) -> dict[str, str | None]:
        return {"sha": self.sha, "subject": self.subject, "fate": str(self.fate), "new": self.new}


@dataclass(frozen=True)
class Accounting:
    tip: str | None
    contains_tag: bool
    entries: tuple[Entry, ...]

    @property
    def missing(self) -> list[Entry]:
        return [e for e in self.entries if e.fate is Fate.MISSING]

    @property
    def ok(self) -> bool:
        return self.contains_tag and not self.missing

    def of(self, fate: Fate) -> list[Entry]:
        return [e for e in self.entries if e.fate is fate]


_MEMO: dict[tuple[object, ...], Accounting] = {}


def account(repo: Repo, st: RepoState) -> Accounting:
    """Where each commit of ``st.picked`` went on ``st.branch`` (four git processes; two more
    when a commit has no counterpart, to look for it upstream). The answer depends only on the
    branch tip and the recorded decisions: it is computed once per process for each."""
    def key(tip: str | None) -> tuple[object, ...]:
        return (str(repo.git_dir), tip, st.onto_sha, tuple(st.picked), tuple(st.skipped),
                tuple((s.commit, s.resolved) for s in st.stops))

    # The branch's loose ref file names the tip without a git process: the report at the end
    # of a run repeats the accounting its last step made, at no cost.
    known = _MEMO.get(key(loose)) if (loose := repo.loose_ref(st.branch_ref)) else None
    if known is not None:
        return known
    tip, contains_tag = repo.tip_containing(st.branch_ref, st.onto_sha)
    if key(tip) not in _MEMO:
        _MEMO[key(tip)] = _account(repo, st, tip, contains_tag=contains_tag)
    return _MEMO[key(tip)]


def _account(repo: Repo, st: RepoState, tip: str | None, *, contains_tag: bool) -> Accounting:
    if tip is None or not contains_tag:
        infos = {i.sha: i for i in repo.commit_infos(st.picked)}
        return Accounting(tip, False, tuple(Entry(c, infos[c].subject if c in infos else "", Fate.MISSING, None)
                                            for c in st.picked))
    new = repo.rev_list("--no-merges", f"{st.onto_sha}..{tip}")
    found, ids = repo.commits_with_patch_ids([*st.picked, *new])
    infos = {i.sha: i for i in found}
    new_by_id = {ids[n]: n for n in new if n in ids}
    new_by_ident = {(infos[n].ident, infos[n].subject): n for n in new if n in infos}
    entries: dict[str, Entry] = {}
    unresolved: list[str] = []
    for c in st.picked:
        info = infos[c]
        same = new_by_ident.get((info.ident, info.subject))
        stop = st.stop_for(c)
        # A rebase keeps author, date and message: that finds a pick whose context changed
        # (another patch id); the patch id finds one whose message was edited.
        carried = same if same is not None else new_by_id.get(ids[c]) if c in ids else None
        resolved = stop is not None and stop.resolved
        if carried is not None:
            entries[c] = Entry(c, info.subject, Fate.RESOLVED if resolved else Fate.APPLIED, carried)
        elif c in st.skipped:
            entries[c] = Entry(c, info.subject, Fate.SKIPPED, None)
        elif resolved:
            entries[c] = Entry(c, info.subject, Fate.EMPTIED, None)
        else:
            unresolved.append(c)
    if unresolved:
        paths = sorted({p for ps in repo.changed_paths(unresolved).values() for p in ps})
        upstream = repo.upstream_patch_ids(st.base_sha, st.onto_sha, paths)
        for c in unresolved:
            fate = Fate.UPSTREAM if ids.get(c) in upstream else Fate.MISSING
            entries[c] = Entry(c, infos[c].subject, fate, None)
    return Accounting(tip, True, tuple(entries[c] for c in st.picked))


def restore_command(st: RepoState, entry: Entry) -> str:
    """What puts a missing commit back (on the new branch), or accepts its loss."""
    return (f"git checkout {st.branch} && git cherry-pick {entry.sha[:12]}, then `forkops upgrade --continue` "
            f"(or `forkops upgrade --skip` to drop it on record)")
