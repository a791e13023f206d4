"""Key sites and `forkops set-key`, on real sandbox forks with all three site encodings."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from forkops import fsutil, keyfile, keys, playbook
from forkops.errors import BadInput, ConfigError
from forkops.sandbox import PLACEHOLDER_KEY, TF_CORE, Sandbox
from tests.clihelp import Result, run_cli
from tests.gitutil import git

KEY = b"Tk9fQ2xxZmEzNXR1"
CRYPTFILE = "tensorflow/tools/cryptfile/cryptfile.cc"
SITE_FILES = [".bazelrc", TF_CORE, CRYPTFILE]


def secret_forms(secret: bytes) -> list[str]:
    """Every way the secret could leak into output."""
    h = secret.hex()
    return [secret.decode("latin-1"), h, h.upper(), ", ".join(f"0x{b:02x}" for b in secret),
            "".join(f"\\x{b:02x}" for b in secret)]


def assert_clean(*texts: str, secret: bytes = KEY) -> None:
    for text in texts:
        for form in secret_forms(secret):
            assert form not in text, "a secret leaked into output"


def write_keys(path: Path, key: bytes = KEY, *, iv: bytes | None = None, mode: int = 0o600) -> Path:
    key_line = f'key = "{key.decode()}"' if key.isalnum() else f'key_hex = "{key.hex()}"'
    iv_line = "" if iv is None else f'iv_hex = "{iv.hex()}"\n'
    path.write_text(f'[model]\ncipher = "aes-128-cbc"\n{key_line}\n{iv_line}')
    path.chmod(mode)
    return path


def cli(*args: str) -> Result:
    r = run_cli(*args)
    assert_clean(r.out, r.err)
    return r


@pytest.fixture
def ws(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(sandbox.workspace)
    write_keys(sandbox.workspace / "keys.toml")
    return sandbox.workspace


def tf_playbook() -> playbook.Playbook:
    return playbook.load("tensorflow")


# -- encodings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["c-string", "c-bytes", "bazel-define"])
def test_printable_key_round_trips_in_every_encoding(encoding: str) -> None:
    text = keys.encode(KEY, encoding)
    assert keys.decode(text, encoding) == KEY


def test_binary_key_in_a_c_string_escapes_every_byte() -> None:
    # 0x41 followed by 'B' would read as \x41B (one escape, too large) if left unescaped.
    secret = bytes([0x8B, 0x41, 0x42, 0x00, 0x22, 0x5C, 0x3F]) + b"ABCDEF0123"
    text = keys.encode(secret, "c-string")
    assert re.fullmatch(r'"(\\x[0-9a-f]{2})+"', text)
    assert keys.decode(text, "c-string") == secret
    assert keys.decode(keys.encode(secret, "c-bytes"), "c-bytes") == secret
    with pytest.raises(keys.Unencodable, match="Bazel define"):
        keys.encode(secret, "bazel-define")


def test_c_decoding_follows_c_rules() -> None:
    with pytest.raises(ValueError, match="invalid \\\\x escape"):
        keys.decode('"\\x41B"', "c-string")  # C reads both hex digits into one escape
    assert keys.decode('"a\\101\\n\\"\\\\"', "c-string") == b'aA\n"\\'
    assert keys.decode("{\n  0X8B,\t139 , 0213, // third\n 0x0,\n}", "c-bytes") == bytes([139, 139, 139, 0])
    with pytest.raises(ValueError, match="above 0xff"):
        keys.decode("{0x100}", "c-bytes")
    with pytest.raises(ValueError):
        keys.decode("{key}", "c-bytes")


# -- set-key -------------------------------------------------------------------------------------
def test_set_key_writes_every_site_and_check_passes(ws: Path) -> None:
    tf = ws / "tensorflow"
    before = {p: (tf / p).read_bytes() for p in SITE_FILES}
    r = cli("set-key")
    assert r.code == 0, r.err
    fp = keyfile.fingerprint(KEY)
    assert r.out.count(fp) >= 4 and "all 5 key sites agree" in r.out

    results = keys.read_sites(tf, tf_playbook())
    assert sorted((x.path, x.site) for x in results) == sorted([
        (".bazelrc", "bazelrc key define"), (TF_CORE, "env.cc key"), (TF_CORE, "env.cc iv"),
        (CRYPTFILE, "cryptfile.cc key"), (CRYPTFILE, "cryptfile.cc iv")])
    assert {x.fingerprint for x in results if x.value == "key"} == {fp}
    assert keys.site_paths(tf, tf_playbook()) == sorted(SITE_FILES)
    assert f"MODEL_ENCRYPT_KEY={KEY.decode()}\n" in (tf / ".bazelrc").read_text()
    assert f'kKey[] = "{KEY.decode()}";' in (tf / CRYPTFILE).read_text()
    assert "{" + ", ".join(f"0x{b:02x}" for b in KEY) + "}" in (tf / TF_CORE).read_text()
    def array(b: bytes) -> bytes:
        return keys.encode(b, "c-bytes").encode()

    for p in SITE_FILES:  # only the placeholder values changed, nothing else; private while they hold the key
        after = (tf / p).read_bytes().replace(KEY, PLACEHOLDER_KEY).replace(array(KEY), array(PLACEHOLDER_KEY))
        assert after == before[p]
        assert stat.S_IMODE((tf / p).stat().st_mode) == 0o600

    r = cli("set-key", "--check")
    assert r.code == 0 and "all 5 key sites hold key" in r.out
    r = cli("set-key", "--check", "--json")
    assert r.code == 0 and '"ok": true' in r.out
    assert cli("set-key").code == 0  # idempotent


def test_check_fails_naming_a_hand_edited_site(ws: Path) -> None:
    assert cli("set-key").code == 0
    cc = ws / "tensorflow" / CRYPTFILE
    cc.write_text(cc.read_text().replace(KEY.decode(), "Tk9fQ2xxZmEzNXR2"))
    r = cli("set-key", "--check")
    assert r.code == 1
    assert f"{CRYPTFILE}:11 cryptfile.cc key holds {keyfile.fingerprint(b'Tk9fQ2xxZmEzNXR2')}" in r.err
    assert f"expected {keyfile.fingerprint(KEY)}" in r.err
    assert "1 key site(s) disagree" in r.err and "env.cc" not in r.err


def test_check_on_placeholders_fails_for_every_key_site(ws: Path) -> None:
    r = cli("set-key", "--check")
    assert r.code == 1 and "3 key site(s) disagree" in r.err  # the IV sites hold the default IV


def test_clear_restores_head_values_and_keeps_other_edits(ws: Path) -> None:
    tf = ws / "tensorflow"
    assert cli("set-key").code == 0
    env_cc = tf / TF_CORE
    env_cc.write_text(env_cc.read_text() + "// a local edit that must survive\n")
    r = cli("set-key", "--clear")
    assert r.code == 0, r.err
    assert git(tf, "status", "--porcelain").split() == ["M", TF_CORE]
    added = [line for line in git(tf, "diff").splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert added == ["+// a local edit that must survive"]
    assert KEY not in env_cc.read_bytes() and keys.encode(KEY, "c-bytes").encode() not in env_cc.read_bytes()


def test_clear_refuses_when_head_has_a_different_number_of_sites(ws: Path) -> None:
    tf = ws / "tensorflow"
    rc = tf / ".bazelrc"
    rc.write_text(rc.read_text() + "build --define=MODEL_ENCRYPT_KEY=second\n")
    r = cli("set-key", "--clear")
    assert r.code == 2 and "matches 2 time(s) in the working tree but 1 in HEAD" in r.err
    assert rc.read_text().endswith("=second\n")  # nothing written


# -- write_sites / site_paths (the interface `upgrade` calls) -----------------------------------
def test_write_sites_with_a_binary_key_uses_escapes(sandbox: Sandbox) -> None:
    secret = bytes(range(0x80, 0x90))
    material = keyfile.KeyMaterial("aes-128-cbc", secret, b"7" * 16, key_is_hex=True)
    tf = sandbox.clone("tensorflow")
    pb = tf_playbook()
    before = {p: (tf / p).read_bytes() for p in SITE_FILES}
    with pytest.raises(ConfigError) as err:  # the Bazel site cannot hold it: nothing is written
        keys.write_sites(tf, pb, material)
    assert ".bazelrc" in str(err.value) and "Bazel define" in str(err.value)
    assert_clean(str(err.value), *err.value.problems, secret=secret)
    assert {p: (tf / p).read_bytes() for p in SITE_FILES} == before

    no_bazel = dataclasses.replace(pb, key_sites=tuple(s for s in pb.key_sites if s.encoding != "bazel-define"))
    results = keys.write_sites(tf, no_bazel, material)
    assert len(results) == 4 and {r.fingerprint for r in results if r.value == "key"} == {keyfile.fingerprint(secret)}
    assert_clean(repr(results), repr(material), secret=secret)
    assert 'kKey[] = "' + "".join(f"\\x{b:02x}" for b in secret) + '";' in (tf / CRYPTFILE).read_text()


def test_site_paths_only_lists_files_that_match(sandbox: Sandbox) -> None:
    tf = sandbox.clone("tensorflow")
    pb = tf_playbook()
    assert keys.site_paths(tf, pb) == sorted(SITE_FILES)
    (tf / ".bazelrc").write_text("build -c opt\n")
    assert keys.site_paths(tf, pb) == sorted([TF_CORE, CRYPTFILE])
    assert keys.site_paths(sandbox.clone("serving"), playbook.load("serving")) == []


# -- keys files ------------------------------------------------------------------------------------
def test_generate_printable_key(ws: Path) -> None:
    (ws / "keys.toml").unlink()
    (ws / ".gitignore").write_text("*.log")
    r = cli("set-key", "--generate")
    assert r.code == 0, r.err
    path = ws / "keys.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    material = keyfile.load(path)
    assert re.fullmatch(rb"[A-Za-z0-9]{16}", material.key) and material.iv == b"7" * 16
    assert_clean(r.out, r.err, secret=material.key)
    assert (ws / ".gitignore").read_text().splitlines()[-1] == "keys.toml"
    assert cli("set-key", "--check").code == 0  # generating in a workspace also writes the sites

    r = cli("set-key", "--generate")
    assert r.code == 2 and "refusing to overwrite" in r.err and "--force" in r.err
    assert keyfile.load(path).key == material.key
    r = cli("set-key", "--generate", "--force", "--random-iv")
    assert r.code == 0
    new = keyfile.load(path)
    assert new.key != material.key and new.iv != b"7" * 16
    assert_clean(r.out, r.err, secret=new.key)
    assert_clean(r.out, r.err, secret=new.iv)


def test_generate_hex_key_outside_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("set-key", "--generate", "--hex", "--cipher", "aes-256-cbc", "--keys", "k.toml")
    assert r.code == 0, r.err
    material = keyfile.load(tmp_path / "k.toml")
    assert material.key_is_hex and len(material.key) == 32 and material.cipher == "aes-256-cbc"
    assert "key_hex" in (tmp_path / "k.toml").read_text()
    assert stat.S_IMODE((tmp_path / "k.toml").stat().st_mode) == 0o600
    assert_clean(r.out, r.err, secret=material.key)
    assert not [p for p in os.listdir(tmp_path) if p != "k.toml"]  # no temp file left behind


def test_generate_hex_in_the_tf_workspace_is_refused_before_anything_is_written(ws: Path) -> None:
    (ws / "keys.toml").unlink()
    r = cli("set-key", "--generate", "--hex")
    assert r.code == 2 and ".bazelrc" in r.err and "Bazel define" in r.err
    assert not (ws / "keys.toml").exists()
    assert git(ws / "tensorflow", "status", "--porcelain") == ""


def test_generate_flags_need_generate(ws: Path) -> None:
    assert cli("set-key", "--hex").code == 2
    assert cli("set-key", "--check", "--clear").code == 2


@pytest.mark.parametrize(("body", "message"), [
    ('[model]\nkey = "short"\n', "is 5 bytes; aes-128-cbc needs exactly 16"),
    ('[model]\nkey_hex = "zz"\n', "is not valid hex"),
    ('[model]\nkey = "Tk9fQ2xxZmEzNXR1"\niv = "123"\n', "the IV must be exactly 16"),
])
def test_bad_keys_files_exit_2(ws: Path, body: str, message: str) -> None:
    (ws / "keys.toml").write_text(body)
    for args in (("set-key",), ("set-key", "--check"), ("guard", "scan")):
        r = cli(*args)
        assert r.code == 2 and message in r.err
    assert git(ws / "tensorflow", "status", "--porcelain") == ""


def test_loose_keys_file_is_refused_with_a_chmod_hint(ws: Path) -> None:
    (ws / "keys.toml").chmod(0o644)
    r = cli("set-key")
    assert r.code == 2 and "too open" in r.err and "chmod 600" in r.err


def test_keyfile_write_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a directory"):
        keyfile.write(tmp_path, keyfile.generate())


# -- temp files, modes, paths, patterns (issue 12) --------------------------------------------------
def test_clear_gives_the_committed_mode_back(ws: Path) -> None:
    tf = ws / "tensorflow"
    modes = {p: stat.S_IMODE((tf / p).stat().st_mode) for p in SITE_FILES}
    assert cli("set-key").code == 0
    assert {stat.S_IMODE((tf / p).stat().st_mode) for p in SITE_FILES} == {0o600}
    assert cli("set-key", "--clear").code == 0
    assert {p: stat.S_IMODE((tf / p).stat().st_mode) for p in SITE_FILES} == modes
    assert git(tf, "status", "--porcelain") == ""


def test_stale_temp_files_of_a_killed_run_are_removed(ws: Path) -> None:
    tf = ws / "tensorflow"
    # What a SIGKILLed set-key leaves: this version's temp names and the older fsutil ones.
    stale = [tf / "..bazelrc.forkops-key.abcd1234.tmp", tf / "tensorflow/core/platform/.env.cc.x1y2z3.tmp"]
    for f in stale:
        f.write_bytes(KEY)
    unrelated = tf / "tensorflow/core/platform/.other.cc.x1y2z3.tmp"
    unrelated.write_text("not ours")
    assert keys.remove_stale_temp_files(tf, tf_playbook()) == sorted(
        f.relative_to(tf).as_posix() for f in stale)
    for f in stale:
        f.write_bytes(KEY)
    assert cli("set-key", "--clear").code == 0
    assert not any(f.exists() for f in stale) and unrelated.exists()
    for f in stale:
        f.write_bytes(KEY)
    assert cli("set-key").code == 0
    assert not any(f.exists() for f in stale)
    assert not [p for p in tf.rglob("*.tmp") if p != unrelated]


def test_a_sigterm_during_set_key_leaves_no_temp_file(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    tf = ws / "tensorflow"
    plan = keys.plan_sites(tf, tf_playbook(), keyfile.load(ws / "keys.toml"))
    calls = []

    def write_then_term(path: Path, data: bytes, **how: Any) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second file: a real signal arrives mid-write
            os.kill(os.getpid(), signal.SIGTERM)
        fsutil.write_atomic(path, data, **how)

    monkeypatch.setattr(keys, "write_atomic", write_then_term)
    with pytest.raises(SystemExit):
        plan.apply()
    assert not list(tf.rglob("*.tmp"))


def _playbook_with(tmp_path: Path, **site: str) -> Path:
    text = (playbook.builtin_path("tensorflow")).read_text()
    extra = "\n[[key_sites]]\nname = \"extra\"\nvalue = \"key\"\nencoding = \"c-string\"\n"
    pattern = site.get("pattern", 'kExtra = (?P<value>"[^"]*")')
    extra += f"paths = [{site['paths']}]\npattern = '{pattern}'\n"
    path = tmp_path / "pb.toml"
    path.write_text(text + extra)
    return path


@pytest.mark.parametrize("paths", ['"../../outside.cc"', '"/etc/outside.cc"', '"a/./b.cc"', '"a//b.cc"'])
def test_key_site_paths_outside_the_repository_are_refused(tmp_path: Path, paths: str) -> None:
    with pytest.raises(ConfigError) as err:
        playbook.load_file(_playbook_with(tmp_path, paths=paths))
    assert "paths[0]" in str(err.value.problems)
    r = cli("playbook", "validate", str(_playbook_with(tmp_path, paths=paths)))
    assert r.code == 2


def test_build_dirs_and_anchor_locations_must_stay_inside(tmp_path: Path) -> None:
    text = playbook.builtin_path("serving").read_text()
    bad = tmp_path / "serving.toml"
    bad.write_text(text.replace('tensorflow_dir = "tensorflow"', 'tensorflow_dir = "../../x"', 1))
    with pytest.raises(ConfigError) as err:
        playbook.load_file(bad)
    assert any("tensorflow_dir" in p for p in err.value.problems)
    tf_text = playbook.builtin_path("tensorflow").read_text()
    assert 'path = "tensorflow/core/platform/env.cc"' in tf_text
    bad.write_text(tf_text.replace('path = "tensorflow/core/platform/env.cc"', 'path = "/abs/env.cc"', 1))
    with pytest.raises(ConfigError):
        playbook.load_file(bad)


def test_a_symlinked_key_site_is_refused(ws: Path, tmp_path: Path) -> None:
    tf = ws / "tensorflow"
    outside = tmp_path / "outside.cc"
    outside.write_text((tf / CRYPTFILE).read_text())
    (tf / CRYPTFILE).unlink()
    (tf / CRYPTFILE).symlink_to(outside)
    before = outside.read_text()
    r = cli("set-key")
    assert r.code == 2 and "symlink" in r.err
    assert outside.read_text() == before


def test_a_catastrophic_key_site_pattern_is_exit_2_naming_the_site(ws: Path) -> None:
    tf = ws / "tensorflow"
    (tf / "slow.cc").write_text("a" * 40 + "!")
    pb = _playbook_with(ws, paths='"slow.cc"', pattern="(?P<value>(a+)+)$")
    cfg = (ws / "forkops.toml").read_text()
    (ws / "forkops.toml").write_text(cfg.replace('playbook = "tensorflow"', f'playbook = "{pb}"'))
    import time

    started = time.monotonic()
    r = cli("set-key")
    assert r.code == 2 and "key site 'extra'" in r.err and "slow.cc" in r.err
    assert time.monotonic() - started < 30
