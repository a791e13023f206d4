from __future__ import annotations

from pathlib import Path

import pytest

from forkops import playbook
from forkops.errors import BadInput, ConfigError
from forkops.version import Version
from tests.clihelp import run_cli


def test_builtin_playbooks_load() -> None:
    tf = playbook.load("tensorflow")
    assert tf.upstream_remote == "tf"
    assert str(tf.tag(Version.parse("2.18.0-rc1"))) == "v2.18.0-rc1"
    assert str(tf.fork_branch_name(Version.parse("2.18.0"))) == "b2.18.0"
    assert str(tf.upstream_branch_name(Version.parse("2.18.0"))) == "tf2.18.0"
    assert {s.encoding for s in tf.key_sites} == {"c-string", "c-bytes", "bazel-define"}
    assert not tf.warnings
    sv = playbook.load("serving")
    assert str(sv.tag(Version.parse("2.18.0"))) == "2.18.0"
    assert sv.pins and sv.build and sv.smoke
    assert sv.version_of_tag("r2.11") is None


@pytest.mark.parametrize(
    ("version", "path"),
    [
        ("2.4.0", "tensorflow/core/platform/env.cc"),
        ("2.10.1", "tensorflow/core/platform/env.cc"),
        ("2.11.0", "tensorflow/tsl/platform/env.cc"),
        ("2.14.0", "tensorflow/tsl/platform/env.cc"),
        ("2.15.0", "third_party/xla/third_party/tsl/tsl/platform/env.cc"),
        ("2.18.0", "third_party/xla/third_party/tsl/tsl/platform/env.cc"),
        ("2.19.0", "third_party/xla/xla/tsl/platform/env.cc"),
        ("2.21.0-rc0", "third_party/xla/xla/tsl/platform/env.cc"),
    ],
)
def test_tensorflow_anchor_locations_follow_real_history(version: str, path: str) -> None:
    (anchor,) = playbook.load("tensorflow").anchors
    assert anchor.expected_paths(Version.parse(version)) == [path]


BROKEN = """\
name = 3
description = "broken on purpose"
surprise = true

[upstream]
remote = "bad remote"
tag = "v-no-placeholder"

[branches]
fork = "b{version}"
upstream = "b{version}"

[[anchors]]
name = "a"
symbol = "ReadBinaryProto"
definition = "ReadBinaryProto("
must_contain = "decrypt"

[[key_sites]]
name = "k"
paths = ["x.cc"]
value = "salt"
encoding = "c-bytes"
pattern = 'key = (\\{[^}]*\\})'
"""


def test_broken_playbook_reports_every_problem_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        playbook.load_file(path, label="broken.toml")
    problems = info.value.problems
    expected_keys = ["name", "upstream.remote", "upstream.tag", "branches", "anchors[0].definition",
                     "key_sites[0].value", "key_sites[0].pattern"]
    for key in expected_keys:
        assert any(p.startswith(f"broken.toml: {key}: ") for p in problems), (key, problems)
    assert len(problems) == len(expected_keys)


def test_unknown_keys_warn_but_load(tmp_path: Path) -> None:
    text = playbook.builtin_path("serving").read_text() + "\n[smoke.extra]\nfoo = 1\n"
    path = tmp_path / "pb.toml"
    path.write_text(text.replace('name = "serving"', 'name = "serving"\ncolour = "blue"'))
    pb = playbook.load_file(path, label="pb.toml")
    assert "pb.toml: colour: unknown key, ignored" in pb.warnings
    assert "pb.toml: smoke.extra: unknown key, ignored" in pb.warnings


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        playbook.load_file(path)
    with pytest.raises(BadInput, match="not a built-in playbook"):
        playbook.load("nope")


def test_cli_show_and_validate(tmp_path: Path) -> None:
    res = run_cli("playbook", "show", "serving")
    assert res.code == 0 and "org_tensorflow" in res.out
    res = run_cli("playbook", "show", "tensorflow", "--json")
    assert res.code == 0 and '"upstream_tag": "v{version}"' in res.out
    bad = tmp_path / "broken.toml"
    bad.write_text(BROKEN)
    res = run_cli("playbook", "validate", str(bad), str(playbook.builtin_path("serving")))
    assert res.code == 2
    assert res.err.count("forkops: error:") == 7
    assert "Traceback" not in res.err
    assert ": ok (" in res.out
    res = run_cli("playbook", "validate", str(playbook.builtin_path("tensorflow")))
    assert res.code == 0
