"""The commit/push guard: hooks installed by `forkops set-key`, exercised by real `git commit`
and `git push` processes; `forkops guard scan` over real history."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from forkops import guard, keyfile
from forkops.git import Repo
from forkops.sandbox import TF_CORE, Sandbox
from tests.test_keys import CRYPTFILE, KEY, assert_clean, cli, write_keys

IV = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def ws(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(sandbox.workspace)
    write_keys(sandbox.workspace / "keys.toml")
    return sandbox.workspace


def git(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Real git in a clean child environment, as a user's shell would run it."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    assert_clean(proc.stdout, proc.stderr)
    assert (proc.returncode == 0) == ok, (args, proc.stdout, proc.stderr)
    return proc


def clean_change(tf: Path, name: str = "notes.md") -> None:
    (tf / name).write_text(f"an ordinary change: {name}\n")
    git(tf, "add", name)


# -- matching ------------------------------------------------------------------------------------
def test_matcher_finds_every_encoding_and_ignores_the_default_iv() -> None:
    m = guard.Matcher(keyfile.KeyMaterial("aes-128-cbc", KEY, b"7" * 16))
    arr = ",\n\t ".join(f"0X{b:02X}" for b in KEY)
    cases = {
        b'kKey[] = "' + KEY + b'";': "text",
        b"key_hex = " + KEY.hex().upper().encode(): "hex",
        b'"' + "".join(f"\\X{b:02X}" for b in KEY).encode() + b'"': "C \\x escapes",
        b"byte key[16] = {" + arr.encode() + b"};": "C byte array",
        b"{" + ", ".join(str(b) for b in KEY).encode() + b"}": "C byte array",
    }
    for content, form in cases.items():
        assert m.find(content) == [("key", form)]
    assert m.find(b'kIv[] = "7777777777777777"; {0x37, 0x37}') == []
    assert m.find(KEY[:-1] + b"X" + KEY.hex()[:-2].encode()) == []
    assert m.find(b"{1" + b",".join(str(b).encode() for b in KEY) + b"}") == []  # 184 is not 84


def test_matcher_flags_a_custom_iv() -> None:
    m = guard.Matcher(keyfile.KeyMaterial("aes-128-cbc", KEY, IV))
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
    assert f"the iv ({keyfile.fingerprint(IV)}) as C \\x escapes" in proc.stderr
    assert_clean(proc.stderr, secret=IV)


def test_existing_hooks_are_chained_and_still_block(ws: Path) -> None:
    tf = ws / "tensorflow"
    hooks = tf / ".git" / "hooks"
    marker = tf.parent / "legacy-ran"
    (hooks / "pre-commit").write_text(f'#!/bin/sh\necho ran >> "{marker}"\nexit "$(cat {tf.parent}/legacy-rc)"\n')
    (hooks / "pre-commit").chmod(0o755)
    (hooks / "pre-push").write_text(f'#!/bin/sh\ncat > "{tf.parent}/push-stdin"\n')
    (hooks / "pre-push").chmod(0o755)
    (tf.parent / "legacy-rc").write_text("0")
    legacy = (hooks / "pre-commit").read_text()

    assert cli("set-key").code == 0
    assert cli("set-key").code == 0  # re-install is idempotent: the chained hook is not clobbered
    assert (hooks / "pre-commit.forkops-chained").read_text() == legacy
    assert guard.is_ours(hooks / "pre-commit") and guard.installed(tf) == {"pre-commit": True, "pre-push": True}

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
    assert guard.is_ours(tf / "myhooks" / "pre-commit")
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
    for name in ("pre-commit", "pre-commit.forkops-chained"):
        (hooks / name).write_text("#!/bin/sh\nexit 0\n")
    r = cli("set-key")
    assert r.code == 2 and "pre-commit.forkops-chained is taken" in r.err
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"


def test_scan_rejects_bad_ranges(ws: Path) -> None:
    assert cli("guard", "scan", "--repo", "tensorflow", "no-such-rev").code == 2
    assert cli("guard", "scan", "--repo", "tensorflow", "--", "--output=x").code == 2
