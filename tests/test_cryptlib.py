"""The decryption library forkops builds (libcryptfile.so, the fork's dlopen ABI).

Everything here is real: the library is compiled with gcc and OpenSSL, loaded with ctypes and called
the way the TensorFlow fork's ``ReadBinaryProto`` calls it; the Crypto++ program of the same ABI
(``tests/cryptopp/cryptfile_cryptopp.cpp``, the fork's crypt-tool shape) is compiled by the test.
Keys are throwaway test keys.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkops import cryptlib, crypto, keyfile
from forkops.errors import ConfigError, ExternalError
from tests.test_crypto import (
    KEY_BYTES,
    cli,
    cryptopp_problem,
    listing,
    make_keys,
    random_file,
    require_toolchain,
    secret_forms,
)

CIPHERS = sorted(KEY_BYTES)
MIB = 1 << 20
SIZES = [0, 1, 15, 16, 17, 4096, MIB + 3, 3 * MIB + 5]
CPP_ABI_SOURCE = Path(__file__).parent / "cryptopp" / "cryptfile_cryptopp.cpp"
LIBC = ctypes.CDLL(None)
LIBC.free.argtypes = [ctypes.c_void_p]


def gcc_problem() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    if not Path("/usr/include/openssl/evp.h").exists():
        return "OpenSSL headers are missing (apt-get install libssl-dev)"
    return None


class Abi:
    """``CBCMode_Decrypt``/``CBCMode_Encrypt`` of one shared library, called as the fork calls them."""

    def __init__(self, path: Path) -> None:
        self.dll = ctypes.CDLL(str(path))  # RTLD_LOCAL: each library keeps its own symbols
        for name in ("CBCMode_Decrypt", "CBCMode_Encrypt"):
            fn = getattr(self.dll, name)
            fn.restype = ctypes.c_ulong
            fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_ulong]

    @staticmethod
    def _call(fn: Callable[..., int], data: bytes | None, size: int | None) -> tuple[int, bytes | None]:
        out = ctypes.c_void_p(12345)  # not NULL: a failure must reset it
        n = fn(data, ctypes.byref(out), len(data or b"") if size is None else size)
        if not out.value:
            return n, None
        try:
            return n, ctypes.string_at(out.value, n)
        finally:
            LIBC.free(out.value)  # the fork never frees it; a test run of 3 MiB files should

    def decrypt(self, data: bytes | None, size: int | None = None) -> tuple[int, bytes | None]:
        return self._call(self.dll.CBCMode_Decrypt, data, size)

    def encrypt(self, data: bytes | None, size: int | None = None) -> tuple[int, bytes | None]:
        return self._call(self.dll.CBCMode_Encrypt, data, size)


@dataclass(frozen=True)
class Built:
    keys: Path
    key: bytes
    iv: bytes
    lib: Abi


@pytest.fixture(scope="session")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Built]:
    """``forkops cryptlib build`` (the real CLI) for each cipher, with two keys each (seeds 1, 2)."""
    require_toolchain(gcc_problem())
    folder = tmp_path_factory.mktemp("cryptlib")
    built = {}
    for cipher in CIPHERS:
        for seed in (1, 2):
            keys, key, iv = make_keys(folder, cipher, seed=seed)
            out = folder / f"libcryptfile-{cipher}-{seed}.so"
            result = cli("cryptlib", "build", "--keys", str(keys), "-o", str(out), secrets=[key])
            assert result.code == 0, result.err
            built[cipher, seed] = Built(keys, key, iv, Abi(out))
    return built


@pytest.fixture(scope="session")
def cryptopp(tmp_path_factory: pytest.TempPathFactory, ours: dict[tuple[str, int], Built]) -> dict[str, Abi]:
    """The Crypto++ library of the same ABI, compiled with the same key header, per cipher (seed 1)."""
    require_toolchain(cryptopp_problem())
    folder = tmp_path_factory.mktemp("cryptopp")
    libs = {}
    for cipher in CIPHERS:
        header = folder / f"{cipher}.h"
        header.write_bytes(cryptlib.key_header(keyfile.load(ours[cipher, 1].keys)))
        out = folder / f"libcryptfile-cryptopp-{cipher}.so"
        subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(out), "-include", str(header),
                        str(CPP_ABI_SOURCE), "-lcrypto++"], check=True, capture_output=True)
        libs[cipher] = Abi(out)
    return libs


def encrypt_cli(built: Built, src: Path, out: Path, *extra: str) -> bytes:
    result = cli("encrypt", str(src), "-o", str(out), "--keys", str(built.keys), *extra, secrets=[built.key])
    assert result.code == 0, result.err
    return out.read_bytes() if out.is_file() else b""


# ------------------------------------------------------------------------------------------------
# Decrypting what forkops encrypt wrote


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", SIZES)
def test_decrypts_what_forkops_encrypt_wrote(tmp_path: Path, ours: dict[tuple[str, int], Built],
                                             cipher: str, size: int) -> None:
    built = ours[cipher, 1]
    plain = random_file(tmp_path / "plain", size, seed=size).read_bytes()
    enc = encrypt_cli(built, tmp_path / "plain", tmp_path / "enc", "--raw")
    assert len(enc) == size + 16 - size % 16
    n, got = built.lib.decrypt(enc)
    if size == 0:
        # The ABI cannot tell an empty plaintext from a failure: both are length 0.
        assert n == 0
    else:
        assert (n, got) == (size, plain)
    assert built.lib.encrypt(plain) == (len(enc), enc)  # and the other direction, byte for byte


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("gpu", [False, True])
def test_decrypts_both_bundled_models(tmp_path: Path, ours: dict[tuple[str, int], Built],
                                      cipher: str, gpu: bool) -> None:
    built = ours[cipher, 1]
    model = crypto.bundled_model(gpu=gpu)
    encrypt_cli(built, model, tmp_path / "enc")
    enc = (tmp_path / "enc" / "00000123" / "saved_model.pb").read_bytes()
    plain = (model / "00000123" / "saved_model.pb").read_bytes()
    assert enc != plain
    assert built.lib.decrypt(enc) == (len(plain), plain)


# ------------------------------------------------------------------------------------------------
# Failures are length 0 (and NULL)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_is_length_zero(tmp_path: Path, ours: dict[tuple[str, int], Built], cipher: str) -> None:
    model = crypto.bundled_model()
    for other in CIPHERS:
        enc = encrypt_cli(ours[other, 2], model, tmp_path / f"enc-{other}")
        ciphertext = (tmp_path / f"enc-{other}" / "00000123" / "saved_model.pb").read_bytes()
        assert ours[other, 2].lib.decrypt(ciphertext)[0] > 0  # the right library does decrypt it
        assert ours[cipher, 1].lib.decrypt(ciphertext) == (0, None), f"{other} file, {cipher} library"
        assert enc == b""


@pytest.mark.parametrize("cipher", CIPHERS)
def test_garbage_and_truncated_input_are_length_zero(tmp_path: Path, ours: dict[tuple[str, int], Built],
                                                      cipher: str) -> None:
    built = ours[cipher, 1]
    plain = random_file(tmp_path / "plain", 3 * MIB + 5).read_bytes()
    enc = encrypt_cli(built, tmp_path / "plain", tmp_path / "enc", "--raw")
    assert built.lib.decrypt(enc)[0] == len(plain)
    for cut in (enc[:-16], enc[:-1], enc[:15], enc[:16], enc[1:], enc[: len(enc) // 2]):
        assert built.lib.decrypt(cut) == (0, None), len(cut)
    for seed in range(8):
        garbage = random.Random(seed).randbytes(4096)
        # ~1 in 256 random blocks ends in a valid one-byte padding; these seeds do not.
        assert built.lib.decrypt(garbage) == (0, None), seed
    flipped = bytearray(enc)
    flipped[-1] ^= 0x01  # the last block decrypts to noise: its padding cannot hold
    assert built.lib.decrypt(bytes(flipped)) == (0, None)
    assert built.lib.decrypt(b"") == (0, None)
    assert built.lib.decrypt(None, 32) == (0, None)
    assert built.lib.encrypt(None, 32) == (0, None)
    assert built.lib.dll.CBCMode_Decrypt(enc, None, len(enc)) == 0  # nowhere to put the result


def test_exports_only_the_abi(ours: dict[tuple[str, int], Built]) -> None:
    dll = ours["aes-128-cbc", 1].lib.dll
    assert dll.CBCMode_Decrypt and dll.CBCMode_Encrypt
    with pytest.raises(AttributeError):
        dll.cryptfile_run  # noqa: B018 - internal helpers stay hidden (-fvisibility=hidden)


# ------------------------------------------------------------------------------------------------
# Crypto++ of the same ABI, both ways


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 3 * MIB + 5])
def test_agrees_with_cryptopp_both_ways(ours: dict[tuple[str, int], Built], cryptopp: dict[str, Abi],
                                        cipher: str, size: int) -> None:
    lib, cpp = ours[cipher, 1].lib, cryptopp[cipher]
    plain = random.Random(size).randbytes(size)
    n, ours_enc = lib.encrypt(plain)
    m, cpp_enc = cpp.encrypt(plain)
    assert ours_enc is not None and n == m == len(ours_enc)
    assert ours_enc == cpp_enc
    if size:
        assert cpp.decrypt(ours_enc) == (size, plain)  # ours encrypts -> Crypto++ decrypts
        assert lib.decrypt(cpp_enc) == (size, plain)  # Crypto++ encrypts -> ours decrypts
    else:
        assert cpp.decrypt(ours_enc)[0] == lib.decrypt(cpp_enc)[0] == 0
    other = ours[cipher, 2].lib.encrypt(plain)[1]
    assert other is not None
    assert cpp.decrypt(other)[0] == 0 and lib.decrypt(other)[0] == 0  # both refuse a wrong key


def test_cryptopp_decrypts_forkops_encrypt_of_the_model(tmp_path: Path, ours: dict[tuple[str, int], Built],
                                                        cryptopp: dict[str, Abi]) -> None:
    built = ours["aes-256-cbc", 1]
    model = crypto.bundled_model()
    encrypt_cli(built, model, tmp_path / "enc")
    enc = (tmp_path / "enc" / "00000123" / "saved_model.pb").read_bytes()
    plain = (model / "00000123" / "saved_model.pb").read_bytes()
    assert cryptopp["aes-256-cbc"].decrypt(enc) == (len(plain), plain)


# ------------------------------------------------------------------------------------------------
# The source, the header, the build


def test_source_does_not_compile_without_the_key_header(tmp_path: Path) -> None:
    require_toolchain(gcc_problem())
    result = subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "lib.so"), str(cryptlib.SOURCE),
                             "-lcrypto"], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "#error" in errors[0] and "-include HEADER" in errors[0], result.stderr
    assert cryptlib.SOURCE.is_file() and cryptlib.SOURCE.suffix == ".c"


def test_header_with_the_wrong_length_does_not_compile(tmp_path: Path) -> None:
    require_toolchain(gcc_problem())
    header = tmp_path / "bad.h"
    header.write_text("#define CRYPTFILE_KEY_LEN 16\n#define CRYPTFILE_KEY {1, 2, 3}\n"
                      "#define CRYPTFILE_IV {0}\n")
    cmd = cryptlib.compile_command(cryptlib.SOURCE, header, tmp_path / "lib.so")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "CRYPTFILE_KEY does not hold" in result.stderr


def test_key_header_and_compile_command(tmp_path: Path) -> None:
    keys, key, iv = make_keys(tmp_path, "aes-192-cbc")
    material = keyfile.load(keys)
    header = cryptlib.key_header(material).decode()
    assert "#define CRYPTFILE_KEY_LEN 24\n" in header
    assert "{" + ", ".join(f"0x{b:02x}" for b in key) + "}" in header
    assert "{" + ", ".join(f"0x{b:02x}" for b in iv) + "}" in header
    cmd = cryptlib.compile_command(Path("src.c"), Path("/run/secrets/key.h"), Path("out.so"))
    assert cmd[0] == "gcc" and cmd[-1] == "-lcrypto"
    assert cmd[cmd.index("-include") + 1] == "/run/secrets/key.h" and cmd[cmd.index("-o") + 1] == "out.so"
    bad = keyfile.KeyMaterial("aes-256-cbc", key, iv)  # 24 bytes for a 32-byte cipher
    with pytest.raises(ConfigError):
        cryptlib.key_header(bad)


def c_array(value: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in value)


def test_build_keeps_the_key_off_command_lines_and_disk(tmp_path: Path) -> None:
    """strace sees every exec of the build: no key in any argv; nothing left in TMPDIR or beside
    the output but the library."""
    require_toolchain(gcc_problem() or (None if shutil.which("strace") else "strace is not installed"))
    keys, key, iv = make_keys(tmp_path, "aes-128-cbc", seed=7)
    work, tmpdir = tmp_path / "out", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    trace = tmp_path / "trace"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        ["strace", "-f", "-qq", "-s", "100000", "-e", "trace=execve", "-o", str(trace),
         sys.executable, "-m", "forkops", "cryptlib", "build", "--keys", str(keys), "-o", str(work / "lib.so")],
        env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 and "ptrace" in result.stderr:
        require_toolchain(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    log = trace.read_text()
    assert "-include\", \"/dev/fd/" in log  # the header went in through a memfd
    assert "cc1" in log  # the compiler really ran under the trace
    for secret in (key, iv):
        for form in [*secret_forms(secret), c_array(secret)]:
            assert form not in log and form not in result.stdout + result.stderr
    assert listing(work) == ["lib.so"]
    assert stat.S_IMODE((work / "lib.so").stat().st_mode) == 0o600
    assert listing(tmpdir) == []
    with open(work / "lib.so", "rb") as fh:
        assert key in fh.read()  # it is in the library, by design


def test_build_without_memfd_uses_a_private_file_and_removes_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    require_toolchain(gcc_problem())
    keys, _, _ = make_keys(tmp_path, "aes-256-cbc", seed=3)
    seen: list[tuple[Path, int, int]] = []
    real = subprocess.run

    def watch(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        header = Path(cmd[cmd.index("-include") + 1])
        seen.append((header, stat.S_IMODE(header.stat().st_mode), stat.S_IMODE(header.parent.stat().st_mode)))
        return real(cmd, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.delattr(os, "memfd_create")  # a system without memfd (macOS, old kernels)
    monkeypatch.setattr(subprocess, "run", watch)
    out = tmp_path / "out" / "lib.so"
    out.parent.mkdir()
    cryptlib.build(keyfile.load(keys), out)
    [(header, mode, folder_mode)] = seen
    assert (mode, folder_mode) == (0o600, 0o700)
    assert not header.exists() and not header.parent.exists()
    assert listing(out.parent) == ["lib.so"]
    assert Abi(out).encrypt(b"x")[0] == 16


def test_failed_build_keeps_the_old_library_and_leaves_nothing(tmp_path: Path) -> None:
    require_toolchain(gcc_problem())
    keys, _, _ = make_keys(tmp_path, seed=4)
    out = tmp_path / "lib" / "libcryptfile.so"
    out.parent.mkdir()
    out.write_bytes(b"the previous library")
    no_headers = tmp_path / "bin" / "cc-without-libssl-dev"
    no_headers.parent.mkdir()
    # A real gcc that sees no system headers: what a machine without libssl-dev reports first.
    (tmp_path / "include").mkdir()
    no_headers.write_text(f'#!/bin/sh\nexec gcc -nostdinc -isystem {tmp_path / "include"} "$@"\n')
    no_headers.chmod(0o755)
    with pytest.raises(ExternalError) as info:
        cryptlib.build(keyfile.load(keys), out, cc=str(no_headers))
    assert "libssl-dev" in info.value.message and info.value.hint == cryptlib.APT_FIX
    assert out.read_bytes() == b"the previous library"
    assert listing(out.parent) == ["libcryptfile.so"]


def test_missing_compiler_is_exit_3_with_the_apt_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, key, _ = make_keys(tmp_path, seed=5)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a machine without gcc
    result = cli("cryptlib", "build", "--keys", str(keys), "-o", str(tmp_path / "lib.so"), secrets=[key])
    assert result.code == 3
    assert "apt-get install gcc libssl-dev" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "lib.so").exists()


def test_bad_input_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, key, _ = make_keys(tmp_path, seed=6)
    result = cli("cryptlib", "build", "--keys", str(keys), "-o", str(tmp_path / "no" / "lib.so"), secrets=[key])
    assert result.code == 2 and "no such directory" in result.err
    result = cli("cryptlib", "build", "--keys", str(keys), "-o", str(tmp_path), secrets=[key])
    assert result.code == 2 and "is a directory" in result.err
    loose, _, _ = make_keys(tmp_path, seed=8, mode=0o644)
    result = cli("cryptlib", "build", "--keys", str(loose), "-o", str(tmp_path / "lib.so"), secrets=[])
    assert result.code == 2 and "too open" in result.err
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(keyfile.ENV_VAR, raising=False)
    result = cli("cryptlib", "build", "-o", str(tmp_path / "lib.so"), secrets=[])
    assert result.code == 2 and "no keys file" in result.err
    assert not (tmp_path / "lib.so").exists()


def test_keys_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_toolchain(gcc_problem())
    keys, key, _ = make_keys(tmp_path, seed=9)
    monkeypatch.setenv(keyfile.ENV_VAR, str(keys))
    result = cli("cryptlib", "build", "-o", str(tmp_path / "lib.so"), "--json", secrets=[key])
    assert result.code == 0, result.err
    assert f'"key_fingerprint": "{keyfile.fingerprint(key)}"' in result.out
    assert Abi(tmp_path / "lib.so").encrypt(b"")[0] == 16


def test_stale_build_folder_is_removed(tmp_path: Path) -> None:
    """A build killed mid-compile leaves its private folder (object files hold the key)."""
    require_toolchain(gcc_problem())
    keys, _, _ = make_keys(tmp_path, seed=10)
    out = tmp_path / "lib.so"
    stale = tmp_path / ".lib.so.forkops-k1ll3d_x.tmp"
    stale.mkdir(mode=0o700)
    (stale / "ccXXXX.o").write_bytes(b"object file with the key")
    cryptlib.build(keyfile.load(keys), out)
    assert listing(tmp_path) == sorted([keys.name, "lib.so"])
