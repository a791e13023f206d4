"""CLI commands: ``encrypt``, ``decrypt``, ``inspect`` (model encryption, docs/SPEC.md section 2).

The engine is :mod:`forkops.crypto`; this module finds the keys file, draws the progress bar
(stderr, only on a terminal) and prints results. Keys are shown by fingerprint only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkops.cli.common import JsonOption, KeysOption, console, cwd, err_console, print_json
from forkops.errors import BadInput

if TYPE_CHECKING:
    from forkops.crypto import Done, Progress
    from forkops.keyfile import KeyMaterial

# Files smaller than this finish before a bar would be worth drawing.
PROGRESS_MIN_BYTES = 16 << 20

ForceOption = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")]
RawOption = Annotated[
    bool,
    typer.Option(
        "--raw",
        help="Treat the input as opaque bytes: skip the SavedModel checks (for other binary protos); "
        "encrypt also reads a FIFO or device as a stream.",
    ),
]


def load_keys(explicit: Path | None, *, required: bool) -> KeyMaterial | None:
    """The keys from --keys, $FORKOPS_KEYS or the workspace (a workspace is optional here).

    With ``required=False`` a missing workspace keys file means "no key" (None); an explicit
    or $FORKOPS_KEYS file must exist and be valid either way.
    """
    from forkops import keyfile

    root: Path | None = None
    if explicit is None and not os.environ.get(keyfile.ENV_VAR):
        from forkops import workspace  # only here: it pulls in playbooks (startup time)

        with contextlib.suppress(BadInput):  # no workspace: keyfile.find says what to do
            root = workspace.find(cwd()).parent
    return keyfile.find(explicit, root, required=required)


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress | None]:
    """A rich progress callback on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():  # checked before importing rich: startup time matters here
        yield None
        return
    err = err_console()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err, transient=True,
    ) as bar:
        tasks: dict[Path, Any] = {}

        def update(path: Path, done: int, total: int) -> None:
            if total < PROGRESS_MIN_BYTES:
                return
            if path not in tasks:
                tasks[path] = bar.add_task(str(path), total=total)
            bar.update(tasks[path], completed=done)

        yield update


def _report(verb: str, src: Path, done: Done, material: KeyMaterial, *, as_json: bool) -> None:
    if as_json:
        print_json({
            "input": str(src), "output": str(done.output),
            "files": [str(p) for p in done.files], "copied": done.copied,
            "cipher": material.cipher, "key_fingerprint": material.key_fingerprint,
        })
        return
    key = f"key {material.key_fingerprint}, {material.cipher}"
    if src.is_dir():
        n = len(done.files)
        console().print(
            f"{verb} {n} saved_model.pb file{'s' if n != 1 else ''} and copied {done.copied} "
            f"other file{'s' if done.copied != 1 else ''}: {src} -> {done.output} ({key})"
        )
        for path in done.files:
            console().print(f"  {path}")
    else:
        console().print(f"{verb} {src} -> {done.output} ({key})")


def _recovered(lines: tuple[str, ...]) -> None:
    for line in lines:
        print(f"forkops: {line}", file=sys.stderr)


def _transform(verb: str, path: Path, out: Path, keys: Path | None, *, force: bool, raw: bool,
               as_json: bool) -> None:
    """``encrypt`` / ``decrypt``: load the key, run with a progress bar, report."""
    from forkops import crypto

    material = load_keys(keys, required=True)
    assert material is not None
    run = crypto.encrypt_path if verb == "encrypted" else crypto.decrypt_path
    with progress_bar() as progress:
        done = run(path, out, material, force=force, raw=raw, progress=progress)
    _recovered(done.recovered)
    _report(verb, path, done, material, as_json=as_json)


def register(app: typer.Typer) -> None:
    @app.command("encrypt")
    def encrypt(
        path: Annotated[Path, typer.Argument(metavar="PATH", help="A saved_model.pb, or a model directory.")],
        out: Annotated[Path, typer.Option("-o", "--output", metavar="OUT", help="Where to write.")],
        keys: KeysOption = None,
        force: ForceOption = False,
        raw: RawOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Encrypt a model (every version's saved_model.pb; the rest copied unchanged) into OUT.

        AES-CBC with PKCS#7, byte-compatible with the fork's decryption and `openssl enc`.
        """
        _transform("encrypted", path, out, keys, force=force, raw=raw, as_json=as_json)

    @app.command("decrypt")
    def decrypt(
        path: Annotated[
            Path, typer.Argument(metavar="PATH", help="An encrypted saved_model.pb, or a model directory.")
        ],
        out: Annotated[Path, typer.Option("-o", "--output", metavar="OUT", help="Where to write.")],
        keys: KeysOption = None,
        force: ForceOption = False,
        raw: RawOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Decrypt a model into OUT; a wrong key (bad padding) is refused and nothing is written."""
        _transform("decrypted", path, out, keys, force=force, raw=raw, as_json=as_json)

    @app.command("inspect")
    def inspect(
        path: Annotated[Path, typer.Argument(metavar="PATH", help="A file, or a model directory.")],
        keys: KeysOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Say what each saved_model.pb is (plaintext SavedModel / ciphertext / unknown), its
        size, and, when a key is available, whether it decrypts with it."""
        from forkops import crypto

        material = load_keys(keys, required=False)
        _recovered(crypto.recover_output(path))  # a killed `encrypt --force` left PATH half-swapped
        with progress_bar() as progress:
            reports = crypto.inspect_path(path, material, progress=progress)
        if as_json:
            print_json({
                "path": str(path),
                "key": None if material is None else {
                    "fingerprint": material.key_fingerprint, "cipher": material.cipher,
                    "source": str(material.source) if material.source else None,
                },
                "files": [
                    {"path": str(r.path), "kind": r.kind.value, "size": r.size, "decrypts": r.decrypts}
                    for r in reports
                ],
            })
            return
        out = console()
        if material is None:
            out.print("no key (pass --keys FILE to check whether ciphertext decrypts)")
        else:
            out.print(f"key {material.key_fingerprint} ({material.cipher}) from {material.source}")
        for r in reports:
            line = f"{r.path}: {r.kind.label}, {r.size} bytes"
            if r.decrypts is not None and material is not None:
                verdict = "decrypts" if r.decrypts else "does NOT decrypt"
                line += f"; {verdict} with key {material.key_fingerprint}"
            out.print(line, markup=False)
