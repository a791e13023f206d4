"""Model encryption in the fork's format (docs/SPEC.md section 2): AES-CBC, PKCS#7, whole file, no header.

Invariants:

* Byte-compatible with ``openssl enc -aes-N-cbc -K .. -iv ..`` and with Crypto++'s
  ``CBC_Mode<AES>`` + ``StreamTransformationFilter`` (what the fork's C++ side links).
* Streaming: files are processed in fixed ``CHUNK``-sized pieces read into one preallocated
  buffer, so memory does not depend on the file size.
* Atomic: an output file is written anonymously (``O_TMPFILE`` where the file system has it,
  else a hidden temporary file in the same folder) and renamed over the destination only when
  complete and verified; a model directory is built in a hidden sibling folder and renamed into
  place at the end. An error, Ctrl-C or ``kill -9`` never leaves half of an output; a kill between
  the two renames of ``--force`` leaves a state :func:`recover_output` finishes (the next run and
  ``inspect`` call it).
* Inputs are regular files: opening one never blocks (a FIFO is refused) unless the caller asks
  to read a stream (``encrypt --raw``).
* The key never appears in a message: errors and reports name its fingerprint only.

A plaintext SavedModel starts with ``08 01`` (field 1, schema version 1) and then ``12``
(field 2, ``meta_graphs``, length-delimited) whose length fits in the file; ciphertext is a
positive multiple of 16 bytes. Everything else is "unknown".
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import importlib.resources
import io
import os
import queue
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from forkops import fsutil, keyfile
from forkops.errors import BadInput, ExternalError
from forkops.keyfile import KeyMaterial

BLOCK = 16
# 1 MiB, measured with benchmarks/bench_crypto.py: per-call overhead vanishes against AES, and
# 4 MiB was no faster but raised the peak RSS by 12 MiB. One input buffer plus _Writer.BUFFERS
# output buffers are all the memory a file of any size needs.
CHUNK = 1 << 20
MODEL_FILE = "saved_model.pb"
WRITEBACK = 16 << 20  # bytes written between writeback hints (see _Writer)

# Called after every chunk with (file being processed, bytes of it done, its total bytes).
# Raising from it aborts the run; nothing half-written is left behind.
Progress = Callable[[Path, int, int], None]


class Source(Protocol):
    """A readable binary file with a descriptor (its size tells where the last block is)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def fileno(self) -> int: ...
    def tell(self) -> int: ...


class Sink(Protocol):
    def write(self, data: memoryview | bytes, /) -> int | None: ...


class Kind(enum.Enum):
    PLAINTEXT = "plaintext"  # a plaintext SavedModel
    CIPHERTEXT = "ciphertext"  # a positive multiple of 16 bytes that is not a SavedModel
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return {"plaintext": "plaintext SavedModel", "ciphertext": "ciphertext"}.get(
            self.value, "unknown (neither a SavedModel nor ciphertext)"
        )


@dataclass(frozen=True)
class FileReport:
    """One file as ``inspect`` sees it. ``decrypts`` is None when it was not tried."""

    path: Path
    kind: Kind
    size: int
    decrypts: bool | None = None


@dataclass(frozen=True)
class Done:
    """What ``encrypt_path``/``decrypt_path`` wrote: the output and the transformed files."""

    output: Path
    files: tuple[Path, ...]  # relative to the output for a directory; the output for a file
    copied: int  # other files copied unchanged (directories only)
    recovered: tuple[str, ...] = ()  # what an interrupted earlier run left and this one repaired


def bundled_model(*, gpu: bool = False) -> Path:
    """The bundled half_plus_two model base path (holds version ``00000123/``)."""
    name = f"saved_model_half_plus_two_{'gpu' if gpu else 'cpu'}"
    found = importlib.resources.files("forkops").joinpath("data", name)
    path = Path(str(found))
    if not (path / "00000123" / MODEL_FILE).is_file():
        raise ExternalError(f"the bundled model {name} is missing from the forkops installation")
    return path


# ---------------------------------------------------------------------------------------------
# Format detection


def looks_like_saved_model(head: bytes, size: int) -> bool:
    """True if ``head`` (the first bytes of a ``size``-byte file) opens a plaintext SavedModel."""
    if len(head) < 4 or head[:3] != b"\x08\x01\x12":
        return False
    length, shift, pos = 0, 0, 3
    while pos < len(head) and pos < 13:  # a varint has at most 10 bytes
        byte = head[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return pos + length <= size
        shift += 7
    return False


def classify_bytes(head: bytes, size: int) -> Kind:
    if looks_like_saved_model(head, size):
        return Kind.PLAINTEXT
    if size > 0 and size % BLOCK == 0:
        return Kind.CIPHERTEXT
    return Kind.UNKNOWN


def classify(path: Path) -> Kind:
    with _open_input(path) as fh:
        return classify_bytes(fh.read(16), os.fstat(fh.fileno()).st_size)


# ---------------------------------------------------------------------------------------------
# Streams


def _cipher(material: KeyMaterial) -> Cipher[modes.CBC]:
    keyfile.validate(material)  # exactly the cipher's key length: never a silent AES-256-for-128
    return Cipher(algorithms.AES(material.key), modes.CBC(material.iv))


def _fill(src: Source, view: memoryview) -> int:
    """Read until ``view`` is full or the input ends (``readinto`` may return short)."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _fileno(dst: Sink) -> int | None:
    """The descriptor of a regular output file (for writeback hints), else None."""
    try:
        fd = dst.fileno()  # type: ignore[attr-defined]
        return fd if isinstance(fd, int) and stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


class _Writer:
    """Writes full output buffers on a background thread.

    ``write()`` releases the GIL, so the system calls (page-cache copies, the slow part on a
    busy machine) overlap with AES on the calling thread. ``BUFFERS`` buffers circulate between
    the two threads, so memory stays fixed. Used as a context manager: leaving it, normally or
    by an exception, always stops and joins the thread; a write error is re-raised on the
    calling thread.
    """

    BUFFERS = 3

    def __init__(self, dst: Sink, size: int) -> None:
        self._dst = dst
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        for _ in range(self.BUFFERS):
            self._free.put(bytearray(size))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="forkops-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self._full.put(None)
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def _run(self) -> None:
        fd = _fileno(self._dst)
        written = flushed = 0
        while (item := self._full.get()) is not None:
            buf, n = item
            if self._error is None:
                try:
                    self._dst.write(memoryview(buf)[:n])
                    written += n
                    if fd is not None and written - flushed >= WRITEBACK:
                        # Start writing back what is done and drop it from the page cache:
                        # the final fsync then has little left to wait for, and a big model
                        # does not evict everything else from memory.
                        getattr(self._dst, "flush", lambda: None)()
                        os.posix_fadvise(fd, flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                        flushed = written
                except BaseException as exc:  # handed to the calling thread
                    self._error = exc
            self._free.put(buf)

    def buffer(self) -> bytearray:
        """A free output buffer (waits for the writer if all are queued)."""
        buf = self._free.get()
        if self._error is not None:
            raise self._error
        return buf

    def submit(self, buf: bytearray, n: int) -> None:
        self._full.put((buf, n))


def encrypt_stream(
    src: Source, dst: Sink, material: KeyMaterial, *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Encrypt all of ``src`` into ``dst`` (PKCS#7 padded); return the bytes written."""
    enc = _cipher(material).encryptor()
    total = _size_or_zero(src)
    view = memoryview(bytearray(CHUNK + BLOCK))  # room for the final padding block
    done = written = 0
    with _Writer(dst, CHUNK + 2 * BLOCK) as writer:
        while True:
            n = _fill(src, view[:CHUNK])
            done += n
            last = n < CHUNK
            if last:  # pad the last piece (a whole block of 16s if it is block-aligned)
                pad = BLOCK - n % BLOCK
                view[n : n + pad] = bytes([pad]) * pad
                n += pad
            out = writer.buffer()
            m = enc.update_into(view[:n], out)
            writer.submit(out, m)
            written += m
            if progress is not None:
                progress(done, total)
            if last:
                break
    tail = enc.finalize()  # CBC without OpenSSL's padding holds nothing back
    dst.write(tail)
    return written + len(tail)


class BadPadding(Exception):
    """The last block does not end in valid PKCS#7 padding: a wrong key (or not ciphertext)."""


def decrypt_stream(
    src: Source, dst: Sink, material: KeyMaterial, *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, bytes]:
    """Decrypt all of ``src`` into ``dst``; return (plaintext bytes, first 16 plaintext bytes).

    ``src`` must be a regular file (its size tells where the padded last block is). Raises
    :class:`BadPadding` when the padding is invalid; ``dst`` then holds garbage the caller
    must discard.
    """
    size = os.fstat(src.fileno()).st_size - src.tell()
    if size <= 0 or size % BLOCK:
        raise BadPadding(f"{size} bytes is not a positive multiple of {BLOCK}")
    dec = _cipher(material).decryptor()
    view = memoryview(bytearray(CHUNK))
    remaining, head, plain = size, b"", 0
    with _Writer(dst, CHUNK + 2 * BLOCK) as writer:
        while remaining:
            want = min(CHUNK, remaining)
            n = _fill(src, view[:want])
            if n != want:
                raise ExternalError("the input file shrank while it was being decrypted")
            remaining -= n
            out = writer.buffer()
            m = dec.update_into(view[:n], out)
            if not remaining:  # the chunk holding the last block: check and strip the padding
                pad = out[m - 1] if m else 0
                if not 1 <= pad <= BLOCK or m < pad or out[m - pad : m] != bytes([pad]) * pad:
                    raise BadPadding("bad PKCS#7 padding")
                m -= pad
            if len(head) < 16:
                head += bytes(out[: min(m, 16 - len(head))])
            writer.submit(out, m)
            plain += m
            if progress is not None:
                progress(size - remaining, size)
    dec.finalize()
    return plain, head


def _size_or_zero(fh: Source) -> int:
    try:
        return max(os.fstat(fh.fileno()).st_size - fh.tell(), 0)
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# Files and model directories


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _file_type(mode: int) -> str:
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


@contextlib.contextmanager
def _open_input(path: Path, *, stream: bool = False) -> Iterator[io.BufferedReader]:
    """Open ``path`` for reading; anything but a regular file is BadInput unless ``stream``.

    Only an accepted stream is opened blocking (a FIFO waits for its writer: asked for). Anything
    else is opened non-blocking and checked on the descriptor, so a FIFO put in a regular file's
    place cannot hang forkops. (Probing a FIFO and reopening it would not do for a stream: the
    probe can connect a waiting writer and break its pipe when it closes.)
    """
    try:
        mode = os.stat(path).st_mode
        streaming = stream and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if streaming else os.O_NONBLOCK))
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    if not streaming:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise BadInput(f"{path}: is {_file_type(mode)}, not a regular file (only `encrypt --raw` reads a stream)")
        os.set_blocking(fd, True)
    with open(fd, "rb") as fh:
        if stat.S_ISREG(mode):
            with contextlib.suppress(OSError):  # a hint: larger read-ahead for one sequential pass
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        yield fh


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_paths(src: Path, dst: Path, *, force: bool) -> None:
    if not src.exists():
        raise BadInput(f"{src}: no such file or directory")
    real_src, real_dst = src.resolve(), dst.resolve()
    if _is_within(real_dst, real_src):
        raise BadInput(f"the output {dst} is inside the input {src}; choose a path outside it")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise BadInput(f"{dst} already exists (pass --force to replace it)")
        if _is_within(real_src, real_dst):
            raise BadInput(f"the input {src} is inside the output {dst}; replacing it would delete it")
        if src.is_file() and dst.is_dir() and not dst.is_symlink():
            raise BadInput(f"{dst} is a directory; give the output file's path")
    if not dst.parent.is_dir():
        raise BadInput(f"{dst.parent}: no such directory for the output")


def model_files(root: Path) -> list[Path]:
    """Every ``saved_model.pb`` under a model directory (any version layout), sorted."""
    found = sorted(p for p in root.rglob(MODEL_FILE) if p.is_file())
    if not found:
        raise BadInput(f"{root}: no {MODEL_FILE} in this directory or below it")
    return found


def _refuse_encrypt(path: Path) -> None:
    with _open_input(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        kind = classify_bytes(fh.read(16), size)
    if kind is Kind.CIPHERTEXT:
        raise BadInput(
            f"{path}: already encrypted ({size} bytes, a multiple of 16, not a plaintext SavedModel)",
            hint="`forkops inspect` tells what it is; --raw encrypts any file",
        )
    if kind is Kind.UNKNOWN:
        raise BadInput(
            f"{path}: not a plaintext SavedModel (it does not start with 08 01 12)",
            hint="--raw encrypts any file",
        )


def _refuse_decrypt(path: Path, *, raw: bool) -> None:
    with _open_input(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        kind = classify_bytes(fh.read(16), size)
    if kind is Kind.PLAINTEXT and not raw:
        raise BadInput(f"{path}: is a plaintext SavedModel, not encrypted; nothing to decrypt")
    if size == 0 or size % BLOCK:
        raise BadInput(f"{path}: not ciphertext ({size} bytes is not a positive multiple of 16)")


def _encrypt_file(src: Path, dst: Sink, material: KeyMaterial, progress: Progress | None, *, raw: bool) -> None:
    with _open_input(src, stream=raw) as fh:
        encrypt_stream(fh, dst, material, progress=_bind(progress, src))


def _decrypt_file(
    src: Path, dst: Sink, material: KeyMaterial, progress: Progress | None, *, raw: bool
) -> None:
    with _open_input(src) as fh:
        try:
            size, head = decrypt_stream(fh, dst, material, progress=_bind(progress, src))
        except BadPadding:
            raise BadInput(
                f"{src}: does not decrypt with key {material.key_fingerprint} (bad padding: wrong key?)"
            ) from None
    if not raw and not looks_like_saved_model(head, size):
        raise BadInput(
            f"{src}: does not decrypt with key {material.key_fingerprint} "
            "(the result is not a SavedModel: wrong key?)"
        )


def _bind(progress: Progress | None, path: Path) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(path, done, total)


def encrypt_path(
    src: Path, dst: Path, material: KeyMaterial, *,
    force: bool = False, raw: bool = False, progress: Progress | None = None,
) -> Done:
    """Encrypt a file, or every ``saved_model.pb`` of a model directory, into ``dst``.

    Refuses (BadInput, nothing written) ciphertext and, unless ``raw``, anything that is not a
    plaintext SavedModel.
    """
    return _run(src, dst, material, encrypt=True, force=force, raw=raw, progress=progress)


def decrypt_path(
    src: Path, dst: Path, material: KeyMaterial, *,
    force: bool = False, raw: bool = False, progress: Progress | None = None,
) -> Done:
    """Decrypt a file, or every ``saved_model.pb`` of a model directory, into ``dst``.

    Refuses a plaintext SavedModel (unless ``raw``) and anything not a multiple of 16 bytes; a
    wrong key (bad padding, or a result that is not a SavedModel) is BadInput with the key's
    fingerprint and leaves nothing written.
    """
    return _run(src, dst, material, encrypt=False, force=force, raw=raw, progress=progress)


def _run(
    src: Path, dst: Path, material: KeyMaterial, *,
    encrypt: bool, force: bool, raw: bool, progress: Progress | None,
) -> Done:
    keyfile.validate(material)
    recovered = recover_output(dst)
    _check_paths(src, dst, force=force)
    targets = model_files(src) if src.is_dir() else [src]
    for path in targets:  # every refusal happens before anything is written
        if encrypt and not raw:
            _refuse_encrypt(path)
        elif not encrypt:
            _refuse_decrypt(path, raw=raw)

    def transform(path: Path, out: IO[bytes]) -> None:
        if encrypt:
            _encrypt_file(path, out, material, progress, raw=raw)
        else:
            _decrypt_file(path, out, material, progress, raw=raw)

    try:
        if src.is_dir():
            copied = _build_directory(src, dst, set(targets), transform)
            return Done(dst, tuple(p.relative_to(src) for p in targets), copied, recovered)
        with fsutil.atomic_writer(dst) as out:  # unnamed until complete: a kill leaves nothing
            transform(src, out)
        return Done(dst, (dst,), 0, recovered)
    except OSError as exc:
        where = exc.filename or dst
        raise ExternalError(f"{where}: {exc.strerror or exc}") from None


def _build_directory(
    src: Path, dst: Path, targets: set[Path], transform: Callable[[Path, IO[bytes]], None]
) -> int:
    """Build the output in a hidden sibling of ``dst``; rename it into place at the end."""
    copied = 0
    with staging_dir(dst) as tmp:
        os.chmod(tmp, stat.S_IMODE(src.stat().st_mode) | stat.S_IRWXU)  # mkdtemp made it 0700
        for folder, dirnames, filenames in os.walk(src):
            here = Path(folder)
            into = tmp / here.relative_to(src)
            into.mkdir(exist_ok=True)
            for name in dirnames:
                if (here / name).is_symlink():
                    raise BadInput(f"{here / name}: a symlinked directory in a model is not supported")
            for name in filenames:
                path = here / name
                if path in targets:
                    with open(into / name, "wb") as out:
                        transform(path, out)
                else:
                    mode = path.stat().st_mode
                    if not stat.S_ISREG(mode):  # copyfile would block on a FIFO
                        raise BadInput(f"{path}: is {_file_type(mode)}, not a regular file; a model holds only files")
                    shutil.copyfile(path, into / name)  # content only: follows a file symlink
                    copied += 1
                # Keep the source's permission bits, but always owner-writable so the output
                # can be replaced or removed later (the bundled model is read-only).
                os.chmod(into / name, stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
        _fsync_tree(tmp)
        _move_into_place(tmp, dst)
    return copied


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# Staging folders and the --force swap
#
# An output ``OUT`` is built in ``.OUT.forkops-T.tmp`` (T random). With ``--force`` the old
# output is first renamed to ``.OUT.forkops-old-T`` (same T), then the new one to ``OUT``, then
# the old one is deleted. ``old-T`` exists only once ``T.tmp`` is complete, so after a kill at
# any point the names alone say what to do (``recover_output``). The builder holds an flock on
# the staging folder (the inode, so it follows the folder through its renames) until it is
# done: a folder whose lock can be taken belongs to no living run.


def _token(name: str, prefix: str) -> str | None:
    """T of ``PREFIX T.tmp``; None for other names (including ``PREFIX old-T``)."""
    if name.startswith(prefix) and name.endswith(".tmp") and not name.startswith(prefix + "old-"):
        return name[len(prefix) : -len(".tmp")]
    return None


def _prefix(dst: Path) -> str:
    return f".{dst.name}.forkops-"


@contextlib.contextmanager
def staging_dir(dst: Path) -> Iterator[Path]:
    """A private (0700) hidden folder beside ``dst`` (same file system: renames are atomic),
    locked while the block runs and removed with everything in it on any exit."""
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(dst), suffix=".tmp", dir=dst.parent))
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)  # releases the lock, only after the folder is gone


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``; an existing ``dst`` (``--force``) is moved aside first."""
    if not (dst.exists() or dst.is_symlink()):
        os.rename(tmp, dst)
        return
    token = _token(tmp.name, _prefix(dst))
    assert token is not None, tmp
    aside = dst.parent / f"{_prefix(dst)}old-{token}"
    os.rename(dst, aside)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(aside, dst)  # put the old one back
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _claim(folder: Path) -> Iterator[bool]:
    """True (and the lock held) if no living run holds ``folder``'s lock; False if one does
    or the folder vanished meanwhile (its run moved on)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def recover_output(dst: Path) -> tuple[str, ...]:
    """Finish or roll back what a killed run left beside ``dst``; say what was done.

    ``old-T`` with ``T.tmp`` and no ``dst``: the new output was complete, finish the swap.
    ``old-T`` alone and no ``dst``: put the old output back. Otherwise leftovers are removed
    (an incomplete ``T.tmp``, an ``old-T`` already replaced). Folders of a living run are left.
    """
    prefix = _prefix(dst)
    try:
        names = os.listdir(dst.parent)
    except OSError:
        return ()
    tokens = {t for n in names if (t := _token(n, prefix)) is not None}
    tokens |= {n[len(prefix) + 4 :] for n in names if n.startswith(prefix + "old-")}
    done: list[str] = []
    for token in sorted(tokens):
        tmp, old = dst.parent / f"{prefix}{token}.tmp", dst.parent / f"{prefix}old-{token}"
        has_tmp, has_old = tmp.is_dir(), old.exists() or old.is_symlink()
        # The living run, if any, holds the lock on T.tmp, or on dst once T.tmp became dst.
        with _claim(tmp if has_tmp else dst) as free:
            if not free and (has_tmp or dst.is_dir()):
                continue
            present = dst.exists() or dst.is_symlink()
            if has_old and not present:
                if has_tmp:
                    os.rename(tmp, dst)
                    done.append(f"{dst}: finished replacing it (an earlier run was interrupted)")
                else:
                    os.rename(old, dst)
                    done.append(f"{dst}: restored the previous output (an earlier run was interrupted)")
                    continue
            if has_old:
                _remove(old)
                if present:
                    done.append(f"{dst}: removed the previous output an interrupted run left beside it")
            if has_tmp and tmp.exists():
                _remove(tmp)
                done.append(f"{dst}: removed the unfinished output of an interrupted run")
    return tuple(done)


# ---------------------------------------------------------------------------------------------
# inspect


class _Discard:
    """A write-only sink: trial decryption keeps nothing."""

    def write(self, data: memoryview | bytes, /) -> int:
        return len(data)


def inspect_path(
    src: Path, material: KeyMaterial | None = None, *, progress: Progress | None = None
) -> list[FileReport]:
    """Each file's kind and size (every ``saved_model.pb`` of a directory) and, with a key,
    whether ciphertext decrypts to a SavedModel with it."""
    if material is not None:
        keyfile.validate(material)
    if not src.exists():
        raise BadInput(f"{src}: no such file or directory")
    reports = []
    for path in model_files(src) if src.is_dir() else [src]:
        with _open_input(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            kind = classify_bytes(fh.read(16), size)
            decrypts: bool | None = None
            if material is not None and kind is Kind.CIPHERTEXT:
                fh.seek(0)
                try:
                    plain, head = decrypt_stream(
                        fh, _Discard(), material, progress=_bind(progress, path)
                    )
                    decrypts = looks_like_saved_model(head, plain)
                except BadPadding:
                    decrypts = False
        reports.append(FileReport(path, kind, size, decrypts))
    return reports
