from __future__ import annotations

import re
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


def test_roles_are_declared_by_the_builtin_playbooks() -> None:
    assert playbook.load("tensorflow").role == "tensorflow"
    assert playbook.load("tensorflow-dlopen").role == "tensorflow"
    sv = playbook.load("serving")
    assert sv.role == "serving" and sv.build is not None and sv.build.builds_against == "tensorflow"


def test_dlopen_playbook_has_no_key_sites_and_names_the_library() -> None:
    pb = playbook.load("tensorflow-dlopen")
    assert pb.key_sites == () and not pb.warnings
    assert pb.library == playbook.LibrarySpec("/opt/lib/libcryptfile.so", "CBCMode_Decrypt")
    (anchor,) = pb.anchors
    assert anchor.symbol == "ReadBinaryProto" and re.search(anchor.must_contain, "CBCMode_Decrypt(")
    assert not re.search(anchor.must_contain, "decryptCBC(encrypted, key, sizeof(key), iv, &plain)")
    # The real locations of ReadBinaryProto, as in the key-site playbook.
    assert anchor.locations == playbook.load("tensorflow").anchors[0].locations


@pytest.mark.parametrize(("extra", "problem"), [
    ('role = "crypt"\n', "role: 'crypt' is not one of tensorflow, serving"),
    ('[library]\npath = "opt/lib/x.so"\n', "library.path: 'opt/lib/x.so' must be an absolute path in the image"),
    ('[build]\nsource_fetch = ["^RUN"]\nbuilds_against = "serving2"\n',
     "build.builds_against: 'serving2' is not one of tensorflow, serving"),
    ('[build]\nsource_fetch = ["^RUN"]\nlibrary_install = ["(unclosed"]\n',
     "build.library_install[0]: invalid regular expression"),
])
def test_role_and_library_are_validated(tmp_path: Path, extra: str, problem: str) -> None:
    path = tmp_path / "pb.toml"
    body = 'name = "x"\n' + (extra if extra.startswith("role") else "") + '[upstream]\ntag = "v{version}"\n' + (
        "" if extra.startswith("role") else extra)
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        playbook.load_file(path, label="pb.toml")
    assert any(p.startswith(f"pb.toml: {problem}") for p in err.value.problems), err.value.problems


def test_a_source_checkout_uses_its_own_playbooks() -> None:
    assert playbook.builtin_path("serving") == Path(playbook.__file__).resolve().parents[1] / "playbooks/serving.toml"
