"""`forkops demo` is the Quick start's main job: it must run end to end, offline, inside DIR."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end_inside_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    outside = tmp_path / "outside-tmp"
    outside.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TMPDIR": str(outside),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"), "COLUMNS": "200"}
    (tmp_path / "gitconfig").write_text("[user]\n\tname = Demo\n\temail = demo@example.com\n")
    proc = subprocess.run([sys.executable, "-m", "forkops", "demo", str(root)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    expectations = (
        "stopped at commit 3/5",
        "re-applied the patch to third_party/xla/third_party/tsl/tsl/platform/env.cc",
        "pin org_tensorflow: b2.4.0 -> b2.18.0",
        "refusing the commit",
        "ciphertext",
        "docker build --file",
        "tensorflow: playbook tensorflow-dlopen: ReadBinaryProto in tensorflow/core/platform/env.cc on b2.4.0 "
        "calls CBCMode_Decrypt",
        "replaced ADD ${ENCRYPT_FILE_URL} /opt/lib/libcryptfile.so",
        "--secret id=forkops_cryptfile_key,src=",
        "All steps ended as expected",
    )
    flat = " ".join((out + proc.stderr).split())
    for expected in expectations:
        assert expected in flat, expected
    assert list(outside.iterdir()) == []  # scratch space stayed inside DIR
    key_text = (root / "workspace" / "keys.toml").read_text()
    key = key_text.split('key = "')[1].split('"')[0]
    assert key not in out and key not in proc.stderr
    assert key.encode().hex() not in out
    # The upgrade really happened in the sandbox's clones.
    serving = root / "workspace" / "serving"
    log = subprocess.run(["git", "-C", str(serving), "log", "--format=%s", "tf2.18.0..b2.18.0"],
                         capture_output=True, text=True, env=env).stdout
    assert log.splitlines()[0] == "Pin org_tensorflow to b2.18.0 (was b2.4.0)"


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "forkops", "demo", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("forkops: error: ") and "not empty" in proc.stderr
    assert (tmp_path / "x").read_text() == "keep me"
