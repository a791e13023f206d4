"""``keys.toml``: the secret key and IV (docs/SPEC.md section 3), found and checked everywhere alike.

The key never leaves this module in printable form except as a fingerprint (first 8 hex
digits of its SHA-256). Error messages name the file and the field, never the value.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from forkops.errors import BadInput, ConfigError
from forkops.tomlcheck import Checker, load_toml

# `secrets` and forkops.fsutil (tempfile, shutil, bz2, random) are imported where a key is
# generated or written: the git hooks load keys on every commit and need neither.

ENV_VAR = "FORKOPS_KEYS"
CIPHERS = {"aes-128-cbc": 16, "aes-192-cbc": 24, "aes-256-cbc": 32}
DEFAULT_CIPHER = "aes-128-cbc"
DEFAULT_IV = b"7" * 16  # sixteen 0x37 bytes, the fork's default


def fingerprint(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:8]


@dataclass(frozen=True)
class KeyMaterial:
    cipher: str
    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    source: Path | None = None
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
    """``--keys FILE``, else ``$FORKOPS_KEYS``, else ``keys.toml`` in the workspace."""
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    if workspace_root is not None:
        return workspace_root / "keys.toml"
    raise BadInput(f"no keys file: pass --keys FILE, set ${ENV_VAR}, or run inside a forkops workspace")


def check_permissions(path: Path) -> None:
    """Refuse a keys file readable or writable by group or others, as ssh does for a private key."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(
            f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; the key must be private",
            hint=f"chmod 600 {path}",
        )


def load(path: Path) -> KeyMaterial:
    if not path.is_file():
        raise BadInput(f"{path}: keys file not found (create one with `forkops set-key --generate`)")
    check_permissions(path)
    label = str(path)
    data = load_toml(path, label)
    checker = Checker(label)
    top = checker.table(data, "")
    model = top.sub("model", required=True)
    cipher = model.choice("cipher", tuple(CIPHERS), DEFAULT_CIPHER)
    key = _secret(checker, model.data, "model", "key", required=True)
    iv = _secret(checker, model.data, "model", "iv", required=False)
    for name in ("cipher", "key", "key_hex", "iv", "iv_hex"):
        model._seen.add(name)
    model.finish()
    top.finish()
    if key is not None and cipher in CIPHERS and len(key) != CIPHERS[cipher]:
        checker.problem("model.key", f"is {len(key)} bytes; {cipher} needs exactly {CIPHERS[cipher]}")
    if iv is not None and len(iv) != 16:
        checker.problem("model.iv", f"is {len(iv)} bytes; the IV must be exactly 16")
    checker.raise_if_any()
    assert key is not None
    return KeyMaterial(cipher, key, DEFAULT_IV if iv is None else iv, path, key_is_hex="key_hex" in model.data)


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
