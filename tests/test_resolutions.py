"""Recorded resolutions (forkops.resolutions): recorded at a real stop, applied where the same
conflict recurs, and simulated by ``check`` with the outcome a real rebase has.

Ground truth is git itself: a real ``git rebase --onto`` in a scratch clone that, at each stop,
applies the recorded resolutions (``resolutions.apply``: the file written, ``git add``) and runs
``git rebase --continue`` -- what ``forkops upgrade`` does -- compared with the prediction: same
next stop, same unmerged files, same tree.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkops import playbook, predict, resolutions, workspace
from forkops import sandbox as sandbox_mod
from forkops.errors import BadInput
from forkops.git import Repo
from forkops.sandbox import Sandbox
from forkops.version import TagName
from tests.clihelp import run_cli


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_EDITOR": "true"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, env=env)


@dataclass
class Real:
    stopped_sha: str | None
    index: int | None
    unmerged: list[str]
    head_tree: str
    resolved_at: list[int]  # msgnum of each stop the recorded resolutions got past


def _scratch(clone: Path, scratch: Path, start: str) -> Path:
    _git(clone.parent, "clone", "--quiet", "--shared", "--no-checkout", str(clone), str(scratch))
    _git(scratch, "checkout", "--quiet", "--detach", start)
    return scratch


def _stopped(scratch: Path) -> bool:
    return (scratch / ".git" / "rebase-merge").is_dir()


def rebase_with_resolutions(ws: workspace.Workspace, name: str, clone: Path, scratch: Path, *,
                            onto: str, base: str, start: str) -> Real:
    """``git rebase --onto ONTO BASE`` on START; at each stop the recorded resolutions are
    applied (written, then staged) and, when they resolve every file, ``git rebase --continue``."""
    _scratch(clone, scratch, start)
    _git(scratch, "rebase", "--onto", onto, base, check=False)
    state = scratch / ".git" / "rebase-merge"
    resolved_at: list[int] = []
    while _stopped(scratch):
        repo = Repo(scratch)
        applied = resolutions.apply(ws, name, repo)
        if applied:  # what --continue does with the files marked recorded
            _git(scratch, "add", "--", *(a.path for a in applied))
        if repo.unmerged_paths():
            unmerged = sorted(set(_git(scratch, "diff", "--name-only", "--diff-filter=U").stdout.split()))
            return Real(_git(scratch, "rev-parse", "REBASE_HEAD").stdout.strip(), int((state / "msgnum").read_text()),
                        unmerged, _git(scratch, "rev-parse", "HEAD^{tree}").stdout.strip(), resolved_at)
        resolved_at.append(int((state / "msgnum").read_text()))
        _git(scratch, "rebase", "--continue", check=False)
    return Real(None, None, [], _git(scratch, "rev-parse", "HEAD^{tree}").stdout.strip(), resolved_at)


def resolve_stop_by_hand(ws: workspace.Workspace, name: str, clone: Path, scratch: Path, *, onto: str, base: str,
                         start: str, stops: int) -> list[resolutions.Recorded]:
    """A person's upgrade: rebase, and at each of the first ``stops`` stops resolve every file
    as the sandbox's maintainer does, ``git add``, record, continue."""
    _scratch(clone, scratch, start)
    _git(scratch, "rebase", "--onto", onto, base, check=False)
    recorded: list[resolutions.Recorded] = []
    for _ in range(stops):
        assert _stopped(scratch)
        repo = Repo(scratch)
        resolutions.apply(ws, name, repo)
        for path in repo.unmerged_paths():
            ours = _git(scratch, "show", f":2:{path}", check=False).stdout or None
            theirs = _git(scratch, "show", f":3:{path}", check=False).stdout or None
            content = sandbox_mod.resolve(name, path, ours=ours, theirs=theirs)
            assert content is not None
            (scratch / path).write_text(content)
            _git(scratch, "add", "--", path)
        recorded += resolutions.record(ws, name, repo, pb=playbook.load(name))
        _git(scratch, "rebase", "--continue", check=False)
    return recorded


def _check(sandbox: Sandbox, ws: workspace.Workspace, name: str, **kw: object) -> predict.RepoCheck:
    return predict.check_repo(name, Repo(sandbox.clone(name)), playbook.load(name), sandbox.upstream_url(name),
                              include_rc=True, resolutions=resolutions.Book.of(ws.root, name), **kw)  # type: ignore[arg-type]


def _assert_same(pred: predict.Prediction, real: Real) -> None:
    where = f"{pred.tag}: predicted {pred.status}"
    assert pred.tree == real.head_tree, f"{where}: tree differs from the real rebase with resolutions"
    assert [r.stopped_at.index for r in pred.resolved] == real.resolved_at, where
    if real.stopped_sha is None:
        assert pred.stopped_at is None, where
    else:
        assert pred.stopped_at is not None and (pred.stopped_at.sha, pred.stopped_at.index) == (
            real.stopped_sha, real.index), where
        assert pred.conflict_paths == real.unmerged, where


@pytest.mark.parametrize("name", ["serving", "tensorflow"])
def test_simulation_with_recorded_resolutions_matches_real_rebase_for_every_tag(
        sandbox: Sandbox, tmp_path: Path, name: str) -> None:
    ws = workspace.load(sandbox.workspace)
    clone = sandbox.clone(name)
    before = _check(sandbox, ws, name)
    first = next(r for r in before.results if r.status == "conflict" and str(r.version) == "2.18.0")
    # record the first stop of 2.18.0 as a person resolves it
    recorded = resolve_stop_by_hand(ws, name, clone, tmp_path / "person", onto=first.onto,
                                    base=before.refs.base_sha, start=before.refs.start_sha, stops=1)
    assert recorded and all(r.status == "recorded" for r in recorded), recorded
    assert sorted(r.path for r in recorded) == first.conflict_paths

    after = _check(sandbox, ws, name)
    by_tag = {str(r.tag): r for r in after.results}
    again = by_tag[str(first.tag)]
    assert again.resolved and again.resolved[0].stopped_at == first.stopped_at
    for i, pred in enumerate(after.results):
        real = rebase_with_resolutions(ws, name, clone, tmp_path / f"real{i}", onto=pred.onto,
                                       base=after.refs.base_sha, start=after.refs.start_sha)
        _assert_same(pred, real)


def test_serving_every_stop_recorded_is_resolved_and_reaches_the_persons_tree(
        sandbox: Sandbox, tmp_path: Path) -> None:
    ws = workspace.load(sandbox.workspace)
    clone = sandbox.clone("serving")
    before = _check(sandbox, ws, "serving", tags=["2.18.0"])
    pred = before.results[0]
    assert pred.status == "conflict"
    stops = 0
    person = tmp_path / "person"
    while True:  # resolve stop after stop until the rebase finishes
        stops += 1
        if person.exists():
            subprocess.run(["rm", "-rf", str(person)], check=True)
        resolve_stop_by_hand(ws, "serving", clone, person, onto=pred.onto, base=before.refs.base_sha,
                             start=before.refs.start_sha, stops=stops)
        if not _stopped(person):
            break
        assert stops < 10
    assert stops >= 2  # serving 2.18.0 stops more than once
    person_tree = _git(person, "rev-parse", "HEAD^{tree}").stdout.strip()
    after = _check(sandbox, ws, "serving", tags=["2.18.0"]).results[0]
    assert after.status == "resolved" and after.compatible and after.as_json()["recorded"] is True
    assert len(after.resolved) == stops
    assert after.tree == person_tree
    real = rebase_with_resolutions(ws, "serving", clone, tmp_path / "real", onto=after.onto,
                                   base=before.refs.base_sha, start=before.refs.start_sha)
    assert real.stopped_sha is None and real.head_tree == person_tree


# ---------------------------------------------------------------------------------------
# The engine on small, exact inputs
# ---------------------------------------------------------------------------------------
def _merged(tmp_path: Path, base: str, ours: str, theirs: str) -> resolutions.Merged:
    tmp_path.mkdir(exist_ok=True)
    repo = Repo(tmp_path)
    _git(tmp_path, "init", "--quiet")
    merged = resolutions.merge_stages(repo, base.encode(), ours.encode(), theirs.encode())
    assert merged is not None
    return merged


MIDDLE = "".join(f"m{i}\n" for i in range(8))  # far enough apart to stay two hunks
BASE = "a\nb\n" + MIDDLE + "f\ng\n"
OURS = "a\nB-up\n" + MIDDLE + "F-up\ng\n"
THEIRS = "a\nB-fork\n" + MIDDLE + "F-fork\ng\n"


def test_hunk_ids_ignore_side_order_labels_and_conflict_style(tmp_path: Path) -> None:
    m = _merged(tmp_path, BASE, OURS, THEIRS)
    swapped = _merged(tmp_path / "x", BASE, THEIRS, OURS)
    assert len(m.hunks) == 2
    assert [h.id for h in m.hunks] == [h.id for h in swapped.hunks]
    # the user's conflict style does not leak in: diff3 configured, same hunks
    _git(tmp_path, "config", "merge.conflictStyle", "diff3")
    assert _merged(tmp_path, BASE, OURS, THEIRS).hunks == m.hunks
    book = resolutions.Book([resolutions.Record("r", "f", "c", "o", tuple(
        resolutions.RecordedHunk(h, b"X\n") for h in m.hunks))])
    assert book.resolve(swapped) == (f"a\nX\n{MIDDLE}X\ng\n".encode(), (book.records[0].id,))


def test_split_resolution_per_hunk_and_refuses_edits_outside(tmp_path: Path) -> None:
    m = _merged(tmp_path, BASE, OURS, THEIRS)
    resolved = f"a\nB-up\nB-fork\n{MIDDLE}\ng\n".encode()
    assert resolutions.split_resolution(m, resolved) == [b"B-up\nB-fork\n", b"\n"]
    # a line outside the hunks was changed: not expressible hunk by hunk ...
    outside = f"a\nB-up\n{MIDDLE.replace('m4', 'M4!')}F-up\ng\n".encode()
    assert resolutions.split_resolution(m, outside) is None
    # ... but as hunk texts plus an edit, which replays where the same conflict recurs
    texts, edits = resolutions.resolution_of(m, outside) or ([], ())
    assert texts == [b"B-up\n", b"F-up\n"] and len(edits) == 1 and "+M4!" in edits[0].lines
    rec = resolutions.Record("r", "f", "c", "o", tuple(resolutions.RecordedHunk(h, t)
                                                        for h, t in zip(m.hunks, texts, strict=True)), edits)
    assert resolutions.parse(rec.render(), source="x") == rec
    assert resolutions.Book([rec]).resolve(m) == (outside, (rec.id,))
    # upstream shifted the file by two lines: the edit still finds its place
    shifted = _merged(tmp_path / "s", "top\n" * 2 + BASE, "top\n" * 2 + OURS, "top\n" * 2 + THEIRS)
    assert resolutions.Book([rec]).resolve(shifted) == (b"top\n" * 2 + outside, (rec.id,))
    # the edit's context is gone: not covered, never a guess
    gone = _merged(tmp_path / "g", BASE, OURS.replace("m4", "m4-up"), THEIRS)
    assert b"m4-up" in gone.common[1] and [h.id for h in gone.hunks] == [h.id for h in m.hunks]
    assert resolutions.Book([rec]).resolve(gone) is None


def test_only_fully_covered_files_are_resolved(tmp_path: Path) -> None:
    m = _merged(tmp_path, BASE, OURS, THEIRS)
    one = resolutions.Book([resolutions.Record("r", "f", "c", "o", (resolutions.RecordedHunk(m.hunks[0], b"X\n"),))])
    assert one.resolve(m) is None


@pytest.mark.parametrize(("base", "ours", "theirs"), [
    (BASE, OURS, THEIRS),
    ("a\nb", "a\nB-up", "a\nB-fork"),  # the conflict is the last line, without a newline
    ("a\r\nb\r\n", "a\r\nB-up\r\n", "a\r\nB-fork\r\n"),
    ("a\nb\n", "a\n", "a\nB-fork\n"),  # one side deleted the line: an empty side
])
def test_resolve_file_by_stages_finds_every_covered_conflict(tmp_path: Path, base: str, ours: str,
                                                             theirs: str) -> None:
    """resolve_file merges only files some recorded hunk may cover (each hunk side is a run of
    its file's lines); that shortcut must never miss a covered file, nor the batch for many
    merges (check's simulation) answer otherwise than one file at a time (upgrade)."""
    m = _merged(tmp_path, base, ours, theirs)
    assert m.hunks
    rec = resolutions.Record("r", "f", "c", "o", tuple(resolutions.RecordedHunk(h, b"X\n") for h in m.hunks))
    repo = Repo(tmp_path)
    oids = [repo.run("hash-object", "-w", "--stdin", input=t.encode()).strip() for t in (base, ours, theirs)]
    stages = {1: ("100644", oids[0]), 2: ("100644", oids[1]), 3: ("100644", oids[2])}
    found = resolutions.Book([rec]).resolve_file(repo, stages)
    assert found is not None and found[0] == "100644" and found[2] == (rec.id,)
    assert found[1] == resolutions.Book([rec]).resolve(m)[0]  # type: ignore[index]
    elsewhere = resolutions.RecordedHunk(resolutions.Hunk(b"q\n", b"r\n"), b"X\n")
    other = resolutions.Record("r", "f", "c", "o", (elsewhere,))
    assert resolutions.Book([other]).resolve_file(repo, stages) is None
    # many merges at once (the simulation's step) agree with one at a time
    tree = repo.run("mktree", input=f"100644 blob {oids[1]}\tf\n").strip()
    book = resolutions.Book([rec])
    (done,) = book.resolve_trees(repo, [(tree, {"f": stages})], write=lambda kind, bodies: [
        repo.run("hash-object", "-w", "-t", kind, "--stdin", input=b).strip() for b in bodies])
    assert done is not None and repo.read_blobs([f"{done[0]}:f"]) == [found[1]]


@pytest.mark.parametrize("text", ["", "x", "x\n", "\n\n", "a\n| b\n\\ no newline at end\n", "tail no eol\n\nz",
                                  " leading space\n|\n"])
def test_record_text_round_trips(text: str) -> None:
    h = resolutions.Hunk(text.encode(), b"other\n")
    rec = resolutions.Record("serving", "WORKSPACE", "abc subject", "2.18.0",
                             (resolutions.RecordedHunk(h, text.encode()),))
    back = resolutions.parse(rec.render(), source="x.txt")
    assert back == rec and back.id == rec.id


def test_hand_edited_sides_are_refused_with_the_line(tmp_path: Path) -> None:
    h = resolutions.Hunk(b"one\n", b"two\n")
    rec = resolutions.Record("serving", "WORKSPACE", "abc s", "2.18.0", (resolutions.RecordedHunk(h, b"both\n"),))
    text = rec.render().replace("| one", "| ONE")
    with pytest.raises(BadInput, match=r"x.txt: line \d+: hunk 1: its sides do not hash"):
        resolutions.parse(text, source="x.txt")
    with pytest.raises(BadInput, match="not a forkops resolution"):
        resolutions.parse("hello\n", source="x.txt")
    # the resolution text itself may be edited by a reviewer
    edited = resolutions.parse(rec.render().replace("| both", "| reviewed"), source="x.txt")
    assert edited.hunks[0].resolution == b"reviewed\n"


def test_a_resolution_holding_a_key_site_is_not_recorded(sandbox: Sandbox, tmp_path: Path) -> None:
    """The resolutions folder is committed: a hunk that holds a key site's value never goes there."""
    ws = workspace.load(sandbox.workspace)
    pb = playbook.load("tensorflow")
    site = pb.key_sites[0]
    repo_path = tmp_path / "r"
    repo_path.mkdir()
    _git(repo_path, "init", "--quiet", "-b", "main")
    _git(repo_path, "config", "user.email", "t@t")
    _git(repo_path, "config", "user.name", "t")
    path = site.paths[0]
    (repo_path / path).parent.mkdir(parents=True, exist_ok=True)
    (repo_path / path).write_text("x\n")
    _git(repo_path, "add", "-A")
    _git(repo_path, "commit", "-qm", "base")
    _git(repo_path, "checkout", "-qb", "fork")
    (repo_path / path).write_text("fork\n")
    _git(repo_path, "commit", "-qam", "fork")
    _git(repo_path, "checkout", "-q", "main")
    (repo_path / path).write_text("up\n")
    _git(repo_path, "commit", "-qam", "up")
    _git(repo_path, "checkout", "-q", "fork")
    _git(repo_path, "rebase", "main", check=False)
    repo = Repo(repo_path)
    resolutions.apply(ws, "tensorflow", repo)
    key_line = _key_site_example(site.encoding)
    (repo_path / path).write_text(key_line)
    assert site.regex.search(key_line), "the example must be a key site instance"
    _git(repo_path, "add", path)
    out = resolutions.record(ws, "tensorflow", repo, pb=pb)
    assert [(r.status, "key site" in r.reason) for r in out] == [("skipped", True)]
    assert not (ws.root / "resolutions").exists()


def _key_site_example(encoding: str) -> str:
    pb = playbook.load("tensorflow")
    site = next(s for s in pb.key_sites if s.encoding == encoding)
    # the sandbox fork carries real instances of the playbook's key sites
    text = sandbox_mod.fork_env_cc(sandbox_mod.tf_env_cc("core"))
    m = site.regex.search(text)
    assert m, site.name
    return m.group(0) + "\n"


# ---------------------------------------------------------------------------------------
# forkops resolutions list | show | forget
# ---------------------------------------------------------------------------------------
def test_cli_list_show_forget(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace.load(sandbox.workspace)
    check = _check(sandbox, ws, "serving", tags=["2.18.0"])
    resolve_stop_by_hand(ws, "serving", sandbox.clone("serving"), tmp_path / "p", onto=check.results[0].onto,
                         base=check.refs.base_sha, start=check.refs.start_sha, stops=1)
    monkeypatch.chdir(sandbox.workspace)
    res = run_cli("resolutions", "list", "--json")
    assert res.code == 0, res.err
    items = json.loads(res.out)["resolutions"]
    assert [(i["repo"], i["path"]) for i in items] == [("serving", "WORKSPACE")]
    rid = items[0]["id"]
    assert Path(items[0]["file"]) == sandbox.workspace / "resolutions" / "serving" / f"{rid}.txt"
    res = run_cli("resolutions", "list")
    assert res.code == 0 and rid in res.out and "WORKSPACE" in res.out
    res = run_cli("resolutions", "show", rid[:8])
    assert res.code == 0 and "ours (upstream):" in res.out and "resolution:" in res.out
    res = run_cli("resolutions", "forget", "zz")
    assert res.code == 2 and "not a resolution id" in res.err and "Traceback" not in res.err
    res = run_cli("resolutions", "forget", "0000")
    assert res.code == 2 and "no recorded resolution" in res.err
    res = run_cli("resolutions", "forget", rid[:8])
    assert res.code == 0, res.err
    assert not list((sandbox.workspace / "resolutions" / "serving").glob("*.txt"))
    assert json.loads(run_cli("resolutions", "list", "--json").out)["resolutions"] == []


def test_malformed_record_is_bad_input_for_check(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = sandbox.workspace / "resolutions" / "serving" / "0123456789abcdef.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("forkops resolution 1\nrepo: serving\n")
    monkeypatch.chdir(sandbox.workspace)
    res = run_cli("check", "--repo", "serving")
    assert res.code == 2 and "resolutions/serving/0123456789abcdef.txt: line" in res.err
    assert "Traceback" not in res.err


# ---------------------------------------------------------------------------------------
# A resolution that empties the commit: git drops it at --continue; so does the simulation
# ---------------------------------------------------------------------------------------
def _init(path: Path) -> None:
    """A new repository at ``path`` on branch main, with an identity to commit with."""
    path.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "a@b"], ["config", "user.name", "a"]):
        _git(path, *args)


def _small_fork(path: Path) -> tuple[str, str, list[str]]:
    """main (upstream) and fork branching from base; fork1 conflicts with upstream on f, fork2
    changes g. Returns (base, main, [fork1, fork2])."""
    _init(path)
    (path / "f").write_text("a\nb\nc\n")
    (path / "g").write_text("x\n")
    _git(path, "add", ".")
    _git(path, "commit", "-qm", "base")
    base = _git(path, "rev-parse", "HEAD").stdout.strip()
    _git(path, "checkout", "-qb", "fork")
    (path / "f").write_text("a\nB-fork\nc\n")
    _git(path, "commit", "-qam", "fork1")
    (path / "g").write_text("y\n")
    _git(path, "commit", "-qam", "fork2")
    _git(path, "checkout", "-q", "main")
    (path / "f").write_text("a\nB-up\nc\n")
    _git(path, "commit", "-qam", "up")
    main = _git(path, "rev-parse", "HEAD").stdout.strip()
    return base, main, _git(path, "rev-list", "--reverse", f"{base}..fork").stdout.split()


@pytest.mark.parametrize("keep", ["ours", "theirs"])
def test_resolution_that_empties_the_commit_drops_it_like_git(tmp_path: Path, keep: str) -> None:
    base, main, shas = _small_fork(tmp_path / "r")
    ws = workspace.Workspace(root=tmp_path / "ws", file=tmp_path / "ws" / "forkops.toml", repos=())
    person = _scratch(tmp_path / "r", tmp_path / "person", shas[-1])
    _git(person, "rebase", "--onto", main, base, check=False)
    repo = Repo(person)
    assert resolutions.apply(ws, "r", repo) == []
    _git(person, "checkout", f"--{keep}", "--", "f")
    _git(person, "add", "f")
    assert [r.status for r in resolutions.record(ws, "r", repo)] == ["recorded"]
    _git(person, "rebase", "--continue")
    kept = _git(person, "log", "--format=%s", f"{main}..HEAD").stdout.split()
    assert kept == (["fork2"] if keep == "ours" else ["fork2", "fork1"])

    patches = predict.load_patches(Repo(tmp_path / "r"), shas)
    with predict.Simulator(Repo(tmp_path / "r"), patches, resolutions=resolutions.Book.of(ws.root, "r")) as sim:
        pred = sim.predict(TagName("main"), main, None)
    assert pred.status == "resolved" and [r.stopped_at.index for r in pred.resolved] == [1]
    assert [p.subject for p in pred.dropped] == ([] if keep == "theirs" else ["fork1"])
    assert pred.tree == _git(person, "rev-parse", "HEAD^{tree}").stdout.strip()
    # and the real rebase with the recorded resolution, in a fresh clone, agrees
    real = rebase_with_resolutions(ws, "r", tmp_path / "r", tmp_path / "again", onto=main, base=base, start=shas[-1])
    assert real.head_tree == pred.tree and real.resolved_at == [1]


def test_symlink_conflicts_are_neither_recorded_nor_written_as_files(tmp_path: Path) -> None:
    """A conflict between two symlink targets is no text conflict: recording it, and applying a
    record whose text happens to cover it, would turn the link into a regular file."""
    r = tmp_path / "r"
    _init(r)
    (r / "link").symlink_to("target-a")
    (r / "f").write_text("target-a")
    _git(r, "add", ".")
    _git(r, "commit", "-qm", "base")
    base = _git(r, "rev-parse", "HEAD").stdout.strip()
    _git(r, "checkout", "-qb", "fork")
    for path in ("link", "f"):  # the same text conflict, once in a symlink and once in a file
        (r / path).unlink()
    (r / "link").symlink_to("target-fork")
    (r / "f").write_text("target-fork")
    _git(r, "commit", "-qam", "fork")
    _git(r, "checkout", "-q", "main")
    for path in ("link", "f"):
        (r / path).unlink()
    (r / "link").symlink_to("target-up")
    (r / "f").write_text("target-up")
    _git(r, "commit", "-qam", "up")
    main = _git(r, "rev-parse", "HEAD").stdout.strip()
    ws = workspace.Workspace(root=tmp_path / "ws", file=tmp_path / "ws" / "forkops.toml", repos=())
    person = _scratch(r, tmp_path / "person", _git(r, "rev-parse", "fork").stdout.strip())
    _git(person, "rebase", "--onto", main, base, check=False)
    repo = Repo(person)
    assert sorted(repo.unmerged_paths()) == ["f", "link"]
    resolutions.apply(ws, "r", repo)
    for path in ("link", "f"):
        (person / path).unlink()
    (person / "link").symlink_to("target-both")
    (person / "f").write_text("target-both")
    _git(person, "add", "link", "f")
    recorded = {x.path: (x.status, x.reason) for x in resolutions.record(ws, "r", repo)}
    assert recorded == {"f": ("recorded", ""), "link": ("skipped", "not a regular file")}
    # The record made for f covers link's text too: applied at the same stop elsewhere, it
    # resolves f and leaves link alone.
    again = _scratch(r, tmp_path / "again", _git(r, "rev-parse", "fork").stdout.strip())
    _git(again, "rebase", "--onto", main, base, check=False)
    assert [a.path for a in resolutions.apply(ws, "r", Repo(again))] == ["f"]
    assert (again / "link").is_symlink() or not (again / "link").exists()


def test_record_skips_a_stale_snapshot_and_unresolved_files(tmp_path: Path) -> None:
    base, main, shas = _small_fork(tmp_path / "r")
    ws = workspace.Workspace(root=tmp_path / "ws", file=tmp_path / "ws" / "forkops.toml", repos=())
    person = _scratch(tmp_path / "r", tmp_path / "person", shas[-1])
    _git(person, "rebase", "--onto", main, base, check=False)
    repo = Repo(person)
    resolutions.apply(ws, "r", repo)
    assert [(r.status, r.reason) for r in resolutions.record(ws, "r", repo)] == [("skipped", "still unmerged")]
    # resolved with conflict markers left in: git add accepts it, but it is not a resolution
    resolutions.apply(ws, "r", repo)
    _git(person, "add", "f")
    out = resolutions.record(ws, "r", repo)
    assert [r.status for r in out] == ["skipped"] and not (ws.root / "resolutions").exists()
    # a snapshot from another stop (here: the rebase is gone) is dropped, never recorded
    resolutions.apply(ws, "r", repo)
    _git(person, "rebase", "--abort")
    assert resolutions.record(ws, "r", repo) == []
    assert not (repo.git_dir / "forkops" / "resolutions-pending.json").exists()


def test_check_and_nightly_report_resolved_recorded(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = workspace.load(sandbox.workspace)
    before = _check(sandbox, ws, "tensorflow", tags=["2.18.0"])
    resolve_stop_by_hand(ws, "tensorflow", sandbox.clone("tensorflow"), tmp_path / "p", onto=before.results[0].onto,
                         base=before.refs.base_sha, start=before.refs.start_sha, stops=1)
    res = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.18.0", "--json")
    assert res.code == 0, res.out + res.err
    result = json.loads(res.out)["results"][0]
    assert (result["status"], result["recorded"], result["compatible"]) == ("resolved", True, True)
    assert result["resolved"][0]["commit"]["index"] == 3
    assert [f["path"] for f in result["resolved"][0]["files"]] == [".bazelrc"]
    assert result["next"] == "forkops upgrade 2.18.0 --repo tensorflow --accept-recorded"
    res = run_cli("-C", str(sandbox.workspace), "check", "--repo", "tensorflow", "--tags", "2.18.0")
    assert "resolved (recorded) at 3 of 5" in res.out and "with recorded resolutions" in res.out

    out = tmp_path / "out"
    res = run_cli("-C", str(sandbox.workspace), "nightly", "--repo", "tensorflow", "--report-dir", str(out))
    assert res.code == 0, res.out + res.err  # the only conflicting tag has a recorded resolution
    assert "| `v2.18.0` | 🔁 resolved (recorded) at 3 of 5 (1 dropped) |" in (out / "report.md").read_text()
    junit = (out / "junit.xml").read_text()
    assert "<failure" not in junit and "resolved with recorded resolutions at 3/5" in junit


# ---------------------------------------------------------------------------------------
# Done when: resolve a stop once, commit resolutions/, clone the workspace elsewhere
# ---------------------------------------------------------------------------------------
def _cli(ws: Path, *args: str) -> tuple[int, str]:
    res = run_cli("-C", str(ws), *args)
    return int(res.code), res.out + res.err


def _commit_workspace(ws: Path) -> None:
    _git(ws, "init", "--quiet", "-b", "main")
    _git(ws, "config", "user.email", "maintainer@example.com")
    _git(ws, "config", "user.name", "Maintainer")
    _git(ws, "add", "forkops.toml", ".gitignore", "resolutions")
    _git(ws, "commit", "--quiet", "-m", "forkops workspace with recorded resolutions")


def test_resolve_once_commit_clone_elsewhere_check_and_upgrade_agree(sandbox: Sandbox, tmp_path: Path) -> None:
    first = sandbox.workspace
    code, out = _cli(first, "upgrade", "2.18.0", "--repo", "tensorflow")
    assert code == 1 and ".bazelrc" in out, out
    tf = sandbox.clone("tensorflow")
    ours = _git(tf, "show", ":2:.bazelrc").stdout
    (tf / ".bazelrc").write_text(sandbox_mod.resolve("tensorflow", ".bazelrc", ours=ours, theirs=None) or "")
    _git(tf, "add", ".bazelrc")
    code, out = _cli(first, "upgrade", "--continue")
    assert code == 0, out
    recorded = list((first / "resolutions" / "tensorflow").glob("*.txt"))
    assert len(recorded) == 1 and "path: .bazelrc" in recorded[0].read_text()
    first_tree = _git(tf, "rev-parse", "b2.18.0^{tree}").stdout.strip()
    _commit_workspace(first)

    # A teammate (or CI) clones the workspace: no fork clones, no rr-cache, only the records.
    second = tmp_path / "elsewhere"
    _git(tmp_path, "clone", "--quiet", str(first), str(second))
    res = run_cli("-C", str(second), "check", "--repo", "tensorflow", "--tags", "2.18.0", "--json")
    assert res.code == 0, res.out + res.err
    result = json.loads(res.out)["results"][0]
    assert (result["status"], result["recorded"]) == ("resolved", True)
    assert result["resolved"][0]["commit"]["index"] == 3

    code, out = _cli(second, "upgrade", "2.18.0", "--repo", "tensorflow")
    assert code == 1 and "resolved (recorded)" in out, out  # applied, waiting for the person's word
    status = json.loads(run_cli("-C", str(second), "status", "--json").out)
    assert [(c["path"], c["kind"], c["recorded"]) for c in status["conflicts"]] == [(".bazelrc", "content", True)]
    bazelrc = (second / "tensorflow" / ".bazelrc").read_text()
    assert "<<<<<<<" not in bazelrc  # written from the record; --continue is the person's word
    code, out = _cli(second, "upgrade", "--continue")
    assert code == 0, out
    assert _git(second / "tensorflow", "rev-parse", "b2.18.0^{tree}").stdout.strip() == first_tree

    # --accept-recorded: no stop at all
    third = tmp_path / "third"
    _git(tmp_path, "clone", "--quiet", str(first), str(third))
    code, out = _cli(third, "upgrade", "2.18.0", "--repo", "tensorflow", "--accept-recorded")
    assert code == 0 and "resolved (recorded)" in out, out
    assert _git(third / "tensorflow", "rev-parse", "b2.18.0^{tree}").stdout.strip() == first_tree


def test_replace_in_trees_equals_what_an_index_writes(tmp_path: Path) -> None:
    repo_path = tmp_path / "r"
    repo_path.mkdir()
    _git(repo_path, "init", "--quiet")
    files = {"top.txt": "t\n", "a/x.cc": "x\n", "a/b/y.cc": "y\n", "a/b/z.cc": "z\n", "a-b/q": "q\n",
             "a/b.c": "bc\n", "run.sh": "#!/bin/sh\n"}
    for path, text in files.items():
        (repo_path / path).parent.mkdir(parents=True, exist_ok=True)
        (repo_path / path).write_text(text)
    (repo_path / "run.sh").chmod(0o755)
    _git(repo_path, "add", "-A")
    tree = _git(repo_path, "write-tree").stdout.strip()
    repo = Repo(repo_path)
    change = {"a/b/y.cc": ("100644", b"Y\n"), "a/b/z.cc": ("100755", b"Z\n"), "top.txt": ("100644", b"T\n"),
              "run.sh": ("100755", b"#!/bin/sh\nexit 0\n")}
    def write(kind: str, bodies: Sequence[bytes]) -> list[str]:
        return [repo.run("hash-object", "-w", "-t", kind, "--stdin", input=b).strip() for b in bodies]

    def replace_files(files: dict[str, tuple[str, bytes]]) -> str | None:
        return resolutions.replace_in_trees(repo, [(tree, files)], write=write)[0]

    got = replace_files(change)
    index = tmp_path / "index"
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    subprocess.run(["git", "-C", str(repo_path), "read-tree", tree], env=env, check=True)
    for path, (mode, data) in change.items():
        blob = subprocess.run(["git", "-C", str(repo_path), "hash-object", "-w", "--stdin"], input=data,
                              capture_output=True, check=True).stdout.decode().strip()
        subprocess.run(["git", "-C", str(repo_path), "update-index", "--cacheinfo", f"{mode},{blob},{path}"],
                       env=env, check=True)
    expected = subprocess.run(["git", "-C", str(repo_path), "write-tree"], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert got == expected
    assert _git(repo_path, "fsck", "--strict").returncode == 0
    # a path that is not a file of the tree: not ours to add
    assert replace_files({"a/new.cc": ("100644", b"n\n")}) is None
    assert replace_files({"a/b": ("100644", b"n\n")}) is None
    assert replace_files({"nodir/x": ("100644", b"n\n")}) is None


def test_serving_two_stops_recorded_by_a_person_then_accept_recorded_elsewhere(sandbox: Sandbox,
                                                                               tmp_path: Path) -> None:
    """Serving 2.18.0 stops twice (WORKSPACE; then both Dockerfiles, whose resolution also edits
    lines outside the conflict). Resolved once through `forkops upgrade`, a fresh workspace
    clone with --accept-recorded runs through both stops and reaches the same tree."""
    first = sandbox.workspace
    sv = sandbox.clone("serving")
    code, out = _cli(first, "upgrade", "2.18.0", "--repo", "serving")
    stops = 0
    while code == 1:
        stops += 1
        for path in Repo(sv).unmerged_paths():
            ours = _git(sv, "show", f":2:{path}").stdout
            theirs = _git(sv, "show", f":3:{path}").stdout
            content = sandbox_mod.resolve("serving", path, ours=ours, theirs=theirs)
            assert content is not None
            (sv / path).write_text(content)
            _git(sv, "add", "--", path)
        code, out = _cli(first, "upgrade", "--continue")
        assert stops < 5, out
    assert code == 0 and stops == 2, out
    records = resolutions.load(first, "serving")
    assert sorted(r.path for r in records) == ["WORKSPACE", "tensorflow_serving/tools/docker/Dockerfile.devel",
                                               "tensorflow_serving/tools/docker/Dockerfile.devel-gpu"]
    assert any(r.edits for r in records)  # the -gpu resolution moved the fetch outside its hunk
    tree = _git(sv, "rev-parse", "b2.18.0^{tree}").stdout.strip()
    _commit_workspace(first)

    other = tmp_path / "other"
    _git(tmp_path, "clone", "--quiet", str(first), str(other))
    code, out = _cli(other, "upgrade", "2.18.0", "--repo", "serving", "--accept-recorded")
    assert code == 0, out
    assert out.count("(--accept-recorded)") == 2 and "Dockerfile.devel-gpu: resolved (recorded)" in out
    assert _git(other / "serving", "rev-parse", "b2.18.0^{tree}").stdout.strip() == tree
