"""``keys.toml``: the secret key and IV (docs/SPEC.md section 3), found and checked everywhere alike.

The key never leaves this module in printable form except as a fingerprint (first 8 hex
digits of its SHA-256). Error messages name the file and the field, never the value.

The git hooks load keys on every commit, so the module imports little: no dataclasses or
pathlib at import time; tomllib and tomlcheck (the full checker), hashlib, ``secrets`` and
fsutil only where they are needed.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, NamedTuple

from forkops.errors import BadInput, ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from forkops.tomlcheck import Checker

ENV_VAR = "FORKOPS_KEYS"
FILENAME = "keys.toml"  # in the workspace folder, when neither --keys nor $FORKOPS_KEYS names one
CIPHERS = {"aes-128-cbc": 16, "aes-192-cbc": 24, "aes-256-cbc": 32}
DEFAULT_CIPHER = "aes-128-cbc"
DEFAULT_IV = b"7" * 16  # sixteen 0x37 bytes, the fork's default


def fingerprint(secret: bytes) -> str:
    import hashlib

    return hashlib.sha256(secret).hexdigest()[:8]


class KeyMaterial(NamedTuple):
    """The key and IV of one keys file. A NamedTuple rather than a frozen dataclass: every
    commit's hook loads it, and importing dataclasses would cost that hook ~10 ms."""

    cipher: str
    key: bytes
    iv: bytes
    source: str | None = None  # the file it was read from
    key_is_hex: bool = False  # stored as key_hex (may hold non-printable bytes)

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def iv_fingerprint(self) -> str:
        return fingerprint(self.iv)

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"KeyMaterial(cipher={self.cipher!r}, key=<{self.key_fingerprint}>, iv=<{self.iv_fingerprint}>)"



def resolve_path(explicit: Path | None, workspace_root: Path | None) -> Path:
    """THE keys-file lookup: ``--keys FILE``, else ``$FORKOPS_KEYS``, else ``keys.toml`` in the
    workspace. Every command finds its keys file through here (or :func:`find`)."""
    from pathlib import Path

    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    if workspace_root is not None:
        return workspace_root / FILENAME
    raise BadInput(f"no keys file: pass --keys FILE, set ${ENV_VAR}, or run inside a forkops workspace")


def find(explicit: Path | None, workspace_root: Path | None, *, required: bool = True) -> KeyMaterial | None:
    """The keys :func:`resolve_path` leads to, loaded and checked.

    ``required=False`` makes the keys optional where the lookup ends in the workspace: None
    when there is no workspace (``workspace_root`` None) or its ``keys.toml`` does not exist.
    A file named by ``--keys`` or ``$FORKOPS_KEYS`` must exist and be valid either way.
    """
    in_workspace = explicit is None and not os.environ.get(ENV_VAR)
    if not required and in_workspace and (workspace_root is None or not (workspace_root / FILENAME).exists()):
        return None
    return load(resolve_path(explicit, workspace_root))


def check_permissions(path: Path | str) -> None:
    """Refuse a keys file readable or writable by group or others, as ssh does for a private key."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(
            f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; the key must be private",
            hint=f"chmod 600 {path}",
        )


def load(path: Path | str) -> KeyMaterial:
    """The keys file at ``path``: private (see :func:`check_permissions`), valid TOML, a
    ``[model]`` table with a key of the cipher's length. A file as :func:`render` writes it
    is read without tomllib (the hooks' case: :func:`_plain_toml`); anything else goes through
    tomllib and the full checker, which names every field at fault and warns about unknown keys."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: keys file not found (create one with `forkops set-key --generate`)")
    check_permissions(path)
    try:
        with open(path, "rb") as fh:
            quick = _quick(_plain_toml(fh.read()), path)
    except (OSError, ValueError):
        quick = None
    return quick if quick is not None else _load_checked(path)


def _plain_toml(raw: bytes) -> dict[str, object]:
    """The tables of a keys file in the plain form :func:`render` writes: comment and blank
    lines, ``[model]``, ``name = "value"`` lines (a known name once, a basic string without
    escapes). ValueError for anything else, which tomllib then reads. Every file this accepts
    means the same to tomllib (tested); importing tomllib would cost each hook ~8 ms."""
    tables: dict[str, object] = {}
    current: dict[str, str] | None = None
    for line in raw.decode("utf-8").split("\n"):
        line = line.removesuffix("\r")
        if any((c < " " and c != "\t") or c == "\x7f" for c in line):
            raise ValueError("a control character")
        if not line.strip(" \t") or line.startswith("#"):
            continue
        if line == "[model]" and "model" not in tables:
            tables["model"] = current = {}
            continue
        name, sep, value = line.partition(" = ")
        if (current is None or not sep or name not in _FIELDS or name in current or len(value) < 2
                or value[0] != '"' or value[-1] != '"' or '"' in value[1:-1] or "\\" in value):
            raise ValueError("not a plain keys file")
        current[name] = value[1:-1]
    return tables


def _quick(data: dict[str, object], path: Path | str) -> KeyMaterial | None:
    """``data`` as KeyMaterial when it is exactly a well-formed keys file, else None (then the
    full checker reads the file and says what is wrong)."""
    model = data.get("model")
    if len(data) != 1 or not isinstance(model, dict) or not set(model) <= _FIELDS:
        return None
    cipher = model.get("cipher", DEFAULT_CIPHER)
    key_ok, key = _quick_secret(model, "key")
    iv_ok, iv = _quick_secret(model, "iv")
    if not (key_ok and iv_ok and isinstance(cipher, str) and cipher in CIPHERS):
        return None
    if key is None or len(key) != CIPHERS[cipher] or (iv is not None and len(iv) != 16):
        return None
    return KeyMaterial(cipher, key, DEFAULT_IV if iv is None else iv, os.fspath(path),
                       key_is_hex="key_hex" in model)


_FIELDS = frozenset({"cipher", "key", "key_hex", "iv", "iv_hex"})


def _quick_secret(model: dict[str, object], name: str) -> tuple[bool, bytes | None]:
    """(well-formed, value) of ``name`` or ``name_hex``; the value is None when both are absent."""
    text, hex_text = model.get(name), model.get(f"{name}_hex")
    if text is None and hex_text is None:
        return True, None
    if text is None and isinstance(hex_text, str):
        try:
            return True, bytes.fromhex(hex_text)
        except ValueError:
            return False, None
    if hex_text is None and isinstance(text, str):
        return True, text.encode("utf-8")
    return False, None


def _load_checked(path: Path | str) -> KeyMaterial:
    from pathlib import Path

    from forkops.tomlcheck import Checker, load_toml

    label = str(path)
    data = load_toml(Path(path), label)
    checker = Checker(label)
    top = checker.table(data, "")
    model = top.sub("model", required=True)
    cipher = model.choice("cipher", tuple(CIPHERS), DEFAULT_CIPHER)
    key = _secret(checker, model.data, "model", "key", required=True)
    iv = _secret(checker, model.data, "model", "iv", required=False)
    for name in _FIELDS:
        model._seen.add(name)
    model.finish()
    top.finish()
    if key is not None and cipher in CIPHERS and len(key) != CIPHERS[cipher]:
        checker.problem("model.key", f"is {len(key)} bytes; {cipher} needs exactly {CIPHERS[cipher]}")
    if iv is not None and len(iv) != 16:
        checker.problem("model.iv", f"is {len(iv)} bytes; the IV must be exactly 16")
    checker.raise_if_any()
    assert key is not None
    return KeyMaterial(cipher, key, DEFAULT_IV if iv is None else iv, os.fspath(path),
                       key_is_hex="key_hex" in model.data)


def _secret(checker: Checker, table: dict[str, object], prefix: str, name: str, *, required: bool) -> bytes | None:
    text, hex_text = table.get(name), table.get(f"{name}_hex")
    if text is not None and hex_text is not None:
        checker.problem(f"{prefix}.{name}", f"give either {name} or {name}_hex, not both")
        return None
    if hex_text is not None:
        if not isinstance(hex_text, str):
            checker.problem(f"{prefix}.{name}_hex", "expected a string of hex digits")
            return None
        try:
            return bytes.fromhex(hex_text)
        except ValueError:
            # Do not echo the value: it is (most of) the secret.
            checker.problem(f"{prefix}.{name}_hex", "is not valid hex (two digits per byte)")
            return None
    if text is not None:
        if not isinstance(text, str):
            checker.problem(f"{prefix}.{name}", "expected a string")
            return None
        return text.encode("utf-8")
    if required:
        checker.problem(f"{prefix}.{name}", f"missing (give {name} or {name}_hex)")
    return None


def validate(material: KeyMaterial) -> None:
    """Re-check lengths (for KeyMaterial built in code)."""
    if len(material.key) != CIPHERS.get(material.cipher, -1) or len(material.iv) != 16:
        raise ConfigError([f"{material.source or 'keys'}: model.key: wrong length for {material.cipher}"])


# -- generating a new keys file ---------------------------------------------------------------
# Letters and digits only: safe unescaped in a C string literal, in a Bazel define and in TOML,
# and never confused with shell or rc-file syntax. 62 symbols give ~5.95 bits each, so the
# 16 characters of an AES-128 key carry ~95 bits (24 -> ~143, 32 -> ~190).
PRINTABLE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def generate(cipher: str = DEFAULT_CIPHER, *, hex_key: bool = False, random_iv: bool = False) -> KeyMaterial:
    """A new random key (``secrets``): printable by default, full-entropy bytes with ``hex_key``.

    The IV stays the fork's public default unless ``random_iv``; a random IV follows the key's
    form (printable, or raw bytes stored as ``iv_hex``).
    """
    import secrets

    if cipher not in CIPHERS:
        raise BadInput(f"unknown cipher {cipher!r} (choose from {', '.join(CIPHERS)})")
    length = CIPHERS[cipher]

    def printable(n: int) -> bytes:
        return "".join(secrets.choice(PRINTABLE_ALPHABET) for _ in range(n)).encode("ascii")

    key = secrets.token_bytes(length) if hex_key else printable(length)
    iv = DEFAULT_IV
    if random_iv:
        iv = secrets.token_bytes(16) if hex_key else printable(16)
    return KeyMaterial(cipher, key, iv, None, key_is_hex=hex_key)


def render(material: KeyMaterial) -> str:
    """keys.toml text for ``material`` (``key_hex``/``iv_hex`` for values that are not plain text)."""
    validate(material)
    lines = [
        "# keys.toml: the model key (see keys.example.toml). NEVER commit this file.",
        "# Written by `forkops set-key --generate`; keep it mode 0600.",
        "",
        "[model]",
        f'cipher = "{material.cipher}"',
        _secret_line("key", material.key, as_hex=material.key_is_hex),
        _secret_line("iv", material.iv, as_hex=not _plain_text(material.iv)),
        "",
    ]
    return "\n".join(lines)


def _plain_text(value: bytes) -> bool:
    return all(chr(b) in PRINTABLE_ALPHABET for b in value)


def _secret_line(name: str, value: bytes, *, as_hex: bool) -> str:
    if as_hex or not _plain_text(value):
        return f'{name}_hex = "{value.hex()}"'
    return f'{name} = "{value.decode("ascii")}"'


def write(path: Path, material: KeyMaterial, *, force: bool = False) -> None:
    """Create the keys file atomically with mode 0600; refuse to replace one unless ``force``.

    The temporary file is created 0600 (fsutil.atomic_writer) before any byte of the key is written, so the
    key is never readable by others, not even for a moment.
    """
    check_can_write(path, force=force)
    from forkops.fsutil import write_atomic

    write_atomic(path, render(material), mode=0o600)


def check_can_write(path: Path, *, force: bool) -> None:
    """BadInput unless ``path`` may be (re)written: absent, or present and ``force``."""
    if path.is_dir():
        raise BadInput(f"{path}: is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{path}: a keys file already exists; refusing to overwrite it",
                       hint="pass --force to replace it (the old key is lost unless you keep a copy)")
