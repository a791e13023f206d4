"""Every config file goes through one TOML loader: malformed bytes are bad input (exit 2, one line).

forkops.toml, keys.toml and playbooks each get invalid UTF-8, nesting deeper than Python's parser
can recurse (10,000 arrays, 10,000 inline tables) and a FIFO, through the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkops.errors import BadInput, ConfigError
from forkops.tomlcheck import load_toml
from tests.clihelp import run_cli

BAD_BODIES = {
    "utf8": b'[model]\ncipher = "aes-128-cbc"\nkey = "My123sjs\xff\xfejsd2345"\n',
    "arrays": b"a = " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
    "tables": b"a = " + b"{b = " * 10_000 + b"1" + b"}" * 10_000 + b"\n",
}


def config_command(kind: str, folder: Path, path: Path) -> list[str]:
    """A command that reads ``path`` as the config file ``kind``."""
    if kind == "forkops.toml":
        return ["-C", str(folder), "status"]
    if kind == "keys.toml":
        return ["inspect", "--keys", str(path), str(path)]
    return ["playbook", "validate", str(path)]


@pytest.mark.parametrize("body", sorted(BAD_BODIES))
@pytest.mark.parametrize("kind", ["forkops.toml", "keys.toml", "playbook.toml"])
def test_malformed_config_is_one_line_exit_2(tmp_path: Path, kind: str, body: str) -> None:
    path = tmp_path / kind
    path.write_bytes(BAD_BODIES[body])
    path.chmod(0o600)
    result = run_cli(*config_command(kind, tmp_path, path))
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forkops: error: {path.name if kind == 'forkops.toml' else path}")
    assert "not valid TOML" in lines[0]
    assert "My123sjs" not in result.err  # a keys file's bytes are never echoed


@pytest.mark.parametrize("kind", ["forkops.toml", "keys.toml", "playbook.toml"])
def test_fifo_config_does_not_hang(tmp_path: Path, kind: str) -> None:
    path = tmp_path / kind
    os.mkfifo(path, 0o600)
    # A subprocess with a timeout: a hang must fail the test, not freeze the suite.
    result = subprocess.run([sys.executable, "-m", "forkops", *config_command(kind, tmp_path, path)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_load_toml_messages(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b"ok = 1\nbad = \xc3\x28\n")
    with pytest.raises(ConfigError, match=r"x\.toml: not valid TOML: invalid UTF-8 at byte 13"):
        load_toml(path, "x.toml")
    path.write_bytes(b"a = " + b"[" * 200 + b"]" * 200 + b"\n")  # deep, but within reach: parsed
    assert isinstance(load_toml(path)["a"], list)
    with pytest.raises(BadInput, match=r"Is a directory|not a regular file"):
        load_toml(tmp_path)
    with pytest.raises(BadInput, match="no such file"):
        load_toml(tmp_path / "missing.toml")
