"""The decryption library the TensorFlow fork ``dlopen()``s: forkops' own source, the key compiled in.

Invariants:

* :data:`SOURCE` (``cryptfile.c``, package data) holds no key material and does not compile without
  the header :func:`key_header` renders (``-include HEADER``); the fork's ABI is
  ``unsigned long CBCMode_Decrypt(const char *cipher, char **plain, unsigned long size)``
  (plus ``CBCMode_Encrypt``), AES-CBC with PKCS#7 on OpenSSL's libcrypto, AES-128/192/256 by the key
  length: the bytes ``forkops encrypt`` writes.
* :func:`compile_command` never holds the key: only the header's path (the Docker stage mounts the
  header as a BuildKit secret and runs the same command).
* :func:`build` keeps the header in memory (a ``memfd``; a file in a 0700 folder where the system
  has none, removed on any exit) and writes the library atomically: the output path holds the old
  library or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from forkops import keyfile
from forkops.crypto import recover_output, staging_dir
from forkops.errors import BadInput, ExternalError
from forkops.keyfile import KeyMaterial

SOURCE = Path(__file__).with_name("cryptfile.c")
LIBRARY_NAME = "libcryptfile.so"  # where the fork looks: /opt/lib/libcryptfile.so
APT_FIX = "apt-get install gcc libssl-dev"
HEADER_NAME = "cryptfile_key.h"


def _c_bytes(value: bytes) -> str:
    return "{" + ", ".join(f"0x{b:02x}" for b in value) + "}"


def key_header(material: KeyMaterial) -> bytes:
    """The C header that gives :data:`SOURCE` its key and IV (it IS the secret: never store it).

    Defines ``CRYPTFILE_KEY`` (brace initializer), ``CRYPTFILE_KEY_LEN`` (16/24/32) and
    ``CRYPTFILE_IV`` (16 bytes); the key length must match the cipher exactly.
    """
    keyfile.validate(material)
    return (
        f"/* forkops cryptlib: model key {material.key_fingerprint} ({material.cipher}). SECRET: never\n"
        " * commit or keep this file; forkops passes it to the compiler and deletes it. */\n"
        f"#define CRYPTFILE_KEY_LEN {len(material.key)}\n"
        f"#define CRYPTFILE_KEY {_c_bytes(material.key)}\n"
        f"#define CRYPTFILE_IV {_c_bytes(material.iv)}\n"
    ).encode("ascii")


def compile_command(source: Path, header: Path, out: Path, *, cc: str = "gcc") -> list[str]:
    """The compiler command building the shared library ``out`` (key only inside ``header``)."""
    return [
        cc, "-O2", "-pipe", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra",
        "-o", str(out), "-include", str(header), str(source), "-lcrypto",
    ]


@contextlib.contextmanager
def _header_file(material: KeyMaterial, folder: Path) -> Iterator[tuple[Path, tuple[int, ...]]]:
    """The header as a path the compiler can read, and the descriptors it must inherit.

    A memfd lives only in memory and dies with the last process holding it (even on SIGKILL);
    without memfd the header is a 0600 file in the caller's private folder, deleted on exit.
    """
    data = key_header(material)
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("cryptfile-key", 0)  # not close-on-exec: the compiler inherits it
        try:
            os.write(fd, data)
            yield Path(f"/dev/fd/{fd}"), (fd,)
        finally:
            os.close(fd)
        return
    path = folder / HEADER_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path, ()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _compile_failure(stderr: str, header: Path) -> ExternalError:
    """One safe line from the compiler's complaint (never a line quoting the key header)."""
    text = stderr.strip()
    if ("openssl/" in text and "No such file" in text) or "cannot find -lcrypto" in text:
        return ExternalError("the OpenSSL development files (libssl-dev) are missing", hint=APT_FIX)
    lines = [line for line in text.splitlines() if "error" in line] or text.splitlines() or ["no output"]
    first = lines[0]
    if str(header) in first or "CRYPTFILE_" in first:
        first = "the generated key header did not compile"
    return ExternalError(f"compiling {SOURCE.name} failed: {first}", hint=APT_FIX)


def build(material: KeyMaterial, out: Path, *, cc: str = "gcc") -> None:
    """Compile :data:`SOURCE` with ``material`` into the shared library ``out`` (replaced atomically).

    BadInput for an unusable output path; ExternalError (exit 3, with the apt-get fix) when the
    compiler or libssl-dev is missing or compiling fails.
    """
    keyfile.validate(material)
    if out.is_dir():
        raise BadInput(f"{out} is a directory; give the library's path (e.g. {out / LIBRARY_NAME})")
    if not out.parent.is_dir():
        raise BadInput(f"{out.parent}: no such directory for the output")
    if shutil.which(cc) is None:
        raise ExternalError(f"{cc}: compiler not found", hint=APT_FIX)
    recover_output(out)  # a killed build's staging folder holds the key (object files): remove it
    with staging_dir(out) as private, _header_file(material, private) as (header, fds):
        built = private / out.name
        try:
            # The compiler's own temporary files hold the key too (the object file): keep them in
            # the private folder, not in /tmp where a killed compiler would leave them.
            result = subprocess.run(
                compile_command(SOURCE, header, built, cc=cc), pass_fds=fds,
                env={**os.environ, "TMPDIR": str(private)}, capture_output=True, text=True, check=False,
            )
        except OSError as exc:
            raise ExternalError(f"{cc}: cannot run ({exc.strerror})", hint=APT_FIX) from None
        if result.returncode != 0:
            raise _compile_failure(result.stderr, header)
        os.chmod(built, 0o600)  # it holds the key: as private as keys.toml
        with open(built, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(built, out)
