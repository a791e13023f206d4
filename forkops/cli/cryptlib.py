"""CLI command ``cryptlib build``: the fork's decryption library with the key compiled in.

The engine is :mod:`forkops.cryptlib`; the key is found like every other command finds it and is
shown by fingerprint only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forkops.cli.common import JsonOption, KeysOption, console, print_json
from forkops.cli.crypto import load_keys


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="cryptlib", no_args_is_help=True, rich_markup_mode=None,
        help="The decryption library (libcryptfile.so) the TensorFlow fork dlopen()s.",
    )

    @group.command("build")
    def build(
        out: Annotated[
            Path, typer.Option("-o", "--output", metavar="FILE", help="Where to write the library.")
        ] = Path("libcryptfile.so"),
        keys: KeysOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Compile libcryptfile.so (CBCMode_Decrypt/CBCMode_Encrypt, AES-CBC on OpenSSL) with the key.

        Needs gcc and libssl-dev. The key goes to the compiler through memory, never a command
        line; the library is written atomically, mode 0600 (it holds the key).
        """
        from forkops import cryptlib

        material = load_keys(keys, required=True)
        assert material is not None
        cryptlib.build(material, out)
        if as_json:
            print_json({"output": str(out), "cipher": material.cipher, "key_fingerprint": material.key_fingerprint})
            return
        console().print(f"built {out} (key {material.key_fingerprint}, {material.cipher})", markup=False)

    app.add_typer(group, name="cryptlib")
