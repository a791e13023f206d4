"""Model encryption: byte-compatibility with openssl and Crypto++, refusals, atomicity, secrecy.

openssl gets the key on its command line (`openssl enc -K` has no other way to take a raw key):
acceptable only because these are throwaway keys generated for the test. forkops itself reads
keys from 0600 files, and the Crypto++ helper reads them from stdin.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from forkops import crypto, keyfile
from forkops.errors import BadInput
from tests.clihelp import Result, run_cli

KEY_BYTES = {"aes-128-cbc": 16, "aes-192-cbc": 24, "aes-256-cbc": 32}
SIZES = [0, 1, 15, 16, 17, 4096, crypto.CHUNK, (1 << 20) + 3, 3 * crypto.CHUNK + 5]
CPP_SOURCE = Path(__file__).parent / "cryptopp" / "cbc_tool.cpp"


def make_keys(folder: Path, cipher: str = "aes-128-cbc", *, seed: int = 1, mode: int = 0o600,
              iv: bytes = b"7" * 16) -> tuple[Path, bytes, bytes]:
    """A keys.toml with a deterministic test key; returns (path, key, iv)."""
    key = random.Random(seed).randbytes(KEY_BYTES[cipher])
    path = folder / f"keys-{cipher}-{seed}.toml"
    path.write_text(f'[model]\ncipher = "{cipher}"\nkey_hex = "{key.hex()}"\niv_hex = "{iv.hex()}"\n')
    path.chmod(mode)
    return path, key, iv


def text_keys(folder: Path, key: str) -> Path:
    path = folder / "text-keys.toml"
    path.write_text(f'[model]\nkey = "{key}"\n')
    path.chmod(0o600)
    return path


def secret_forms(key: bytes) -> list[str]:
    forms = [key.hex(), key.hex().upper()]
    with __import__("contextlib").suppress(UnicodeDecodeError):
        forms.append(key.decode())
    return forms


def cli(*args: str, secrets: list[bytes]) -> Result:
    """Run the CLI and assert no key (text or hex) appears in anything it printed."""
    result = run_cli(*args)
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in result.out and form not in result.err, "the key was printed"
    return result


def openssl(cipher: str, key: bytes, iv: bytes, src: Path, dst: Path, *, decrypt: bool = False) -> None:
    # Test keys only: openssl enc takes a raw key on its command line and nowhere else.
    argv = ["openssl", "enc", f"-{cipher}", "-K", key.hex(), "-iv", iv.hex(), "-in", str(src),
            "-out", str(dst)]
    subprocess.run([*argv, "-d"] if decrypt else argv, check=True, capture_output=True)


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------------
# Byte compatibility


@pytest.mark.parametrize("cipher", sorted(KEY_BYTES))
@pytest.mark.parametrize("size", SIZES)
def test_matches_openssl_byte_for_byte(tmp_path: Path, cipher: str, size: int) -> None:
    keys, key, iv = make_keys(tmp_path, cipher)
    plain = random_file(tmp_path / "plain.bin", size, seed=size)
    ours, theirs = tmp_path / "ours.enc", tmp_path / "openssl.enc"
    material = keyfile.load(keys)
    crypto.encrypt_path(plain, ours, material, raw=True)
    openssl(cipher, key, iv, plain, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_size == (size // 16 + 1) * 16
    back = tmp_path / "back.bin"
    crypto.decrypt_path(theirs, back, material, raw=True)
    assert back.read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("cipher", sorted(KEY_BYTES))
def test_half_plus_two_matches_openssl(tmp_path: Path, gpu: bool, cipher: str) -> None:
    keys, key, iv = make_keys(tmp_path, cipher)
    model = crypto.bundled_model(gpu=gpu)
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    result = cli("encrypt", str(model), "-o", str(enc), "--keys", str(keys), secrets=[key, iv])
    assert result.code == 0, result.err
    assert f"key {keyfile.fingerprint(key)}" in result.out
    pb = Path("00000123/saved_model.pb")
    openssl(cipher, key, iv, model / pb, tmp_path / "openssl.enc")
    assert (enc / pb).read_bytes() == (tmp_path / "openssl.enc").read_bytes()
    # Everything else is copied unchanged.
    assert listing(enc) == listing(model)
    for rel in listing(model):
        if (model / rel).is_file() and Path(rel) != pb:
            assert (enc / rel).read_bytes() == (model / rel).read_bytes(), rel
    result = cli("decrypt", str(enc), "-o", str(dec), "--keys", str(keys), secrets=[key, iv])
    assert result.code == 0, result.err
    assert not filecmp.dircmp(model, dec).diff_files
    assert (dec / pb).read_bytes() == (model / pb).read_bytes()


def test_bundled_models_are_the_documented_plaintext() -> None:
    digests = {
        False: "e233fdf986e74feba2329fd68f5fc18ebbde977a35e32080eb81a9a19ce0e02f",
        True: "5fbedf23120cbc439fa4bc786c51d8864be1b96a0e6cd27962bcbb6c3ada9560",
    }
    for gpu, digest in digests.items():
        pb = crypto.bundled_model(gpu=gpu) / "00000123" / "saved_model.pb"
        assert hashlib.sha256(pb.read_bytes()).hexdigest() == digest
        assert crypto.classify(pb) is crypto.Kind.PLAINTEXT


# ------------------------------------------------------------------------------------------------
# Crypto++ (what the fork links)


def require_toolchain(problem: str | None) -> None:
    """Skip a cross-check whose compiler or headers are missing, except in CI where it must run."""
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cross-check cannot run in CI: {problem}")
        pytest.skip(problem)


def cryptopp_problem() -> str | None:
    """Why a Crypto++ program cannot be compiled here, or None."""
    headers = [Path("/usr/include/cryptopp/aes.h"), Path("/usr/include/crypto++/aes.h")]
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if not any(h.exists() for h in headers):
        return "libcrypto++ headers are missing (apt-get install libcrypto++-dev)"
    return None


@pytest.fixture(scope="session")
def cbc_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Crypto++ helper, compiled once per session (shared by xdist workers)."""
    digest = hashlib.sha256(CPP_SOURCE.read_bytes()).hexdigest()[:12]
    binary = tmp_path_factory.getbasetemp().parent / f"cbc_tool-{digest}"
    if binary.exists():
        return binary
    require_toolchain(cryptopp_problem())
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    subprocess.run(["g++", "-O0", "-o", str(tmp), str(CPP_SOURCE), "-lcryptopp"], check=True,
                   capture_output=True)
    os.replace(tmp, binary)  # atomic: a concurrent worker sees the whole binary or none
    return binary


def run_cbc_tool(
    tool: Path, mode: str, key: bytes, iv: bytes, src: Path, dst: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), mode, str(src), str(dst)], input=f"{key.hex()}\n{iv.hex()}\n",
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("cipher", ["aes-128-cbc", "aes-256-cbc"])
@pytest.mark.parametrize("size", [0, 17, 4096, (1 << 20) + 3])
def test_cryptopp_round_trips(tmp_path: Path, cbc_tool: Path, cipher: str, size: int) -> None:
    keys, key, iv = make_keys(tmp_path, cipher, iv=bytes(range(16)))
    material = keyfile.load(keys)
    plain = random_file(tmp_path / "plain.bin", size, seed=size + 7)
    # forkops encrypts, Crypto++ decrypts ...
    crypto.encrypt_path(plain, tmp_path / "ours.enc", material, raw=True)
    done = run_cbc_tool(cbc_tool, "decrypt", key, iv, tmp_path / "ours.enc", tmp_path / "cpp.dec")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cpp.dec").read_bytes() == plain.read_bytes()
    # ... and Crypto++ encrypts, forkops decrypts (and the ciphertexts agree).
    done = run_cbc_tool(cbc_tool, "encrypt", key, iv, plain, tmp_path / "cpp.enc")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cpp.enc").read_bytes() == (tmp_path / "ours.enc").read_bytes()
    crypto.decrypt_path(tmp_path / "cpp.enc", tmp_path / "ours.dec", material, raw=True)
    assert (tmp_path / "ours.dec").read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("gpu", [False, True])
def test_cryptopp_decrypts_encrypted_half_plus_two(tmp_path: Path, cbc_tool: Path, gpu: bool) -> None:
    keys = text_keys(tmp_path, "My123sjsrjsd2345")  # the fork's documented example key shape
    key, iv = b"My123sjsrjsd2345", b"7" * 16
    model = crypto.bundled_model(gpu=gpu)
    assert cli("encrypt", str(model), "-o", str(tmp_path / "enc"), "--keys", str(keys),
               secrets=[key]).code == 0
    pb = Path("00000123/saved_model.pb")
    done = run_cbc_tool(cbc_tool, "decrypt", key, iv, tmp_path / "enc" / pb, tmp_path / "cpp.pb")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cpp.pb").read_bytes() == (model / pb).read_bytes()
    # Crypto++ rejects it with another key: the padding check the fork relies on.
    done = run_cbc_tool(cbc_tool, "decrypt", b"x" * 16, iv, tmp_path / "enc" / pb, tmp_path / "bad")
    assert done.returncode == 1


# ------------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing written


def assert_refused(result: Result, *needles: str) -> None:
    assert result.code == 2, (result.out, result.err)
    first = result.err.splitlines()[0]
    assert first.startswith("forkops: error: ")
    for needle in needles:
        assert needle in result.err, result.err


def plain_model_file(tmp_path: Path) -> Path:
    pb = tmp_path / "saved_model.pb"
    shutil.copyfile(crypto.bundled_model() / "00000123" / "saved_model.pb", pb)
    return pb


@pytest.mark.parametrize("body,needle", [
    ('key = "short"', "is 5 bytes; aes-128-cbc needs exactly 16"),
    ('cipher = "aes-256-cbc"\nkey = "My123sjsrjsd2345"', "is 16 bytes; aes-256-cbc needs exactly 32"),
    ('key_hex = "00112233445566778899aabbccddeeXX"', "is not valid hex"),
    ('key_hex = "0011223"', "is not valid hex"),
    ('key = "My123sjsrjsd2345"\niv = "short"', "the IV must be exactly 16"),
])
def test_refuses_bad_keys(tmp_path: Path, body: str, needle: str) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f"[model]\n{body}\n")
    keys.chmod(0o600)
    pb = plain_model_file(tmp_path)
    for command in ("encrypt", "decrypt"):
        result = cli(command, str(pb), "-o", str(tmp_path / "out"), "--keys", str(keys),
                     secrets=[b"My123sjsrjsd2345", b"00112233445566778899aabbccddee"])
        assert_refused(result, needle)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_loose_keys_file(tmp_path: Path, mode: int) -> None:
    keys, key, _ = make_keys(tmp_path, mode=mode)
    pb = plain_model_file(tmp_path)
    result = cli("encrypt", str(pb), "-o", str(tmp_path / "out"), "--keys", str(keys), secrets=[key])
    assert_refused(result, "too open", "chmod 600")
    assert not (tmp_path / "out").exists()


def test_refuses_double_encryption_and_decrypting_plaintext(tmp_path: Path) -> None:
    keys, key, _ = make_keys(tmp_path)
    pb = plain_model_file(tmp_path)
    enc = tmp_path / "enc.pb"
    assert cli("encrypt", str(pb), "-o", str(enc), "--keys", str(keys), secrets=[key]).code == 0
    result = cli("encrypt", str(enc), "-o", str(tmp_path / "twice"), "--keys", str(keys), secrets=[key])
    assert_refused(result, "already encrypted")
    result = cli("decrypt", str(pb), "-o", str(tmp_path / "dec"), "--keys", str(keys), secrets=[key])
    assert_refused(result, "plaintext SavedModel, not encrypted")
    # Directory form: refused before anything is written.
    model = tmp_path / "model"
    assert cli("encrypt", str(crypto.bundled_model()), "-o", str(model), "--keys", str(keys),
               secrets=[key]).code == 0
    result = cli("encrypt", str(model), "-o", str(tmp_path / "model2"), "--keys", str(keys), secrets=[key])
    assert_refused(result, "already encrypted")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["enc.pb", "model", "saved_model.pb", keys.name])


def test_refuses_non_model_and_non_ciphertext(tmp_path: Path) -> None:
    keys, key, _ = make_keys(tmp_path)
    odd = random_file(tmp_path / "odd.bin", 100)
    assert_refused(cli("encrypt", str(odd), "-o", str(tmp_path / "o"), "--keys", str(keys), secrets=[key]),
                   "not a plaintext SavedModel", "--raw")
    assert_refused(cli("decrypt", str(odd), "-o", str(tmp_path / "o"), "--keys", str(keys), secrets=[key]),
                   "not ciphertext (100 bytes")
    empty = tmp_path / "empty"
    empty.touch()
    assert_refused(cli("decrypt", str(empty), "-o", str(tmp_path / "o"), "--raw", "--keys", str(keys),
                       secrets=[key]), "not ciphertext (0 bytes")
    assert not (tmp_path / "o").exists()
    # --raw encrypts any bytes (and decrypts them back without the SavedModel check).
    assert cli("encrypt", str(odd), "-o", str(tmp_path / "o"), "--raw", "--keys", str(keys),
               secrets=[key]).code == 0
    assert cli("decrypt", str(tmp_path / "o"), "-o", str(tmp_path / "back"), "--raw", "--keys",
               str(keys), secrets=[key]).code == 0
    assert (tmp_path / "back").read_bytes() == odd.read_bytes()


def test_wrong_key_is_bad_padding_and_writes_nothing(tmp_path: Path) -> None:
    right, key, _ = make_keys(tmp_path, seed=1)
    model = tmp_path / "enc"
    assert cli("encrypt", str(crypto.bundled_model()), "-o", str(model), "--keys", str(right),
               secrets=[key]).code == 0
    # Try wrong keys until one gives bad padding (most do; ~1 in 256 pads validly by chance).
    for seed in range(2, 40):
        wrong, wrong_key, _ = make_keys(tmp_path, seed=seed)
        pb = model / "00000123" / "saved_model.pb"
        result = cli("decrypt", str(pb), "-o", str(tmp_path / "dec.pb"), "--keys", str(wrong),
                     secrets=[key, wrong_key])
        assert_refused(result, f"does not decrypt with key {keyfile.fingerprint(wrong_key)}")
        if "bad padding" in result.err:
            break
    else:
        pytest.fail("no wrong key gave bad padding")
    assert not (tmp_path / "dec.pb").exists()
    before = listing(tmp_path)
    result = cli("decrypt", str(model), "-o", str(tmp_path / "dec"), "--keys", str(wrong),
                 secrets=[key, wrong_key])
    assert_refused(result, "bad padding")
    assert listing(tmp_path) == before  # not even a temporary sibling directory


def test_valid_padding_but_not_a_saved_model_is_refused(tmp_path: Path) -> None:
    """The other face of a wrong key: the padding happens to be valid, the result is noise."""
    keys, _, _ = make_keys(tmp_path)
    material = keyfile.load(keys)
    noise = random_file(tmp_path / "noise", 1000)
    crypto.encrypt_path(noise, tmp_path / "noise.enc", material, raw=True)
    with pytest.raises(BadInput, match=f"does not decrypt with key {material.key_fingerprint}.*not a SavedModel"):
        crypto.decrypt_path(tmp_path / "noise.enc", tmp_path / "out", material)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ending", [b"\x00", b"\x11", b"\x01\x02", b"\x03\x02\x03", b"\x0f" * 15 + b"\x10"])
def test_every_byte_of_the_padding_is_checked(tmp_path: Path, ending: bytes) -> None:
    """Ciphertext whose plaintext ends in almost-valid PKCS#7 padding is refused, not trimmed."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    keys, _, iv = make_keys(tmp_path)
    material = keyfile.load(keys)
    body = random.Random(3).randbytes(48 - len(ending)) + ending
    raw = Cipher(algorithms.AES(material.key), modes.CBC(iv)).encryptor()  # no padding added
    (tmp_path / "c").write_bytes(raw.update(body) + raw.finalize())
    with pytest.raises(BadInput, match="bad padding"):
        crypto.decrypt_path(tmp_path / "c", tmp_path / "out", material, raw=True)
    assert not (tmp_path / "out").exists()


def test_refuses_existing_output_without_force(tmp_path: Path) -> None:
    keys, key, _ = make_keys(tmp_path)
    pb = plain_model_file(tmp_path)
    out = tmp_path / "out.pb"
    out.write_bytes(b"old")
    assert_refused(cli("encrypt", str(pb), "-o", str(out), "--keys", str(keys), secrets=[key]),
                   "already exists", "--force")
    assert out.read_bytes() == b"old"
    assert cli("encrypt", str(pb), "-o", str(out), "--force", "--keys", str(keys), secrets=[key]).code == 0
    assert crypto.classify(out) is crypto.Kind.CIPHERTEXT
    # A directory output is replaced whole with --force.
    outdir = tmp_path / "outdir"
    (outdir / "stale").mkdir(parents=True)
    model = crypto.bundled_model()
    assert_refused(cli("encrypt", str(model), "-o", str(outdir), "--keys", str(keys), secrets=[key]),
                   "already exists")
    assert cli("encrypt", str(model), "-o", str(outdir), "--force", "--keys", str(keys), secrets=[key]).code == 0
    assert listing(outdir) == listing(model)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_refuses_output_inside_input_and_input_inside_output(tmp_path: Path) -> None:
    keys, key, _ = make_keys(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(crypto.bundled_model(), model)
    before = listing(tmp_path)
    for out in (model / "enc", model / "00000123" / "x", model):
        assert_refused(cli("encrypt", str(model), "-o", str(out), "--keys", str(keys), "--force",
                           secrets=[key]), "inside the input")
    pb = model / "00000123" / "saved_model.pb"
    assert_refused(cli("encrypt", str(pb), "-o", str(pb), "--force", "--keys", str(keys), secrets=[key]),
                   "inside the input")
    assert_refused(cli("encrypt", str(model), "-o", str(tmp_path), "--force", "--keys", str(keys),
                       secrets=[key]), "input", "inside the output")
    assert listing(tmp_path) == before


def test_missing_input_and_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, key, _ = make_keys(tmp_path)
    assert_refused(cli("encrypt", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--keys", str(keys),
                       secrets=[key]), "no such file")
    monkeypatch.chdir(tmp_path)  # not a workspace, no --keys, no $FORKOPS_KEYS
    pb = plain_model_file(tmp_path)
    assert_refused(cli("encrypt", str(pb), "-o", "o", secrets=[key]), "no keys file")
    assert_refused(cli("encrypt", str(pb), "-o", "o", "--keys", "missing.toml", secrets=[key]),
                   "keys file not found")
    assert_refused(cli("inspect", str(tmp_path / "missing"), secrets=[key]), "no such file")


# ------------------------------------------------------------------------------------------------
# Where the keys come from


def test_keys_from_environment_and_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "forkops.toml").write_text("")  # only its presence marks the workspace root
    _, key, _ = make_keys(ws)
    (ws / "keys-aes-128-cbc-1.toml").rename(ws / "keys.toml")
    pb = plain_model_file(tmp_path)
    monkeypatch.chdir(ws / "sub")
    result = cli("encrypt", str(pb), "-o", str(tmp_path / "a.pb"), "--json", secrets=[key])
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["key_fingerprint"] == keyfile.fingerprint(key)
    env_keys, env_key, _ = make_keys(tmp_path, seed=5)
    monkeypatch.setenv("FORKOPS_KEYS", str(env_keys))  # $FORKOPS_KEYS wins over the workspace
    result = cli("encrypt", str(pb), "-o", str(tmp_path / "b.pb"), "--json", secrets=[key, env_key])
    assert json.loads(result.out)["key_fingerprint"] == keyfile.fingerprint(env_key)
    result = cli("inspect", str(tmp_path / "b.pb"), "--json", secrets=[key, env_key])
    assert json.loads(result.out)["files"][0]["decrypts"] is True


# ------------------------------------------------------------------------------------------------
# inspect


def test_inspect_reports_kind_size_and_decryption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, key, _ = make_keys(tmp_path)
    other, other_key, _ = make_keys(tmp_path, seed=9)
    base = tmp_path / "base"
    shutil.copytree(crypto.bundled_model(), base / "plain")
    assert cli("encrypt", str(crypto.bundled_model(gpu=True)), "-o", str(base / "enc"), "--keys", str(keys),
               secrets=[key]).code == 0
    (base / "odd").mkdir()
    random_file(base / "odd" / "saved_model.pb", 33)
    monkeypatch.chdir(tmp_path)

    def files(*args: str) -> dict[str, dict[str, object]]:
        result = cli("inspect", str(base), "--json", *args, secrets=[key, other_key])
        assert result.code == 0, result.err
        return {Path(f["path"]).relative_to(base).parts[0]: f for f in json.loads(result.out)["files"]}

    no_key = files()
    assert {k: (v["kind"], v["size"], v["decrypts"]) for k, v in no_key.items()} == {
        "enc": ("ciphertext", 9344, None), "odd": ("unknown", 33, None), "plain": ("plaintext", 12107, None)}
    assert files("--keys", str(keys))["enc"]["decrypts"] is True
    assert files("--keys", str(other))["enc"]["decrypts"] is False
    human = cli("inspect", str(base), "--keys", str(keys), secrets=[key])
    assert "ciphertext, 9344 bytes; decrypts with key " + keyfile.fingerprint(key) in human.out
    assert "plaintext SavedModel, 12107 bytes" in human.out
    assert "unknown" in human.out


def test_classify_edges() -> None:
    assert crypto.classify_bytes(b"\x08\x01\x12\x05abcde", 9) is crypto.Kind.PLAINTEXT
    assert crypto.classify_bytes(b"\x08\x01\x12\x06abcde", 9) is crypto.Kind.UNKNOWN  # length overruns
    assert crypto.classify_bytes(b"\x08\x01\x12\x85\x01", 16) is crypto.Kind.CIPHERTEXT  # 133 > 16
    assert crypto.classify_bytes(b"\x08\x02\x12\x00", 32) is crypto.Kind.CIPHERTEXT
    assert crypto.classify_bytes(b"", 0) is crypto.Kind.UNKNOWN
    assert crypto.classify_bytes(b"\x08\x01\x12\x80\x80", 5) is crypto.Kind.UNKNOWN  # varint cut off


# ------------------------------------------------------------------------------------------------
# Streaming, progress and interruption


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    material = keyfile.load(keys)
    peaks = []
    for size in (4 << 20, 24 << 20):
        src = random_file(tmp_path / f"in{size}", size)
        tracemalloc.start()
        with open(src, "rb") as fh, open(tmp_path / "out", "wb") as out:
            crypto.encrypt_stream(fh, out, material)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 6 * crypto.CHUNK
    assert peaks[1] < peaks[0] * 1.5


def test_progress_reports_every_chunk(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    material = keyfile.load(keys)
    src = random_file(tmp_path / "in", 3 * crypto.CHUNK + 5)
    seen: list[tuple[Path, int, int]] = []
    crypto.encrypt_path(src, tmp_path / "out", material, raw=True,
                        progress=lambda p, d, t: seen.append((p, d, t)))
    assert [d for _, d, _ in seen] == [crypto.CHUNK, 2 * crypto.CHUNK, 3 * crypto.CHUNK, 3 * crypto.CHUNK + 5]
    assert {(p, t) for p, _, t in seen} == {(src, src.stat().st_size)}


class Interrupted(Exception):
    pass


def _raise_after_first_chunk(path: Path, done: int, total: int) -> None:
    if done < total:
        raise Interrupted


@pytest.mark.parametrize("decrypt", [False, True])
def test_interrupted_file_write_leaves_old_output(tmp_path: Path, decrypt: bool) -> None:
    keys, _, _ = make_keys(tmp_path)
    material = keyfile.load(keys)
    src = random_file(tmp_path / "in", 3 * crypto.CHUNK + 5)
    if decrypt:
        crypto.encrypt_path(src, tmp_path / "in.enc", material, raw=True)
        src = tmp_path / "in.enc"
    out = tmp_path / "out"
    out.write_bytes(b"old output")
    before = listing(tmp_path)
    run = crypto.decrypt_path if decrypt else crypto.encrypt_path
    with pytest.raises(Interrupted):
        run(src, out, material, force=True, raw=True, progress=_raise_after_first_chunk)
    assert out.read_bytes() == b"old output"
    assert listing(tmp_path) == before


def test_interrupted_directory_leaves_nothing(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    material = keyfile.load(keys)
    model = tmp_path / "model"
    shutil.copytree(crypto.bundled_model(), model)
    big = model / "00000123" / "saved_model.pb"
    with open(big, "ab") as fh:  # a big model (the header's length still fits)
        fh.write(b"\0" * (3 * crypto.CHUNK))
    before = listing(tmp_path)
    with pytest.raises(Interrupted):
        crypto.encrypt_path(model, tmp_path / "enc", material, progress=_raise_after_first_chunk)
    assert listing(tmp_path) == before


KILL_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from forkops import crypto, keyfile

    def progress(path, done, total):
        if done < total:
            print("mid-write", flush=True)
            time.sleep(60)

    material = keyfile.load(Path(sys.argv[1]))
    crypto.encrypt_path(Path(sys.argv[2]), Path(sys.argv[3]), material, force=True, raw=True,
                        progress=progress)
""")


def test_sigkill_mid_write_leaves_old_file_and_no_partial(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    src = random_file(tmp_path / "big.bin", 8 * crypto.CHUNK)
    out = tmp_path / "out.enc"
    out.write_bytes(b"the previous encrypted model")
    before = listing(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(keys), str(src), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "mid-write", child.stderr.read() if child.stderr else ""
        time.sleep(0.1)  # let the writer thread flush what it has
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the previous encrypted model"
    assert listing(tmp_path) == before  # no temporary file either: it had no name


# ------------------------------------------------------------------------------------------------
# A kill between the two renames of `encrypt --force` (model directories)


def run_killed_at_rename(n: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI under strace, which SIGKILLs it at its ``n``-th rename(2) (not performed).

    A real kill at an exact point of the real code: nothing in forkops is patched.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # .pyc writes would be renames too
    syscalls = "rename,renameat,renameat2"
    return subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={syscalls}",
         "-e", f"inject={syscalls}:error=EIO:signal=KILL:when={n}",
         sys.executable, "-m", "forkops", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def swap_setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(model, out, old keys, new keys): OUT holds the model encrypted with the old key."""
    require_toolchain(None if shutil.which("strace") else "strace is not installed")
    old_keys, _, _ = make_keys(tmp_path, seed=1)
    new_keys, _, _ = make_keys(tmp_path, seed=2)
    model = tmp_path / "model"
    shutil.copytree(crypto.bundled_model(), model)
    out = tmp_path / "out"
    assert run_cli("encrypt", str(model), "-o", str(out), "--keys", str(old_keys)).code == 0
    return model, out, old_keys, new_keys


def decrypts_with(out: Path, keys: Path) -> bool:
    [report] = crypto.inspect_path(out, keyfile.load(keys))
    return bool(report.decrypts)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.forkops-"))


@pytest.mark.parametrize("then", ["inspect", "encrypt"])
def test_kill_between_the_renames_is_finished_by_the_next_command(
    swap_setup: tuple[Path, Path, Path, Path], then: str
) -> None:
    model, out, _old_keys, new_keys = swap_setup
    killed = run_killed_at_rename(2, "encrypt", str(model), "-o", str(out), "--keys", str(new_keys), "--force")
    if killed.returncode != -signal.SIGKILL and "ptrace" in killed.stderr:
        require_toolchain(f"strace cannot trace here: {killed.stderr.strip()}")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    # The state of the issue: no OUT, the new output staged, the old one moved aside.
    assert not out.exists()
    names = leftovers(out)
    assert len(names) == 2 and sum("forkops-old-" in n for n in names) == sum(n.endswith(".tmp") for n in names) == 1
    if then == "inspect":
        result = run_cli("inspect", str(out), "--keys", str(new_keys))
        assert result.code == 0, result.err
        assert "finished replacing it" in result.err
    else:
        result = run_cli("encrypt", str(model), "-o", str(out), "--keys", str(new_keys), "--force")
        assert result.code == 0, result.err
        assert "finished replacing it" in result.err
    assert decrypts_with(out, new_keys)  # the complete new output, rolled forward
    assert leftovers(out) == []


def test_kill_before_the_old_output_moves_keeps_it(swap_setup: tuple[Path, Path, Path, Path]) -> None:
    model, out, old_keys, new_keys = swap_setup
    killed = run_killed_at_rename(1, "encrypt", str(model), "-o", str(out), "--keys", str(new_keys), "--force")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    assert decrypts_with(out, old_keys)
    assert [name.endswith(".tmp") for name in leftovers(out)] == [True]
    result = run_cli("inspect", str(out), "--keys", str(old_keys))
    assert result.code == 0 and "removed the unfinished output" in result.err
    assert decrypts_with(out, old_keys) and leftovers(out) == []


def test_leftovers_of_an_older_forkops_are_rolled_back(swap_setup: tuple[Path, Path, Path, Path]) -> None:
    """forkops before this change named the two folders with unrelated random parts: without
    proof that the staged one was complete, the old output comes back."""
    model, out, old_keys, new_keys = swap_setup
    killed = run_killed_at_rename(2, "encrypt", str(model), "-o", str(out), "--keys", str(new_keys), "--force")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    [old] = [out.parent / n for n in leftovers(out) if "forkops-old-" in n]
    old.rename(out.parent / f".{out.name}.forkops-old-1a2b3c4d")
    assert crypto.recover_output(out) != ()
    assert decrypts_with(out, old_keys) and leftovers(out) == []


def test_recovery_leaves_a_living_run_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with crypto.staging_dir(out) as tmp:
        (tmp / "half.pb").write_bytes(b"in progress")
        assert crypto.recover_output(out) == ()
        assert tmp.is_dir()
    assert not tmp.exists()
    stale = tmp_path / ".out.forkops-deadbeef.tmp"  # nobody holds its lock
    stale.mkdir()
    assert crypto.recover_output(out) == (f"{out}: removed the unfinished output of an interrupted run",)
    assert not stale.exists()


# ------------------------------------------------------------------------------------------------
# FIFOs and other non-regular inputs never hang


def test_fifo_input_is_refused_without_raw(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    fifo = tmp_path / "model.pb"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for args in (["encrypt", str(fifo), "-o", str(tmp_path / "out")],
                 ["decrypt", str(fifo), "-o", str(tmp_path / "out"), "--raw"],
                 ["inspect", str(fifo)]):
        # A subprocess with a timeout: a hang fails the test instead of freezing the suite.
        result = subprocess.run([sys.executable, "-m", "forkops", *args, "--keys", str(keys)], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert "is a FIFO, not a regular file" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_raw_encrypt_reads_a_fifo_as_a_stream(tmp_path: Path) -> None:
    keys, key, iv = make_keys(tmp_path)
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    data = random.Random(3).randbytes(2 * crypto.CHUNK + 7)

    def feed() -> None:
        with open(fifo, "wb") as fh:  # blocks until forkops opens the FIFO for reading
            for i in range(0, len(data), 65536):
                fh.write(data[i : i + 65536])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    time.sleep(0.2)  # the writer is waiting in open(): forkops must connect once, and read
    result = cli("encrypt", str(fifo), "-o", str(tmp_path / "out"), "--keys", str(keys), "--raw", secrets=[key])
    writer.join(timeout=30)
    assert result.code == 0, result.err
    (tmp_path / "plain").write_bytes(data)
    openssl("aes-128-cbc", key, iv, tmp_path / "plain", tmp_path / "expected")
    assert (tmp_path / "out").read_bytes() == (tmp_path / "expected").read_bytes()


def test_fifo_inside_a_model_directory_is_refused(tmp_path: Path) -> None:
    keys, _, _ = make_keys(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(crypto.bundled_model(), model)
    os.mkfifo(model / "00000123" / "pipe")
    before = listing(tmp_path)
    result = run_cli("encrypt", str(model), "-o", str(tmp_path / "out"), "--keys", str(keys))
    assert result.code == 2 and "is a FIFO, not a regular file" in result.err
    assert listing(tmp_path) == before
