"""Exact conflict prediction: what ``git rebase --onto TAG BASE START`` would do, without doing it.

The rebase is simulated commit by commit with ``git merge-tree --write-tree`` (merge-ort, the
machinery ``git rebase`` itself uses, renames followed the same way). For each patch P of the
stack ``BASE..START`` (``git rev-list --reverse --no-merges``, exactly the rebase todo list) the
accumulated result is merged with P using P's parent as the merge base:

* git >= 2.40: ``merge-tree --write-tree --merge-base=P^ ACC P``;
* git 2.39 (no ``--merge-base``): two throw-away commits whose only common ancestor ``B`` has
  the tree of ``P^`` -- ``OURS = ACC_TREE + parent B``, ``THEIRS = P^{tree} + parent B`` -- so
  merge-tree's merge-base computation finds ``B`` and runs the same three-way merge.

Outcome, as a real rebase reports it: the first patch whose merge has conflicts (its sha,
subject, n of total) and exactly its unmerged paths; patches whose result tree equals the
accumulated tree are *dropped* (``--empty=drop``, git's default); a patch that was empty to
begin with is kept (git >= 2.26 keeps commits that start empty). ``git rebase --onto`` looks for
already-applied patches (patch-id) only between ``<upstream>`` (= BASE) and START; BASE is an
ancestor of START, so that set is always empty and nothing is skipped up front -- a patch that
is already upstream shows up as *dropped*, just as in the real rebase.

Beyond what git says: each stop's files carry the move git followed and the upstream commits
behind the conflict (:func:`conflict_contexts`); each result its API drift (forkops.drift) and
the anchors (forkops.anchors) on the predicted tree, a failed one naming the fork commits it
misses. :meth:`Simulator._step` is the one place a replayed patch's outcome is decided.

Invariants (what "nothing left behind" means):

* no worktree, no index, no ref is touched; every object the simulation writes (merged blobs,
  trees, the throw-away commits) goes to a temporary object directory that has the repository
  as an alternate (``GIT_OBJECT_DIRECTORY`` + ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` passed
  explicitly to :class:`forkops.git.Repo`, which applies explicit variables after stripping
  inherited ones) and is deleted afterwards;
* :func:`check_repo` may add or update the playbook's upstream remote (the documented flow's
  ``git remote add tf``) and fetch the upstream release tags it predicts into ``refs/tags``;
  that is the only thing it writes to the repository.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

from forkops import anchors as anchors_mod
from forkops import drift as drift_mod
from forkops import git, plan
from forkops import resolutions as resolutions_mod
from forkops.errors import BadInput, GitError
from forkops.git import Repo, conflict_kind
from forkops.playbook import Anchor, DriftSpec, Playbook
from forkops.version import TagName, Version, nearest

Strategy = Literal["merge-base", "fake-base"]
STRATEGIES: tuple[Strategy, ...] = ("merge-base", "fake-base")

# The throw-away commits are deterministic (fixed identity and date): the same prediction
# writes the same objects, and no user configuration (user.name may be unset in CI) is needed.
_SIM_IDENTITY = {
    "GIT_AUTHOR_NAME": "forkops", "GIT_AUTHOR_EMAIL": "forkops@localhost",
    "GIT_COMMITTER_NAME": "forkops", "GIT_COMMITTER_EMAIL": "forkops@localhost",
    "GIT_AUTHOR_DATE": "1700000000 +0000", "GIT_COMMITTER_DATE": "1700000000 +0000",
}


# Where the temporary object directory goes: a RAM-backed folder when there is one, since a
# prediction writes and then deletes thousands of small loose objects (unlinking them on a disk
# mounted with `discard` costs ~1 ms each); else the usual temporary folder. mkdtemp makes a
# private (0700) directory with an unpredictable name, so a shared folder is safe.
SCRATCH_CANDIDATES: tuple[str, ...] = ("/dev/shm",)  # noqa: S108 (mkdtemp: private 0700 dir)


# A merge-tree process costs about as much as a few of its merges: fewer merges than twice
# this stay in one process rather than being shared among workers.
_MERGES_PER_PROCESS = 4


def _scratch_parent() -> str | None:
    for candidate in SCRATCH_CANDIDATES:
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def default_strategy() -> Strategy:
    return "merge-base" if git.has_merge_base_option() else "fake-base"


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """One commit of the fork's patch stack."""

    sha: str
    subject: str
    parent: str
    tree: str
    parent_tree: str

    @property
    def starts_empty(self) -> bool:
        return self.tree == self.parent_tree


@dataclass(frozen=True)
class ContextCommit:
    """An upstream commit of ``base..tag`` that changed a conflicting file."""

    sha: str
    subject: str

    def as_json(self) -> dict[str, str]:
        return {"sha": self.sha, "subject": self.subject}


@dataclass(frozen=True)
class Conflict:
    path: str
    kind: str  # content, add/add, modify/delete, delete/modify, rename -- git.conflict_kind
    # Where the stopping commit had the file when git followed upstream's move of it.
    moved_from: str | None = None
    # Newest first, at most CONTEXT_COMMITS: the upstream commits that touched the lines the
    # fork's commit changes ("lines"), or the file when those cannot be traced ("file").
    context: tuple[ContextCommit, ...] = ()
    context_scope: Literal["lines", "file", ""] = ""

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "kind": self.kind, "moved_from": self.moved_from,
                "context": [c.as_json() for c in self.context], "context_scope": self.context_scope}

    def describe(self) -> str:
        return f"{self.moved_from} → {self.path}" if self.moved_from else self.path


@dataclass(frozen=True)
class StoppedAt:
    sha: str
    subject: str
    index: int  # 1-based, as git prints "Rebasing (3/5)"
    total: int

    def as_json(self) -> dict[str, object]:
        return {"sha": self.sha, "subject": self.subject, "index": self.index, "total": self.total}


@dataclass(frozen=True)
class ResolvedStop:
    """A stop the simulation went past with recorded resolutions (forkops.resolutions)."""

    stopped_at: StoppedAt
    applied: tuple[resolutions_mod.Applied, ...]

    def as_json(self) -> dict[str, object]:
        return {"commit": self.stopped_at.as_json(), "files": [a.as_json() for a in self.applied]}


@dataclass(frozen=True)
class Prediction:
    """What rebasing the stack onto one tag does.

    ``tree`` is the tree HEAD has when the rebase ends: the final result when clean, the result
    of the patches before the stopping one when it stops (what ``git rebase`` leaves in HEAD)."""

    tag: TagName
    version: Version | None
    onto: str  # the commit the tag peels to
    total: int
    stopped_at: StoppedAt | None = None
    conflicts: tuple[Conflict, ...] = ()
    dropped: tuple[Patch, ...] = ()
    tree: str | None = None
    anchors: tuple[anchors_mod.AnchorResult, ...] = ()  # on the predicted tree (clean only)
    upstream_anchors: tuple[anchors_mod.AnchorResult, ...] = ()  # on the tag itself
    # Uses of upstream names gone at this tag, in the fork's lines of ``tree`` (clean or not).
    drift: tuple[drift_mod.Drift, ...] = ()
    seconds: float = 0.0
    resolved: tuple[ResolvedStop, ...] = ()  # stops recorded resolutions got past, in order

    @property
    def rebase(self) -> Literal["clean", "resolved", "conflict"]:
        """What ``git rebase`` does: stops on a conflict, or finishes -- on its own (clean) or
        with recorded resolutions applied at its stops, as ``forkops upgrade`` applies them."""
        if self.stopped_at is not None:
            return "conflict"
        return "resolved" if self.resolved else "clean"

    @property
    def status(self) -> Literal["clean", "resolved", "conflict", "drift"]:
        """``drift``: the rebase finishes but the result uses names upstream removed."""
        if self.rebase != "conflict" and self.drift:
            return "drift"
        return self.rebase

    @property
    def anchors_ok(self) -> bool:
        return all(a.ok for a in self.anchors)

    @property
    def warnings(self) -> list[str]:
        """What needs no person now but deserves a look: patched copies of an anchored
        function left in files that are not its live definition (dead code)."""
        return [f"{a.name}: a patched copy stays in {p}, which is not the live definition ({a.path})"
                for a in self.anchors for p in a.dead_copies]

    @property
    def compatible(self) -> bool:
        """Rebases cleanly and every anchor holds on the result: no person needed."""
        return self.status in ("clean", "resolved") and self.anchors_ok

    @property
    def conflict_paths(self) -> list[str]:
        return [c.path for c in self.conflicts]

    def as_json(self) -> dict[str, object]:
        return {
            "tag": str(self.tag),
            "version": str(self.version) if self.version else None,
            "onto": self.onto,
            "status": self.status,
            "recorded": bool(self.resolved),
            "resolved": [r.as_json() for r in self.resolved],
            "compatible": self.compatible,
            "commit": self.stopped_at.as_json() if self.stopped_at else None,
            "conflicts": self.conflict_paths,
            "conflict_kinds": [c.as_json() for c in self.conflicts],
            "dropped": [{"sha": p.sha, "subject": p.subject} for p in self.dropped],
            "tree": self.tree,
            "anchors": [a.as_json() for a in self.anchors],
            "upstream_anchors": [a.as_json() for a in self.upstream_anchors],
            "drift": [d.as_json() for d in self.drift],
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class RepoCheck:
    """``forkops check`` for one repository."""

    repo: str
    refs: plan.StackRefs
    patches: tuple[Patch, ...]
    results: tuple[Prediction, ...] = field(default=())
    strategy: Strategy = "fake-base"

    @property
    def compatible(self) -> bool:
        return all(r.compatible for r in self.results)

    def as_json(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "start": self.refs.start,
            "start_sha": self.refs.start_sha,
            "base": str(self.refs.base),
            "base_sha": self.refs.base_sha,
            "patches": [{"sha": p.sha, "subject": p.subject} for p in self.patches],
            "strategy": self.strategy,
            "results": [r.as_json() for r in self.results],
        }


# ---------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------
def load_patches(repo: Repo, shas: Sequence[str]) -> list[Patch]:
    """Details of ``shas`` (kept in order) in two git calls."""
    if not shas:
        return []
    out = repo.run("log", "--no-walk=unsorted", "--format=%H%x00%T%x00%P%x00%s", *shas)
    rows = [line.split("\0") for line in out.splitlines() if line]
    parents: list[str] = []
    for sha, _tree, parent_list, _subject in rows:
        if not parent_list:
            raise BadInput(f"the patch stack contains a root commit ({sha[:12]}); git rebase --onto "
                           "cannot replay it")
        parents.append(parent_list.split()[0])
    parent_trees = repo.lines("rev-parse", *(f"{p}^{{tree}}" for p in parents))
    return [Patch(sha, subject, parent, tree, ptree)
            for (sha, tree, _p, subject), parent, ptree in zip(rows, parents, parent_trees, strict=True)]


def load_stack(repo: Repo, base: str, start: str) -> tuple[list[Patch], dict[str, str]]:
    """The patch stack ``base..start`` exactly as ``git rebase`` picks it (``rev-list
    --reverse --no-merges``), loaded as :func:`load_patches` loads it, and the trees of the
    boundary commits (``base`` when it is a patch's parent): one ``git log --boundary``
    (boundary commits come marked ``-``, the rest keep rev-list's order); a parent that is
    neither a patch nor on the boundary (a merge inside the range) costs one rev-parse more."""
    out = repo.run("log", "--boundary", "--reverse", "--no-merges", "--format=%m%x00%H%x00%T%x00%P%x00%s",
                   f"{base}..{start}")
    rows, boundary = [], {}
    for line in out.splitlines():
        if not line:
            continue
        mark, sha, tree, parents, subject = line.split("\0", 4)
        if mark == "-":
            boundary[sha] = tree
        else:
            rows.append((sha, tree, parents, subject))
    trees = {**boundary, **{sha: tree for sha, tree, _p, _s in rows}}
    firsts = []
    for sha, _tree, parent_list, _subject in rows:
        if not parent_list:
            raise BadInput(f"the patch stack contains a root commit ({sha[:12]}); git rebase --onto "
                           "cannot replay it")
        firsts.append(parent_list.split()[0])
    unknown = sorted({p for p in firsts if p not in trees})
    if unknown:
        trees.update(zip(unknown, repo.lines("rev-parse", *(f"{p}^{{tree}}" for p in unknown)), strict=True))
    patches = [Patch(sha, subject, parent, tree, trees[parent])
               for (sha, tree, _p, subject), parent in zip(rows, firsts, strict=True)]
    return patches, boundary


class Simulator:
    """Replays a patch stack onto any number of commits in a temporary object directory.

    Use as a context manager; the object directory is deleted on exit. ``predict`` may be
    called from several threads at once (git writes objects atomically).
    """

    def __init__(self, repo: Repo, patches: Sequence[Patch], *, strategy: Strategy | None = None,
                 resolutions: resolutions_mod.Book | None = None) -> None:
        self.strategy: Strategy = strategy or default_strategy()
        if self.strategy == "merge-base" and not git.has_merge_base_option():
            raise BadInput("git merge-tree --merge-base needs git >= 2.40 "
                           f"(this is {'.'.join(map(str, git.version()))})")
        self.user_repo = repo
        self.patches = tuple(patches)
        self.resolutions = resolutions
        self._tmp: Path | None = None
        self.repo = repo
        self._fake: dict[str, tuple[str, str]] = {}  # patch sha -> (B, THEIRS)

    def __enter__(self) -> Simulator:
        objects = self._objects_dir()
        self._tmp = Path(tempfile.mkdtemp(prefix="forkops-predict-", dir=_scratch_parent()))
        (self._tmp / "objects").mkdir()
        self.repo = Repo(self.user_repo.path, env={
            **self.user_repo.extra_env, **_SIM_IDENTITY,
            "GIT_OBJECT_DIRECTORY": str(self._tmp / "objects"),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
        })
        if self.strategy == "fake-base":
            # B and THEIRS depend only on the patch: made once, shared by every tag.
            bases = self._commits([(p.parent_tree, ()) for p in self.patches])
            theirs = self._commits([(p.tree, (b,)) for p, b in zip(self.patches, bases, strict=True)])
            self._fake = {p.sha: (b, t) for p, b, t in zip(self.patches, bases, theirs, strict=True)}
        return self

    def _objects_dir(self) -> Path:
        """The repository's object directory: ``<git dir>/objects`` for a plain clone (its git
        directory is known already); ``git rev-parse --git-path objects`` when a linked
        worktree (``commondir``) or GIT_OBJECT_DIRECTORY may put it elsewhere."""
        git_dir = self.user_repo.git_dir
        if "GIT_OBJECT_DIRECTORY" not in self.user_repo.extra_env and not (git_dir / "commondir").exists():
            return git_dir / "objects"
        objects = Path(self.user_repo.run("rev-parse", "--git-path", "objects").strip())
        return objects if objects.is_absolute() else (self.user_repo.path / objects).resolve()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.repo = self.user_repo

    def _commits(self, specs: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        """Write one commit per (tree, parents) into the temporary object directory; return
        their shas.

        The objects are exactly what ``git commit-tree -m 'forkops prediction'`` writes under
        the fixed identity. Written here rather than by a git process: a check over 40 tags
        needs hundreds of them, a step at a time, and a process per step costs more than the
        merges.
        """
        ident = "forkops <forkops@localhost> 1700000000 +0000"
        return self._write_objects("commit", [
            (f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
             + f"author {ident}\ncommitter {ident}\n\nforkops prediction\n").encode() for tree, parents in specs])

    def _write_objects(self, kind: str, bodies: Sequence[bytes]) -> list[str]:
        """Write objects of type ``kind`` into the temporary object directory as git does (a
        loose object: zlib of ``<kind> <size>\\0<body>``, named by its hash in the repository's
        object format, SHA-1 or SHA-256 as the patches' ids' length says); their ids, in order.
        A :data:`forkops.resolutions.ObjectWriter`."""
        assert self._tmp is not None, "use Simulator as a context manager"
        objects = self._tmp / "objects"
        algo = "sha256" if self.patches and len(self.patches[0].sha) == 64 else "sha1"
        shas = []
        for body in bodies:
            data = b"%s %d\0" % (kind.encode(), len(body)) + body
            sha = hashlib.new(algo, data).hexdigest()
            path = objects / sha[:2] / sha[2:]
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                part = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                part.write_bytes(zlib.compress(data, 1))
                os.replace(part, path)  # git may read it from another thread's merge: whole or absent
            shas.append(sha)
        return shas

    def _merge(self, ours: str, patch: Patch) -> tuple[str, list[Conflict], list[str]]:
        """Three-way merge of ``ours`` (a commit with the accumulated tree) with ``patch`` over
        the patch's parent (merge-base strategy). Returns the result tree (with conflict
        markers where it conflicts), the conflicts (empty when clean) and merge-tree's
        conflicted-file entries (``MODE OID STAGE<TAB>PATH``)."""
        args = ["merge-tree", "--write-tree", "-z", "--no-messages",
                f"--merge-base={patch.parent}", ours, patch.sha]
        proc = self.repo.run_raw(*args)
        if proc.returncode not in (0, 1):
            raise GitError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
        if proc.returncode == 0:
            return fields[0].strip(), [], []
        return fields[0].strip(), _conflicts(fields[1:]), fields[1:]

    def _merge_batch(self, ours: Sequence[str], patch: Patch, *, pool: ThreadPoolExecutor | None = None,
                     workers: int = 1) -> list[tuple[str, list[Conflict], list[str]]]:
        """The fake-base merges of one step (``ours`` are commits whose parent is the patch's
        B; the other side is the patch's THEIRS): one ``git merge-tree --stdin`` for all, or,
        with a ``pool``, one per worker side by side when there are enough merges to share."""
        chunk = -(-len(ours) // workers)
        if pool is None or workers < 2 or len(ours) < 2 * _MERGES_PER_PROCESS:
            return self._merge_stdin(ours, patch)
        parts = [ours[i:i + chunk] for i in range(0, len(ours), chunk)]
        return [m for part in pool.map(self._merge_stdin, parts, [patch] * len(parts)) for m in part]

    def _merge_stdin(self, ours: Sequence[str], patch: Patch) -> list[tuple[str, list[Conflict], list[str]]]:
        """Merges of ``ours`` with the patch's THEIRS in one ``git merge-tree --stdin``.

        Output per merge (``-z``): ``STATUS NUL TREE NUL [ENTRY NUL ...] NUL``, STATUS 1 when
        clean, 0 when it conflicts."""
        theirs = self._fake[patch.sha][1]
        args = ["merge-tree", "--stdin", "--write-tree", "-z", "--no-messages"]
        proc = self.repo.run_raw(*args, input="".join(f"{o} {theirs}\n" for o in ours))
        if proc.returncode != 0:
            raise GitError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        fields = iter(proc.stdout.decode("utf-8", "surrogateescape").split("\0"))
        out = []
        for _ in ours:
            status, tree = next(fields), next(fields)
            entries = list(iter(fields.__next__, ""))
            if status not in ("0", "1"):
                raise GitError(args, 0, f"unexpected merge-tree --stdin output: {status!r}")
            out.append((tree, _conflicts(entries), entries) if status == "0" else (tree, [], []))
        return out

    def predict(self, tag: TagName, onto: str, version: Version | None) -> Prediction:
        """Replay the stack onto commit ``onto`` and report like ``git rebase`` would."""
        return self.predict_many([(tag, onto, version)], workers=1)[0]

    def predict_many(self, targets: Sequence[tuple[TagName, str, Version | None]], *,
                     anchors: Sequence[Anchor] = (), workers: int | None = None,
                     base: str | None = None, drift: DriftSpec | None = None,
                     trees: Mapping[str, str] | None = None) -> list[Prediction]:
        """Predict every (tag, commit, version); anchors are evaluated on each clean result and
        on each tag; with ``base`` (the tag the stack was cut from) and an enabled ``drift``
        scope, API drift on every result; with ``base``, each stop's conflicts carry their
        moves and context (:func:`conflict_context`). Results are in the order of ``targets``.
        ``trees``: commit -> tree, for commits whose trees the caller already knows.

        The tags advance in lockstep, one patch at a time, so that the commits each step needs
        are written in one git call and its merges run in ``merge-tree --stdin`` (one process
        per worker; threads for the merge-base strategy, whose ``--stdin`` lines cannot name a
        merge base). Then the stops' context, the anchors and the drift -- independent reads
        of the results -- run side by side."""
        began = time.perf_counter()
        n = workers or min(4, os.cpu_count() or 1, max(1, len(targets)))
        tree_of = dict(trees or {})
        unknown = list(dict.fromkeys(c for c in [*(t[1] for t in targets), *([base] if base else [])]
                                     if c not in tree_of))
        if unknown:
            tree_of.update(zip(unknown, self.repo.lines("rev-parse", *(f"{c}^{{tree}}" for c in unknown)), strict=True))
        onto_trees = [tree_of[t[1]] for t in targets]
        states = [_Replay(tag, onto, version, onto, tree)
                  for (tag, onto, version), tree in zip(targets, onto_trees, strict=True)]
        total = len(self.patches)
        with ThreadPoolExecutor(max_workers=n) as pool:
            for index, patch in enumerate(self.patches, start=1):
                live = [s for s in states if s.stopped_at is None]
                if not live:
                    break
                if self.strategy == "fake-base":
                    base_commit = self._fake[patch.sha][0]
                    ours = self._commits([(s.acc_tree, (base_commit,)) for s in live])
                    outcomes = self._merge_batch(ours, patch, pool=pool, workers=n)
                else:
                    outcomes = list(pool.map(self._merge, [s.acc_commit for s in live], [patch] * len(live)))
                recorded = self._recorded(outcomes, parallel=n > 1)
                advanced = [s for s, (tree, conflicts, _e), rec in zip(live, outcomes, recorded, strict=True)
                            if self._step(s, patch, index, tree, conflicts, rec)]
                if self.strategy == "merge-base" and advanced:
                    for s, sha in zip(advanced, self._commits([(s.acc_tree, ()) for s in advanced]), strict=True):
                        s.acc_commit = sha
            results = [s.prediction(total, 0.0) for s in states]
            tree_of.update((r.tree, r.tree) for r in results if r.tree)
            # One worker (upgrade's preview): one after the other, git calls in a fixed order.
            with ThreadPoolExecutor(max_workers=3 if n > 1 else 1) as phases:
                # Each stop's files: the moves git followed and the upstream commits behind them.
                stopped = [i for i, s in enumerate(states) if s.stopped_at is not None]
                stops = [Stop(s.onto, s.stopped_at.sha, s.conflicts) for s in states if s.stopped_at]
                contexts = (phases.submit(conflict_contexts, self.repo, base, stops, pool=pool)
                            if base is not None and stops else None)
                on_anchors = (phases.submit(self._anchor_results, results, anchors, tree_of, parallel=n > 1)
                              if anchors else None)
                drifting = (phases.submit(self._drift_results, results, base, drift, tree_of, parallel=n > 1)
                            if base is not None and drift is not None and drift.enabled else None)
                if contexts is not None:
                    for i, conflicts in zip(stopped, contexts.result(), strict=True):
                        results[i] = replace(results[i], conflicts=conflicts)
                if on_anchors is not None:
                    results = [replace(r, anchors=a, upstream_anchors=u)
                               for r, (a, u) in zip(results, on_anchors.result(), strict=True)]
                if drifting is not None:
                    results = [replace(r, drift=d) for r, d in zip(results, drifting.result(), strict=True)]
        per_tag = (time.perf_counter() - began) / max(1, len(states))
        return [replace(r, seconds=per_tag) for r in results]

    def _recorded(self, outcomes: Sequence[tuple[str, Sequence[Conflict], Sequence[str]]], *, parallel: bool
                  ) -> list[tuple[str, list[resolutions_mod.Applied]] | None]:
        """Per merge of a step: its tree with every conflicted file resolved from the recorded
        resolutions and what was applied, or None (clean, no records, or not fully covered).
        All of a step's conflicts at once: a fixed number of git processes per step."""
        if not self.resolutions:
            return [None] * len(outcomes)
        conflicted = [i for i, (_tree, conflicts, _e) in enumerate(outcomes) if conflicts]
        found = self.resolutions.resolve_trees(
            self.repo, [(outcomes[i][0], resolutions_mod.parse_stage_entries(outcomes[i][2])) for i in conflicted],
            write=self._write_objects, parallel=parallel)
        out: list[tuple[str, list[resolutions_mod.Applied]] | None] = [None] * len(outcomes)
        for i, done in zip(conflicted, found, strict=True):
            out[i] = done
        return out

    def _step(self, s: _Replay, patch: Patch, index: int, tree: str, conflicts: Sequence[Conflict],
              recorded: tuple[str, list[resolutions_mod.Applied]] | None) -> bool:
        """The one place a replayed patch's outcome is decided, as ``git rebase`` decides it:
        a conflict stops the tag's rebase -- unless recorded resolutions cover every conflicted
        file (``recorded``: the resolved tree and what was applied, :meth:`_recorded`), which
        ``forkops upgrade`` then applies and the rebase goes on with the resolved tree; a result
        equal to the accumulated tree drops the patch (unless it started empty; git drops a
        commit a resolution emptied too); anything else advances. ``tree`` is merge-tree's
        result (with conflict markers when it conflicts). Returns whether the tag advanced."""
        if conflicts and recorded is not None:
            tree, conflicts = recorded[0], []
            s.resolved.append(ResolvedStop(StoppedAt(patch.sha, patch.subject, index, len(self.patches)),
                                           tuple(recorded[1])))
        if conflicts:
            s.stopped_at = StoppedAt(patch.sha, patch.subject, index, len(self.patches))
            s.conflicts = tuple(conflicts)
            return False
        if tree == s.acc_tree and not patch.starts_empty:
            s.dropped.append(patch)
            return False
        s.acc_tree = tree
        return True

    def _drift_results(self, results: Sequence[Prediction], base: str, spec: DriftSpec,
                       trees: Mapping[str, str], *, parallel: bool) -> list[tuple[drift_mod.Drift, ...]]:
        """Each result's drift (none without a tree)."""
        have = [r for r in results if r.tree]
        found = drift_mod.find_many_in_scope(self.repo, spec, base, [(r.onto, r.tree or "") for r in have],
                                             trees=trees, parallel=parallel)
        by_tag = {r.tag: tuple(d) for r, d in zip(have, found, strict=True)}
        return [by_tag.get(r.tag, ()) for r in results]

    def _anchor_results(self, results: Sequence[Prediction], anchors: Sequence[Anchor], trees: Mapping[str, str],
                        *, parallel: bool) -> list[tuple[_AnchorResults, _AnchorResults]]:
        """Each result's anchors: (on the predicted tree when the rebase finishes, on the tag)."""
        chain: list[tuple[str, str | None]] = []
        for r in results:
            chain.append((r.onto, chain[-1][0] if chain else None))
        chain += [(r.tree, r.onto) for r in results if r.rebase != "conflict" and r.tree]
        cached = _Prefetched(self.repo, list(dict.fromkeys(chain)), anchors, trees, parallel=parallel)
        out = []
        for r in results:
            upstream = tuple(anchors_mod.check_all(cached, r.onto, tuple(anchors), r.version))
            on_result = (tuple(anchors_mod.check_all(cached, r.tree, tuple(anchors), r.version))
                         if r.rebase != "conflict" and r.tree else ())
            if on_result and self.patches:
                # A patch left behind in a file upstream moved away from is re-applied by
                # `forkops upgrade`; predict that too, so nightly does not flag what upgrade fixes.
                base, start, tree = self.patches[0].parent, self.patches[-1].sha, r.tree or ""
                on_result = tuple(anchors_mod.with_reapply(self.repo, res, anchor, base=base, start=start, live=tree)
                                  for res, anchor in zip(on_result, anchors, strict=True))
            out.append((on_result, upstream))
        return out


@dataclass
class _Replay:
    """One tag's rebase in progress."""

    tag: TagName
    onto: str
    version: Version | None
    acc_commit: str
    acc_tree: str
    dropped: list[Patch] = field(default_factory=list)
    stopped_at: StoppedAt | None = None
    conflicts: tuple[Conflict, ...] = ()
    resolved: list[ResolvedStop] = field(default_factory=list)

    def prediction(self, total: int, seconds: float) -> Prediction:
        return Prediction(self.tag, self.version, self.onto, total, self.stopped_at, self.conflicts,
                          tuple(self.dropped), self.acc_tree, seconds=seconds, resolved=tuple(self.resolved))


_AnchorResults = tuple[anchors_mod.AnchorResult, ...]


class _Prefetched(Repo):
    """The simulation's repository with the anchors' git reads answered in bulk.

    :func:`forkops.anchors.check` asks, per tree, ``grep_files(tree, symbol, fixed=True)`` and
    ``read_blobs([tree:path, ...])`` for the hits. Here those answers come from
    :func:`forkops.anchors.locate` over a chain of trees (each tag derived from the tag
    before it, each result from its tag) -- the same answers, one grep in all. Anything
    not prefetched goes to git as usual.
    """

    def __init__(self, repo: Repo, chain: list[tuple[str, str | None]], anchors: Sequence[Anchor],
                 trees: Mapping[str, str], *, parallel: bool) -> None:
        super().__init__(repo.path, env=repo.extra_env)
        self._greps: dict[tuple[str, str], list[str]] = {}
        self._blobs: dict[tuple[str, str], bytes] = {}
        located = anchors_mod.locate(self, chain, list(dict.fromkeys(a.symbol for a in anchors)), trees=trees,
                                     parallel=parallel)
        self._greps = located.files
        self._blobs = located.blobs

    def grep_files(self, treeish: str, pattern: str, paths: Iterable[str] = (), *, fixed: bool = False) -> list[str]:
        found = self._greps.get((treeish, pattern)) if fixed and not tuple(paths) else None
        return list(found) if found is not None else super().grep_files(treeish, pattern, paths, fixed=fixed)

    def read_blobs(self, names: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        unread: list[int] = []
        for i, name in enumerate(names):
            treeish, _, path = name.partition(":")
            out.append(self._blobs.get((treeish, path)))
            if out[-1] is None:
                unread.append(i)
        for i, blob in zip(unread, super().read_blobs([names[i] for i in unread]), strict=True):
            out[i] = blob
        return out


def _conflicts(entries: Iterable[str]) -> list[Conflict]:
    """Parse merge-tree's conflicted-file section (``MODE OID STAGE<TAB>PATH`` per entry)."""
    stages: dict[str, set[int]] = {}
    for entry in entries:
        if not entry:
            continue
        meta, _, path = entry.partition("\t")
        stages.setdefault(path, set()).add(int(meta.split()[-1]))
    return [Conflict(p, conflict_kind(s)) for p, s in sorted(stages.items())]


# ---------------------------------------------------------------------------------------
# A stop's files: moves git followed, and the upstream commits behind each conflict
# ---------------------------------------------------------------------------------------
CONTEXT_COMMITS = 3


def _hunks(old: bytes, new: bytes) -> list[tuple[int, int, int, int]]:
    """(old start, old count, new start, new count) of each change from ``old`` to ``new``,
    in ``git diff -U0``'s convention (a count of 0 starts at the line before)."""
    a, b = old.splitlines(), new.splitlines()
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.append((i1 + 1 if i2 > i1 else i1, i2 - i1, j1 + 1 if j2 > j1 else j1, j2 - j1))
    return out


def _map_line(line: int, hunks: list[tuple[int, int, int, int]]) -> int:
    """Where line ``line`` of the old file is in the new one (hunks of old -> new); a line
    inside a changed hunk maps to the start of its new side."""
    shift = 0
    for old, old_n, new, new_n in hunks:
        first = old if old_n else old + 1  # a pure insertion sits after line `old`
        if line < first:
            break
        if line < first + old_n:
            return max(1, new)
        shift = (new + new_n) - (first + old_n) if old_n else new + new_n - 1 - old
    return max(1, line + shift)


def _moved_from(repo: Repo, commit: str, onto: str, path: str) -> str | None:
    """The path ``commit`` had for ``path`` (which it does not have) when upstream
    (``onto``) moved the file there and git followed the move."""
    touched = repo.lines("diff-tree", "-r", "--no-commit-id", "--name-only", "--no-renames", f"{commit}^", commit)
    gone = [p for p, blob in zip(touched, repo.read_blobs([f"{onto}:{p}" for p in touched]), strict=True)
            if blob is None]
    if not gone:
        return None
    out = repo.run("diff-tree", "-r", "-M", "--name-status", "--diff-filter=R", f"{commit}^", onto,
                   "--", *gone, path)
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2] == path:
            return fields[1]
    return None


# Files longer than this are not diffed in Python to trace lines; their context is the file's.
_TRACE_MAX_LINES = 20_000


@dataclass(frozen=True)
class Stop:
    """A rebase stopped at fork ``commit`` replayed onto upstream ``onto``."""

    onto: str
    commit: str
    conflicts: tuple[Conflict, ...]


def _file_context(repo: Repo, base: str, stop: Stop, c: Conflict, moved: str | None,
                  blobs: tuple[bytes | None, bytes | None, bytes | None]) -> Conflict:
    before, after, upstream = blobs
    commits: list[ContextCommit] = []
    scope: Literal["lines", "file"] = "file"
    if (before is not None and after is not None and upstream is not None
            and max(before.count(b"\n"), upstream.count(b"\n")) <= _TRACE_MAX_LINES):
        to_onto = _hunks(before, upstream)
        args = []
        for old_start, old_n, _new, _new_n in _hunks(before, after):
            # One line either side: git also stops on changes that only touch each other.
            last = old_start + max(old_n, 1)
            a, b = _map_line(max(old_start - 1, 1), to_onto), _map_line(max(last, 1), to_onto)
            end = min(max(a, b), max(1, upstream.count(b"\n")))
            args.append(f"-L{min(min(a, b), end)},{end}:{c.path}")
        proc = repo.run_raw("log", *args, "-s", "--format=%x00%H%x00%s", f"{base}..{stop.onto}") if args else None
        if proc is not None and proc.returncode == 0:
            for line in proc.stdout.decode("utf-8", "replace").splitlines():
                if line.startswith("\0"):
                    _, sha, subject = line.split("\0", 2)
                    commits.append(ContextCommit(sha, subject))
            scope = "lines" if commits else "file"
    if scope == "file":
        rows = repo.lines("log", f"--max-count={CONTEXT_COMMITS}", "--format=%H%x00%s", f"{base}..{stop.onto}",
                          "--", c.path, *([moved] if moved else []))
        commits = [ContextCommit(*row.split("\0", 1)) for row in rows]
    return replace(c, moved_from=moved, context=tuple(commits[:CONTEXT_COMMITS]), context_scope=scope)


def conflict_contexts(repo: Repo, base: str, stops: Sequence[Stop], *,
                      pool: ThreadPoolExecutor | None = None) -> list[tuple[Conflict, ...]]:
    """Each stop's conflicts with the moves git followed and, per file, the upstream commits
    of ``base..onto`` (the stack cut from ``base``) that touched the lines the fork's commit
    changes: ``git log -L`` over those lines (one either side), mapped into ``onto``'s
    file. When they cannot be traced (the fork's commit adds or deletes the whole file, a
    huge file, or no commit touched exactly those lines), the commits that touched the file.
    Newest first, at most CONTEXT_COMMITS. Reads only.

    The blobs for every stop come from one ``git cat-file --batch``; then one ``git log``
    per file (in ``pool`` when given)."""
    items = [(stop, c) for stop in stops for c in stop.conflicts]

    def names(pairs: Sequence[tuple[Stop, Conflict, str]]) -> list[str]:
        return [n for stop, c, old in pairs for n in (f"{stop.commit}^:{old}", f"{stop.commit}:{old}",
                                                       f"{stop.onto}:{c.path}")]

    # Read as if no file moved; a file the stopping commit does not have is one git followed
    # upstream's move of: its blobs are read again under the path the commit had.
    data = repo.read_blobs(names([(stop, c, c.path) for stop, c in items]))
    moves = [None if data[3 * i + 1] is not None else _moved_from(repo, stop.commit, stop.onto, c.path)
             for i, (stop, c) in enumerate(items)]
    again = [i for i, moved in enumerate(moves) if moved]
    if again:
        reread = repo.read_blobs(names([(items[i][0], items[i][1], moves[i] or "") for i in again]))
        for k, i in enumerate(again):
            data[3 * i:3 * i + 3] = reread[3 * k:3 * k + 3]
    jobs = [(stop, c, moved, (data[3 * i], data[3 * i + 1], data[3 * i + 2]))
            for i, ((stop, c), moved) in enumerate(zip(items, moves, strict=True))]

    def run(job: tuple[Stop, Conflict, str | None, tuple[bytes | None, bytes | None, bytes | None]]) -> Conflict:
        return _file_context(repo, base, *job)

    done = list(pool.map(run, jobs) if pool is not None else map(run, jobs))
    out: list[tuple[Conflict, ...]] = []
    for stop in stops:
        out.append(tuple(done[:len(stop.conflicts)]))
        done = done[len(stop.conflicts):]
    return out


def conflict_context(repo: Repo, *, base: str, onto: str, commit: str,
                     conflicts: Sequence[Conflict]) -> tuple[Conflict, ...]:
    """One stop's :func:`conflict_contexts`: what ``forkops upgrade`` shows when its rebase
    stops at ``commit`` on ``onto`` (conflicts as ``Conflict(path, kind)``)."""
    return conflict_contexts(repo, base, [Stop(onto, commit, tuple(conflicts))])[0]


# ---------------------------------------------------------------------------------------
# forkops check: choosing start, base and tags; fetching; predicting
# ---------------------------------------------------------------------------------------
def newest_fork_branch(repo: Repo, pb: Playbook) -> tuple[str, Version]:
    """The newest ``bX.Y.Z`` (local wins over ``origin/`` at the same version)."""
    found = [(v, not name.startswith("origin/"), name) for name, v in plan.fork_branches(repo, pb).items()]
    if not found:
        raise BadInput(f"no fork branch ({pb.fork_branch}) here or on origin in {repo.path}; pass --from BRANCH")
    version, _local, name = max(found)
    return name, version


def select_tags(pb: Playbook, remote_tags: dict[TagName, str], *, since: Version | None,
                wanted: Sequence[str] | None, include_rc: bool) -> list[tuple[TagName, Version]]:
    """The tags to predict, oldest first: ``wanted`` (tag names or versions; each must exist
    upstream), else every upstream release newer than ``since`` (rcs only with ``include_rc``)."""
    have = {tag: v for tag in remote_tags if (v := pb.version_of_tag(tag)) is not None}
    if wanted:
        chosen: dict[TagName, Version] = {}
        for item in wanted:
            tag = TagName(item)
            if tag not in have:
                version = Version.try_parse(item)
                if version is None:
                    raise BadInput(f"--tags {item}: not a tag name or version ({pb.upstream_tag})")
                tag = pb.tag(version)
                if tag not in have:
                    near = ", ".join(str(v) for v in nearest(version, list(have.values()))) or "none"
                    raise BadInput(f"upstream has no tag {tag} (nearest versions: {near})")
            chosen[tag] = have[tag]
        return sorted(chosen.items(), key=lambda kv: kv[1])
    return sorted(((t, v) for t, v in have.items()
                   if (since is None or v > since) and (include_rc or not v.is_rc)), key=lambda kv: kv[1])


def fetch_tags(repo: Repo, remote: str, tags: Sequence[TagName],
               remote_tags: dict[TagName, str]) -> dict[TagName, tuple[str, str]]:
    """Fetch (in one call) the tags that are missing locally or point elsewhere than upstream;
    return tag -> (the commit it peels to, that commit's tree; "" for a tag of no commit),
    for every tag of ``tags``."""
    def local() -> dict[str, tuple[str, str]]:
        out = repo.run("for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)%00%(tree)%00%(*tree)",
                       "refs/tags")
        found = {}
        for line in out.splitlines():
            name, sha, peeled, tree, peeled_tree = line.split("\0")
            found[name] = (peeled or sha, peeled_tree or tree)
        return found

    have = local()
    missing = [t for t in tags if have.get(t.ref, ("", ""))[0] != remote_tags[t]]
    if missing:
        repo.fetch(remote, [f"+{t.ref}:{t.ref}" for t in missing])
        have = local()
    return {t: have[t.ref] for t in tags}


def _with_missing_changes(repo: Repo, pb: Playbook, refs: plan.StackRefs,
                          results: list[Prediction]) -> list[Prediction]:
    """Each failed anchor names the fork commits whose change it is missing (computed once
    per anchor: the change is the same for every tag)."""
    changes: dict[str, tuple[anchors_mod.ForkChange, ...]] = {}
    out = []
    for r in results:
        fixed = []
        for res in r.anchors:
            if not res.ok:
                if res.name not in changes:
                    anchor = next(a for a in pb.anchors if a.name == res.name)
                    changes[res.name] = anchors_mod.fork_changes(
                        repo, pb, anchor, base=refs.base_sha, start=refs.start_sha,
                        version=pb.version_of_tag(refs.base))
                res = replace(res, missing=changes[res.name])
            fixed.append(res)
        out.append(replace(r, anchors=tuple(fixed)))
    return out


def check_repo(name: str, repo: Repo, pb: Playbook, upstream_url: str | None, *,
               start: str | None = None, base: str | None = None, since: str | Version | None = None,
               tags: Sequence[str] | None = None, include_rc: bool = False,
               strategy: Strategy | None = None, workers: int | None = None,
               resolutions: resolutions_mod.Book | None = None) -> RepoCheck:
    """``forkops check`` for one clone.

    start: ``--from`` or the newest fork branch; base: ``--base`` or the newest upstream release
    tag reachable from start (plan.stack_refs, as upgrade chooses it); tags: ``--tags`` or every
    upstream release newer than ``since`` (default: the base's version). ``upstream_url`` (when
    given) is set as the playbook's upstream remote first. ``resolutions``: recorded resolutions
    the simulation applies at stops, as upgrade does.
    """
    remote = pb.upstream_remote
    if upstream_url is not None:
        repo.set_remote(remote, upstream_url)
    with ThreadPoolExecutor(max_workers=1) as background:
        # Asking the upstream for its tags takes a while (the network); meanwhile, the stack.
        listing = background.submit(plan.remote_release_tags, repo, pb, remote)
        start_name = start or newest_fork_branch(repo, pb)[0]
        leaf = start_name.removeprefix("origin/")
        target = pb.version_of_fork_branch(leaf) or Version(0, 0, 0)  # only used when start is None
        refs = plan.stack_refs(repo, pb, target=target, start=start_name, base=base, remote=remote)
        patches, boundary = load_stack(repo, refs.base_sha, refs.start_sha)
        remote_tags = listing.result()
    if isinstance(since, str):
        since = Version.parse(since)
    if since is None:
        since = pb.version_of_tag(refs.base)
    chosen = select_tags(pb, remote_tags, since=since, wanted=tags, include_rc=include_rc)
    commits = fetch_tags(repo, remote, [t for t, _ in chosen], remote_tags)
    known = {commit: tree for commit, tree in commits.values() if tree}
    with Simulator(repo, patches, strategy=strategy, resolutions=resolutions) as sim:
        targets = [(t, commits[t][0], v) for t, v in chosen]
        results = sim.predict_many(targets, anchors=pb.anchors, workers=workers, base=refs.base_sha,
                                   drift=pb.drift, trees={**known, **boundary})
        used = sim.strategy
    results = _with_missing_changes(repo, pb, refs, results)
    return RepoCheck(name, refs, tuple(patches), tuple(results), used)
