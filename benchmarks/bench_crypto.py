"""Benchmark: `forkops encrypt` / `forkops decrypt` against `openssl enc`, measured in the same run.

Usage: python benchmarks/bench_crypto.py [--size MIB] [--runs N] [--dir DIR] [--cipher aes-128-cbc]

Creates a SIZE MiB file shaped like a SavedModel (the 08 01 12 <length> header, random bytes
after it), then alternates openssl and forkops (each a separate process, as a user runs them)
for encryption and decryption. Prints the median wall time of each, the ratio forkops/openssl
(target <= 1.1) and forkops' peak resident memory (the child's max RSS from wait4; target
<= 64 MiB whatever the size). Both ciphertexts are compared byte for byte.

For information (no target): the library ``forkops cryptlib build`` makes, its CBCMode_Decrypt
called through ctypes on the whole file in memory (as the fork's ReadBinaryProto calls it), timed
against the same openssl decryption (which also reads and writes the files).

openssl gets the key on its command line (-K): that is acceptable only because this is a
throwaway benchmark key; forkops reads it from a 0600 keys.toml as in real use.
forkops fsyncs its output before renaming it into place (atomicity); openssl does not. Every
timed command starts after os.sync(), so no run pays for the previous run's writeback.
"""

from __future__ import annotations

import argparse
import ctypes
import filecmp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY_BYTES = {"aes-128-cbc": 16, "aes-192-cbc": 24, "aes-256-cbc": 32}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def make_model_like(path: Path, size: int) -> None:
    """A file ``classify`` calls a plaintext SavedModel: header, then random bytes."""
    body = size - 3
    length = body - len(varint(body))
    head = b"\x08\x01\x12" + varint(length)
    with open(path, "wb") as fh:
        fh.write(head)
        left = size - len(head)
        while left:
            n = min(left, 8 << 20)
            fh.write(os.urandom(n))
            left -= n


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process; fails loudly on a non-zero exit."""
    os.sync()  # start clean: the previous run's dirty pages must not be flushed on this one's clock
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} {argv[1]} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def library_decrypt(tmp: Path, keys: Path, cipher_file: Path, plain: Path, runs: int) -> list[float]:
    """Wall seconds of CBCMode_Decrypt on ``cipher_file`` (already in memory), per run."""
    from forkops import cryptlib, keyfile

    lib_path = tmp / "libcryptfile.so"
    cryptlib.build(keyfile.load(keys), lib_path)
    decrypt = ctypes.CDLL(str(lib_path)).CBCMode_Decrypt
    decrypt.restype = ctypes.c_ulong
    decrypt.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_ulong]
    free = ctypes.CDLL(None).free
    free.argtypes = [ctypes.c_void_p]
    data, expected = cipher_file.read_bytes(), plain.stat().st_size
    walls = []
    for _ in range(runs):
        out = ctypes.c_void_p()
        start = time.perf_counter()
        n = decrypt(data, ctypes.byref(out), len(data))
        walls.append(time.perf_counter() - start)
        free(out.value)
        if n != expected:
            sys.exit(f"FAIL: libcryptfile.so decrypted {n} bytes, expected {expected}")
    return walls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="file size in MiB (default 512)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    parser.add_argument("--cipher", choices=sorted(KEY_BYTES), default="aes-128-cbc")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-crypto-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        key, iv = secrets.token_bytes(KEY_BYTES[args.cipher]), b"7" * 16
        keys = tmp / "keys.toml"
        keys.touch(mode=0o600)
        keys.write_text(f'[model]\ncipher = "{args.cipher}"\nkey_hex = "{key.hex()}"\n')
        plain = tmp / "saved_model.pb"
        make_model_like(plain, args.size << 20)
        ossl_enc, fk_enc = tmp / "openssl.enc", tmp / "forkops.enc"
        ossl_dec, fk_dec = tmp / "openssl.dec", tmp / "forkops.dec"
        ossl = ["openssl", "enc", f"-{args.cipher}", "-K", key.hex(), "-iv", iv.hex()]
        forkops = [sys.executable, "-m", "forkops"]

        walls: dict[str, list[float]] = {k: [] for k in ("oe", "fe", "od", "fd", "start")}
        peak = 0
        for _ in range(args.runs):
            walls["start"].append(timed([*forkops, "--version"])[0])
            walls["oe"].append(timed([*ossl, "-in", str(plain), "-out", str(ossl_enc)])[0])
            wall, rss = timed([*forkops, "encrypt", str(plain), "-o", str(fk_enc),
                               "--keys", str(keys), "--force"])
            walls["fe"].append(wall)
            peak = max(peak, rss)
            walls["od"].append(timed([*ossl, "-d", "-in", str(ossl_enc), "-out", str(ossl_dec)])[0])
            wall, rss = timed([*forkops, "decrypt", str(fk_enc), "-o", str(fk_dec),
                               "--keys", str(keys), "--force"])
            walls["fd"].append(wall)
            peak = max(peak, rss)
        walls["lib"] = library_decrypt(tmp, keys, fk_enc, plain, args.runs)
        if not filecmp.cmp(ossl_enc, fk_enc, shallow=False):
            sys.exit("FAIL: forkops' ciphertext differs from openssl's")
        if not filecmp.cmp(plain, fk_dec, shallow=False):
            sys.exit("FAIL: forkops' decryption differs from the original")

    med = {k: statistics.median(v) for k, v in walls.items()}
    enc_ratio, dec_ratio = med["fe"] / med["oe"], med["fd"] / med["od"]
    mib = peak / (1 << 20)
    print(f"file: {args.size} MiB, {args.cipher}, {args.runs} runs each, median wall time")
    print(f"  forkops startup (--version)  {med['start']:7.3f} s")
    print(f"  encrypt  openssl {med['oe']:7.3f} s   forkops {med['fe']:7.3f} s   ratio {enc_ratio:.2f}")
    print(f"  decrypt  openssl {med['od']:7.3f} s   forkops {med['fd']:7.3f} s   ratio {dec_ratio:.2f}")
    print(f"  decrypt  openssl {med['od']:7.3f} s   libcryptfile.so CBCMode_Decrypt in memory {med['lib']:7.3f} s"
          f"   ratio {med['lib'] / med['od']:.2f}")
    print(f"  forkops peak RSS {mib:.1f} MiB")
    ok = enc_ratio <= 1.1 and dec_ratio <= 1.1 and mib <= 64
    print("targets (ratio <= 1.1, peak <= 64 MiB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
