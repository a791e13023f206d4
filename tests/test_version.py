from __future__ import annotations

import pytest

from forkops.errors import BadInput
from forkops.version import Version, VersionBound, nearest, parse_name, pattern_regex


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.18.0", "2.18.0"), ("v2.4.0", "2.4.0"), ("2.4.0-rc1", "2.4.0-rc1"), ("v2.4.0rc0", "2.4.0-rc0"),
     (" 2.11.1 ", "2.11.1")],
)
def test_parse_normalizes(text: str, expected: str) -> None:
    assert str(Version.parse(text)) == expected


@pytest.mark.parametrize("text", ["2.18", "2.18.0.1", "x2.18.0", "2.18.0-beta", "", "2.18.0-rc", "r2.4"])
def test_parse_rejects_with_expected_form(text: str) -> None:
    with pytest.raises(BadInput, match=r"expected X\.Y\.Z or X\.Y\.Z-rcN"):
        Version.parse(text)


def test_ordering_puts_rcs_before_release() -> None:
    names = ["2.5.0", "2.4.0", "2.4.0-rc1", "2.11.0", "2.4.0-rc0", "2.4.1", "2.10.0"]
    ordered = [str(v) for v in sorted(Version.parse(n) for n in names)]
    assert ordered == ["2.4.0-rc0", "2.4.0-rc1", "2.4.0", "2.4.1", "2.5.0", "2.10.0", "2.11.0"]
    assert Version.parse("2.4.0-rc1").release == Version.parse("2.4.0")


def test_render_and_parse_names() -> None:
    v = Version.parse("2.18.0-rc1")
    assert v.render("v{version}") == "v2.18.0-rc1"
    assert v.render("b{version}") == "b2.18.0-rc1"
    assert parse_name("v{version}", "v2.18.0") == Version.parse("2.18.0")
    assert parse_name("v{version}", "2.18.0") is None
    assert parse_name("{version}", "r2.11") is None  # Serving's odd tags are not releases
    assert parse_name("{version}", "2.11.1") == Version.parse("2.11.1")
    assert parse_name("tf{version}", "tf2.4.0") == Version.parse("2.4.0")
    with pytest.raises(BadInput):
        pattern_regex("v{version}{version}")


def test_bounds_are_inclusive_on_their_precision() -> None:
    since, until = VersionBound.parse("2.11"), VersionBound.parse("2.14")
    assert Version.parse("2.11.0").in_range(since, until)
    assert Version.parse("2.14.3").in_range(since, until)
    assert Version.parse("2.11.0-rc0").in_range(since, until)
    assert not Version.parse("2.10.9").in_range(since, until)
    assert not Version.parse("2.15.0").in_range(since, until)
    assert Version.parse("2.19.0").in_range(VersionBound.parse("2.19"), None)
    with pytest.raises(BadInput):
        VersionBound.parse("2")


def test_nearest_suggests_neighbouring_releases() -> None:
    have = [Version.parse(x) for x in ["2.4.0-rc0", "2.4.0", "2.4.1", "2.5.1", "2.11.0", "2.5.1-rc0"]]
    assert [str(v) for v in nearest(Version.parse("2.5.0"), have)] == ["2.4.0", "2.4.1", "2.5.1"]
    assert str(nearest(Version.parse("2.5.1-rc1"), have, 1)[0]) == "2.5.1-rc0"
