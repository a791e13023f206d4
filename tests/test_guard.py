"""The commit/push guard: hooks installed by `forkops set-key`, exercised by real `git commit`
and `git push` processes; `forkops guard scan` over real history."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from forkops import guard, guard_hook, keyfile
from forkops.git import Repo
from forkops.sandbox import TF_CORE, Sandbox
from forkops.secrets import Matcher
from tests.gitutil import git_run
from tests.test_keys import CRYPTFILE, KEY, assert_clean, cli, write_keys

CHECKOUT = Path(guard.__file__).resolve().parents[1]
IV = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def ws(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(sandbox.workspace)
    # The hooks git runs must import this checkout's forkops, the code that installed them,
    # whatever copy (editable or not) happens to be installed in site-packages.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])))
    write_keys(sandbox.workspace / "keys.toml")
    return sandbox.workspace


def git(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """:func:`tests.gitutil.git_run` (real git, as a user's shell would run it), plus what every
    git call here must show: the key in none of its output, success exactly when ``ok``."""
    proc = git_run(repo, *args)
    assert_clean(proc.stdout, proc.stderr)
    assert (proc.returncode == 0) == ok, (args, proc.stdout, proc.stderr)
    return proc


def clean_change(tf: Path, name: str = "notes.md") -> None:
    (tf / name).write_text(f"an ordinary change: {name}\n")
    git(tf, "add", name)


# -- matching ------------------------------------------------------------------------------------
def test_matcher_finds_every_encoding_and_ignores_the_default_iv() -> None:
    m = Matcher(keyfile.KeyMaterial("aes-128-cbc", KEY, b"7" * 16))
    arr = ",\n\t ".join(f"0X{b:02X}" for b in KEY)
    cases = {
        b'kKey[] = "' + KEY + b'";': "text",
        b"key_hex = " + KEY.hex().upper().encode(): "hex",
        b'"' + "".join(f"\\X{b:02X}" for b in KEY).encode() + b'"': "C string escapes",
        b"byte key[16] = {" + arr.encode() + b"};": "C byte array",
        b"{" + ", ".join(str(b) for b in KEY).encode() + b"}": "C byte array",
        # a word right before the elements (no brace): found too
        b"decimal " + ", ".join(str(b) for b in KEY).encode(): "C byte array",
        b"uint8 kKey " + ", ".join(f"0x{b:02x}" for b in KEY).encode() + b";": "C byte array",
    }
    for content, form in cases.items():
        assert m.find(content) == [("key", form)]
    assert m.find(b'kIv[] = "7777777777777777"; {0x37, 0x37}') == []
    assert m.find(KEY[:-1] + b"X" + KEY.hex()[:-2].encode()) == []
    assert m.find(b"{1" + b",".join(str(b).encode() for b in KEY) + b"}") == []  # 184 is not 84


def test_matcher_flags_a_custom_iv() -> None:
    m = Matcher(keyfile.KeyMaterial("aes-128-cbc", KEY, IV))
    assert m.find(b"iv = {" + b", ".join(f"0x{b:02x}".encode() for b in IV) + b"}") == [("iv", "C byte array")]


# -- hooks with real git ---------------------------------------------------------------------------
def test_commit_with_the_key_staged_is_refused(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("set-key").code == 0
    clean_change(tf)
    git(tf, "commit", "-m", "clean change")  # allowed: the sites are modified but not staged
    head = Repo(tf).rev_parse("HEAD")

    git(tf, "add", TF_CORE)
    proc = git(tf, "commit", "-m", "leak", ok=False)
    assert f"staged {TF_CORE}: the key ({keyfile.fingerprint(KEY)}) as C byte array" in proc.stderr
    assert "refusing the commit" in proc.stderr
    git(tf, "reset", "-q")
    git(tf, "commit", "-a", "-m", "leak via -a", ok=False)  # git's temporary index (GIT_INDEX_FILE)
    git(tf, "commit", "-m", "leak via pathspec", "--", CRYPTFILE, ok=False)
    git(tf, "commit", "-m", "leak via pathspec", "--", ".bazelrc", ok=False)
    assert Repo(tf).rev_parse("HEAD") == head
    assert "clean change" in git(tf, "log", "-1", "--format=%s").stdout


def test_push_of_a_commit_with_the_key_is_refused(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("set-key").code == 0
    clean_change(tf)
    git(tf, "commit", "-m", "clean")
    git(tf, "push", "-q", "origin", "b2.4.0")  # allowed
    git(tf, "add", ".bazelrc")
    git(tf, "commit", "--no-verify", "-m", "sneaked past pre-commit")
    clean_change(tf, "later.md")
    git(tf, "commit", "-m", "a later clean commit")
    proc = git(tf, "push", "origin", "b2.4.0", ok=False)
    assert "refusing the push" in proc.stderr and " .bazelrc: the key" in proc.stderr
    proc = git(tf, "push", "origin", "HEAD:refs/heads/new-branch", ok=False)  # a new branch too
    remote = Repo(ws.parent / "origin" / "tensorflow.git")
    assert remote.rev_parse("refs/heads/new-branch") is None
    assert remote.rev_parse("refs/heads/b2.4.0") == Repo(tf).rev_parse("HEAD~2")

    # guard scan sees it in history and names the commit, never the key
    bad = Repo(tf).rev_parse("HEAD~1")
    assert bad is not None
    r = cli("guard", "scan", "--repo", "tensorflow")
    assert r.code == 1 and f"commit {bad[:12]} .bazelrc: the key" in r.out
    assert cli("guard", "scan", "--repo", "tensorflow", "HEAD~2").code == 0
    assert cli("guard", "scan", "--repo", "tensorflow", "HEAD~1..HEAD").code == 0
    r = cli("guard", "scan", "--repo", "tensorflow", "--json", "--", "--all")
    assert r.code == 1 and f'"commit": "{bad}"' in r.out

    git(tf, "reset", "-q", "--hard", "HEAD~2")
    git(tf, "push", "-q", "origin", "HEAD:refs/heads/new-branch")  # allowed again


def checked(proc: subprocess.CompletedProcess[str]) -> int:
    """How many outgoing commits the pre-push hook scanned (its success line)."""
    m = re.search(r"forkops guard: checked (\d+) outgoing commit\(s\)", proc.stderr)
    assert m, proc.stderr
    return int(m.group(1))


def count(repo: Path, *revs: str) -> int:
    return int(git(repo, "rev-list", "--count", *revs).stdout)


def test_a_local_tag_does_not_hide_a_key_commit(ws: Path, sandbox: Sandbox) -> None:
    tf = ws / "tensorflow"
    origin = Repo(sandbox.origin["tensorflow"])
    assert cli("set-key").code == 0
    # The reviewer's repro, verbatim.
    git(tf, "checkout", "-b", "leaktest")
    git(tf, "commit", "-qam", "oops", "--no-verify")
    git(tf, "tag", "wip")
    proc = git(tf, "push", "origin", "leaktest", ok=False)
    assert "refusing the push" in proc.stderr and " .bazelrc: the key" in proc.stderr
    git(tf, "tag", "-d", "wip")
    git(tf, "push", "origin", "leaktest", ok=False)

    # A tag named like a release that upstream lacks, or has at another commit, hides nothing.
    for tag in ("v9.9.9", "v2.4.1"):
        git(tf, "tag", "-f", tag, "leaktest")
        proc = git(tf, "push", "origin", "leaktest", ok=False)
        assert f"tag {tag} is not upstream's release tag at that commit" in proc.stderr
    git(tf, "fetch", "-q", "--no-tags", sandbox.upstream_url("tensorflow"), "+refs/tags/v2.4.1:refs/tags/v2.4.1")
    # Nor does a remote-tracking ref of another remote, nor a push by URL instead of by name.
    git(tf, "remote", "add", "mirror", str(ws.parent / "elsewhere.git"))
    git(tf, "update-ref", "refs/remotes/mirror/leaktest", "leaktest")
    git(tf, "push", "origin", "leaktest", ok=False)
    git(tf, "push", str(origin.path), "leaktest", ok=False)
    assert origin.rev_parse("refs/heads/leaktest") is None

    git(tf, "reset", "-q", "--hard", "HEAD~1")  # the leak is gone: the same push goes through
    clean_change(tf)
    git(tf, "commit", "-m", "clean")
    assert checked(git(tf, "push", "origin", "leaktest")) == 1


def test_new_fork_branch_on_an_upstream_tag_skips_upstream_history(ws: Path, sandbox: Sandbox) -> None:
    tf = ws / "tensorflow"
    git(tf, "remote", "add", "--no-tags", "tf", sandbox.upstream_url("tensorflow"))
    git(tf, "fetch", "-q", "--no-tags", "tf", "+refs/tags/v2.11.0:refs/tags/v2.11.0")
    git(tf, "checkout", "-q", "-b", "b2.11.0")
    git(tf, "rebase", "-q", "--onto", "v2.11.0", "v2.4.0")
    assert cli("set-key").code == 0  # the key is in the worktree, not in a commit

    fork_commits = count(tf, "v2.11.0..b2.11.0")
    upstream_commits = count(tf, "v2.4.0..v2.11.0")
    assert 0 < fork_commits < upstream_commits
    # Outside a workspace nothing confirms the tag: the same push would read upstream's history.
    repo = Repo(tf)
    line = f"refs/heads/b2.11.0 {repo.rev_parse('HEAD')} refs/heads/b2.11.0 {'0' * 40}"
    matcher = Matcher(keyfile.load(ws / "keys.toml"))
    safe = guard_hook.scan_push(str(tf), "origin", [line], matcher, upstream=False)
    unpublished = count(tf, "HEAD", "--not", "--remotes=origin")
    assert safe.commits == unpublished > fork_commits and safe.trusted_tags == () and safe.findings == []

    proc = git(tf, "push", "origin", "b2.11.0")
    assert checked(proc) == fork_commits and "upstream tag(s) v2.11.0 skipped" in proc.stderr
    assert Repo(sandbox.origin["tensorflow"]).rev_parse("refs/heads/b2.11.0") == repo.rev_parse("HEAD")

    # A push by URL still knows which remote it goes to: only the new commit is read.
    clean_change(tf)
    git(tf, "commit", "-m", "clean")
    assert checked(git(tf, "push", str(sandbox.origin["tensorflow"]), "HEAD:refs/heads/topic")) == 1


def test_custom_iv_is_guarded_default_iv_is_not(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("set-key").code == 0
    git(tf, "add", CRYPTFILE)  # kIv holds the public default: fine; kKey holds the key: refused
    git(tf, "commit", "-m", "x", ok=False)
    git(tf, "checkout", "-q", "HEAD", "--", CRYPTFILE)

    write_keys(ws / "keys.toml", iv=IV)
    assert cli("set-key").code == 0
    cc = tf / CRYPTFILE
    cc.write_text(cc.read_text().replace(f'kKey[] = "{KEY.decode()}"', 'kKey[] = "CHANGE_ME_16BYTE"'))
    git(tf, "add", CRYPTFILE)
    proc = git(tf, "commit", "-m", "iv only", ok=False)
    assert f"the iv ({keyfile.fingerprint(IV)}) as C string escapes" in proc.stderr
    assert_clean(proc.stderr, secret=IV)


def test_existing_hooks_are_chained_and_still_block(ws: Path) -> None:
    tf = ws / "tensorflow"
    hooks = tf / ".git" / "hooks"
    marker = tf.parent / "legacy-ran"
    (hooks / "commit-msg").write_text(f'#!/bin/sh\necho ran >> "{marker}"\nexit "$(cat {tf.parent}/legacy-rc)"\n')
    (hooks / "commit-msg").chmod(0o755)
    (hooks / "pre-push").write_text(f'#!/bin/sh\ncat > "{tf.parent}/push-stdin"\n')
    (hooks / "pre-push").chmod(0o755)
    (tf.parent / "legacy-rc").write_text("0")
    legacy = (hooks / "commit-msg").read_text()

    assert cli("set-key").code == 0
    assert cli("set-key").code == 0  # re-install is idempotent: the chained hook is not clobbered
    assert (hooks / "commit-msg.forkops-chained").read_text() == legacy
    assert guard.is_ours(hooks / "commit-msg") and all(guard.installed(tf).values())

    clean_change(tf)
    git(tf, "commit", "-m", "clean")
    assert marker.read_text() == "ran\n"
    (tf.parent / "legacy-rc").write_text("1")
    clean_change(tf, "more.md")
    git(tf, "commit", "-m", "the legacy hook fails", ok=False)
    assert marker.read_text() == "ran\nran\n"
    (tf.parent / "legacy-rc").write_text("0")
    git(tf, "commit", "-m", "ok now")
    git(tf, "push", "-q", "origin", "b2.4.0")
    head = Repo(tf).rev_parse("HEAD")
    assert f"refs/heads/b2.4.0 {head} refs/heads/b2.4.0" in (tf.parent / "push-stdin").read_text()


def test_hooks_honour_core_hookspath_and_work_without_a_shell_environment(ws: Path) -> None:
    tf = ws / "tensorflow"
    git(tf, "config", "core.hooksPath", "myhooks")
    assert cli("set-key", "--repo", "tensorflow").code == 0
    assert guard.is_ours(tf / "myhooks" / "commit-msg")
    git(tf, "add", ".bazelrc")
    # A minimal environment (no PATH to a venv, no PYTHONPATH): the hook names its python itself.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.environ["GIT_CONFIG_GLOBAL"]}
    proc = subprocess.run(["git", "-C", str(tf), "commit", "-m", "leak"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "refusing the commit" in proc.stderr, proc.stderr
    assert_clean(proc.stdout, proc.stderr)


def test_hook_fails_closed_without_a_usable_keys_file(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("set-key").code == 0
    git(tf, "checkout", "-q", ".")
    clean_change(tf)
    (ws / "keys.toml").chmod(0o644)
    proc = git(tf, "commit", "-m", "x", ok=False)
    assert "cannot read the keys file" in proc.stderr and "chmod 600" in proc.stderr
    (ws / "keys.toml").unlink()
    proc = git(tf, "commit", "-m", "x", ok=False)
    assert "keys file not found" in proc.stderr
    git(tf, "commit", "--no-verify", "-m", "x")


def test_hook_refuses_when_another_hook_is_in_the_way(ws: Path) -> None:
    hooks = ws / "tensorflow" / ".git" / "hooks"
    for name in ("commit-msg", "commit-msg.forkops-chained"):
        (hooks / name).write_text("#!/bin/sh\nexit 0\n")
    r = cli("set-key")
    assert r.code == 2 and "commit-msg.forkops-chained is taken" in r.err
    assert (hooks / "commit-msg").read_text() == "#!/bin/sh\nexit 0\n"


def test_an_earlier_versions_pre_commit_hook_is_retired_and_its_chained_hook_restored(ws: Path) -> None:
    hooks = ws / "tensorflow" / ".git" / "hooks"
    (hooks / "pre-commit").write_text(f"#!/bin/sh\n{guard.MARKER} an earlier install\nexit 0\n")
    (hooks / "pre-commit.forkops-chained").write_text("#!/bin/sh\necho the user's own hook\n")
    assert cli("guard", "install").code == 0
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\necho the user's own hook\n"
    assert not (hooks / "pre-commit.forkops-chained").exists()


def test_scan_rejects_bad_ranges(ws: Path) -> None:
    assert cli("guard", "scan", "--repo", "tensorflow", "no-such-rev").code == 2
    assert cli("guard", "scan", "--repo", "tensorflow", "--", "--output=x").code == 2


# -- issue 12: every object a push sends, messages, hooks that fail closed ---------------------------
def test_push_of_tags_and_messages_holding_the_key_is_refused(ws: Path, sandbox: Sandbox) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    remote = Repo(sandbox.origin["tensorflow"])
    blob = subprocess.run(["git", "-C", str(tf), "hash-object", "-w", "--stdin"], input=b"k=" + KEY,
                       capture_output=True, check=True).stdout.decode().strip()
    git(tf, "tag", "-a", "blobtag", "-m", "a tag of a blob", blob)
    proc = git(tf, "push", "origin", "refs/tags/blobtag", ok=False)
    assert "refusing the push" in proc.stderr and remote.rev_parse("refs/tags/blobtag") is None

    tree = subprocess.run(["git", "-C", str(tf), "mktree"], input=f"100644 blob {blob}\tleak.txt\n".encode(),
                          capture_output=True, check=True).stdout.decode().strip()
    git(tf, "tag", "-a", "treetag", "-m", "a tag of a tree", tree)
    git(tf, "push", "origin", "refs/tags/treetag", ok=False)
    assert remote.rev_parse("refs/tags/treetag") is None

    git(tf, "tag", "-a", "msgtag", "-m", f"release notes {KEY.hex()}", "HEAD")
    proc = git(tf, "push", "origin", "refs/tags/msgtag", ok=False)
    assert "tag msgtag" in proc.stderr and remote.rev_parse("refs/tags/msgtag") is None

    clean_change(tf)
    git(tf, "commit", "-q", "--no-verify", "-m", "message with " + KEY.decode())
    proc = git(tf, "push", "origin", "HEAD:refs/heads/msg", ok=False)
    assert "message: the key" in proc.stderr and remote.rev_parse("refs/heads/msg") is None
    r = cli("guard", "scan", "--repo", "tensorflow", "--", "--all")
    assert r.code == 1 and "message: the key" in r.out and "tag msgtag" in r.out


def test_commit_msg_hook_refuses_the_key_in_a_message(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    clean_change(tf)
    head = Repo(tf).rev_parse("HEAD")
    proc = git(tf, "commit", "-m", "oops " + ",".join(f"0x{b:x}u" for b in KEY), ok=False)
    assert "commit message: the key" in proc.stderr
    assert Repo(tf).rev_parse("HEAD") == head
    git(tf, "commit", "-m", "a clean message")


def test_hook_fails_closed_in_one_line_when_its_python_is_gone(ws: Path, tmp_path: Path) -> None:
    tf = ws / "tensorflow"
    gone = tmp_path / "venv" / "bin" / "python"
    guard.install_hooks(tf, ws / "keys.toml", python=str(gone))
    clean_change(tf)
    proc = git(tf, "commit", "-m", "x", ok=False)
    assert proc.stderr.strip().count("\n") == 0 and "forkops guard install" in proc.stderr


def test_hooks_do_not_import_typer_rich_or_gitpython(ws: Path, tmp_path: Path) -> None:
    import sys

    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    clean_change(tf)
    (tmp_path / "msg").write_text("a clean message\n")
    heavy = ("typer", "rich", "git", "dataclasses", "pathlib", "tomllib", "forkops.git", "forkops.playbook",
             "forkops.guard")
    probe = ("import sys; from forkops.guard_hook import main;"
             f"code = main(['commit-msg', '--keys', {str(ws / 'keys.toml')!r}, '--', {str(tmp_path / 'msg')!r}]);"
             f"print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)")
    entry = f"import sys; sys.path.append({str(CHECKOUT)!r}); {probe}"  # as the hook script starts it
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", entry], cwd=tf, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_tracked_hooks_folder_is_not_written_and_chaining_is_explained(ws: Path) -> None:
    tf = ws / "tensorflow"
    shared = tf / ".husky"
    shared.mkdir()
    (shared / "commit-msg").write_text("#!/bin/sh\nexit 0\n")
    (shared / "commit-msg").chmod(0o755)
    git(tf, "add", ".husky")
    git(tf, "commit", "-q", "-m", "shared hooks")
    git(tf, "config", "core.hooksPath", ".husky")
    before = (tf / ".bazelrc").read_text()
    r = cli("set-key")
    assert r.code == 2 and "core.hooksPath" in r.err and "forkops-hooks" in r.err
    assert (tf / ".bazelrc").read_text() == before  # nothing written
    assert not guard.is_ours(shared / "commit-msg")
    for hook in guard.HOOKS:
        line = guard.chain_line(hook)
        path = shared / hook
        path.write_text("#!/bin/sh\n" + line + "\n")
        path.chmod(0o755)
    assert cli("set-key").code == 0
    assert not any(guard.is_ours(shared / h) for h in guard.HOOKS)
    git(tf, "add", TF_CORE)
    proc = git(tf, "commit", "-m", "leak", ok=False)  # the tracked hook calls forkops' hook
    assert "refusing the commit" in proc.stderr


def test_set_key_without_key_sites_installs_the_guard_and_says_where_the_key_goes(ws: Path) -> None:
    cfg = ws / "forkops.toml"
    cfg.write_text("\n".join(line for line in cfg.read_text().splitlines()))
    # only the serving fork: its playbook declares no key sites
    text = cfg.read_text()
    start = text.index("[repos.tensorflow]")
    end = text.index("[repos.serving]")
    cfg.write_text(text[:start] + text[end:])
    r = cli("set-key")
    assert r.code == 0, r.err
    assert "libcryptfile.so" in r.out and "forkops cryptlib build" in r.out
    assert all(guard.installed(ws / "serving").values())


def test_scan_of_a_10000_commit_history_shows_progress_and_finds_a_tag_only_blob(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bighistory import generate

    repo = tmp_path / "big"
    generate(repo, files=300, commits=10_000, lines=10)
    keys_file = write_keys(tmp_path / "keys.toml")
    blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
                          input=b"x = {" + b", ".join(b"%d" % b for b in KEY) + b"}\n",
                          capture_output=True, check=True).stdout.decode().strip()
    git(repo, "tag", "-a", "only-a-tag", "-m", "nothing else reaches this blob", blob)
    monkeypatch.chdir(repo)
    r = cli("guard", "scan", "--keys", str(keys_file), "--", "--all")
    assert r.code == 1, r.err
    assert "10001 commit(s)" in r.out and f"blob {blob[:12]}" in r.out and "C byte array" in r.out
    assert "guard scan: big: 5000 object(s)" in r.err  # progress on a long scan
    assert cli("guard", "scan", "--keys", str(keys_file), "--", "--branches").code == 0


def test_push_without_tracking_refs_reads_only_what_the_remote_lacks(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    for ref in git(tf, "for-each-ref", "--format=%(refname)", "refs/remotes/").stdout.split():
        git(tf, "update-ref", "-d", ref)  # a clone that never fetched: git ls-remote still knows
    clean_change(tf)
    git(tf, "commit", "-q", "-m", "one new commit")
    assert checked(git(tf, "push", "origin", "HEAD:refs/heads/first-push")) == 1


def test_a_file_named_after_the_key_is_found(ws: Path) -> None:
    tf = ws / "tensorflow"
    (tf / f"notes-{KEY.hex()}.txt").write_text("harmless content\n")
    git(tf, "add", ".")
    git(tf, "commit", "-q", "--no-verify", "-m", "a name")
    matcher = Matcher(keyfile.load(ws / "keys.toml"))
    result = guard.scan_objects(Repo(tf), ["HEAD~1..HEAD"], matcher)
    assert [(f.kind, f.form) for f in result.findings] == [("path", "hex")]


def test_a_ref_straight_to_a_blob_and_a_large_file_are_scanned(ws: Path, sandbox: Sandbox) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    blob = subprocess.run(["git", "-C", str(tf), "hash-object", "-w", "--stdin"], input=KEY.hex().encode(),
                          capture_output=True, check=True).stdout.decode().strip()
    proc = git(tf, "push", "origin", f"{blob}:refs/tags/bare-blob", ok=False)
    assert "refusing the push" in proc.stderr
    assert Repo(sandbox.origin["tensorflow"]).rev_parse("refs/tags/bare-blob") is None
    big = tf / "weights.bin"
    big.write_bytes(os.urandom(3 << 20) + b"{" + b", ".join(b"%#x" % b for b in KEY) + b"}")
    git(tf, "add", "weights.bin")
    git(tf, "commit", "-q", "--no-verify", "-m", "large file")
    matcher = Matcher(keyfile.load(ws / "keys.toml"))
    found = guard.scan_objects(Repo(tf), ["HEAD~1..HEAD"], matcher).findings
    assert [(f.path, f.form) for f in found] == [("weights.bin", "C byte array")]


def _git_processes(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The git subcommands a hook ran, from its FORKOPS_DEBUG=1 trace."""
    return re.findall(r"^forkops: git (\S+)", proc.stderr, re.M)


def test_a_key_brought_in_by_a_merge_is_refused(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    base = git(tf, "rev-parse", "HEAD").stdout.strip()
    # Through the second parent (a side branch never pushed)...
    git(tf, "checkout", "-q", "-b", "side")
    (tf / "side.h").write_text(f'const char k[] = "{KEY.decode()}";\n')
    git(tf, "add", "side.h")
    git(tf, "commit", "-q", "--no-verify", "-m", "side")
    git(tf, "checkout", "-q", "-b", "merged", base)
    clean_change(tf)
    git(tf, "commit", "-q", "-m", "clean")
    git(tf, "merge", "-q", "--no-verify", "--no-edit", "side")
    proc = git(tf, "push", "origin", "merged", ok=False)
    assert "side.h: the key" in proc.stderr
    # ...and in a merge's own resolution, both parents clean.
    git(tf, "checkout", "-q", "-b", "resolved", base)
    clean_change(tf, "a.md")
    git(tf, "commit", "-q", "-m", "a")
    git(tf, "checkout", "-q", "-b", "other", base)
    clean_change(tf, "b.md")
    git(tf, "commit", "-q", "-m", "b")
    git(tf, "push", "-q", "origin", "other")
    git(tf, "checkout", "-q", "resolved")
    git(tf, "merge", "-q", "--no-commit", "other")
    (tf / "b.md").write_text(KEY.hex() + "\n")
    git(tf, "add", "b.md")
    git(tf, "commit", "-q", "--no-verify", "-m", "merge with an evil resolution")
    proc = git(tf, "push", "origin", "resolved", ok=False)
    assert "b.md: the key" in proc.stderr and "as hex" in proc.stderr


def test_a_replacement_ref_does_not_hide_a_key_commit(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    (tf / "leak.h").write_text(f'const char k[] = "{KEY.decode()}";\n')
    git(tf, "add", "leak.h")
    git(tf, "commit", "-q", "--no-verify", "-m", "leak")
    bad = Repo(tf).rev_parse("HEAD")
    assert bad is not None
    git(tf, "reset", "-q", "--hard", "HEAD~1")
    clean_change(tf)
    git(tf, "commit", "-q", "-m", "clean")
    git(tf, "replace", bad, "HEAD")  # git log now shows the clean commit where the leak is
    git(tf, "reset", "-q", "--hard", bad)
    proc = git(tf, "push", "origin", "HEAD:refs/heads/replaced", ok=False)  # push sends the real one
    assert "leak.h: the key" in proc.stderr
    r = cli("guard", "scan", "--repo", "tensorflow", "HEAD~1..HEAD")
    assert r.code == 1 and "leak.h: the key" in r.out


def test_pre_push_runs_few_git_processes(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    monkeypatch.setenv("FORKOPS_DEBUG", "1")
    clean_change(tf)
    git(tf, "commit", "-q", "-m", "one")
    # A new branch: the remote is asked what it has, once.
    proc = git(tf, "push", "origin", "HEAD:refs/heads/fresh")
    assert checked(proc) == 1 and _git_processes(proc) == ["ls-remote", "log", "cat-file"]
    # An update of a branch whose old value git knows here: no need to ask.
    clean_change(tf, "two.md")
    git(tf, "commit", "-q", "-m", "two")
    proc = git(tf, "push", "origin", "HEAD:refs/heads/fresh")
    assert checked(proc) == 1 and _git_processes(proc) == ["log", "cat-file"]
    clean_change(tf, "three.md")
    proc = git(tf, "commit", "-q", "-m", "three")
    assert _git_processes(proc) == ["diff-index", "cat-file"]


def test_hook_fails_closed_in_one_line_when_forkops_is_gone(ws: Path, tmp_path: Path) -> None:
    import sys

    tf = ws / "tensorflow"
    assert cli("guard", "install").code == 0
    hook = guard.hooks_dir(Repo(tf)) / "commit-msg"
    hook.write_text(guard.hook_script("commit-msg", ws / "keys.toml", sys.executable, tmp_path / "removed"))
    clean_change(tf)
    proc = git(tf, "commit", "-m", "x", ok=False)
    assert proc.stderr.strip().count("\n") == 0 and "cannot import forkops" in proc.stderr
    assert "forkops guard install" in proc.stderr
