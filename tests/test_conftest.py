"""The hermetic seal itself: forkops writes below the real home folder are refused and recorded,
at any depth; writes to the test's HOME are not."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from forkops.fsutil import write_atomic
from tests.conftest import REAL_HOME, HomeGuard, WroteToRealHome


@pytest.mark.parametrize("where", ["", "deep/er/"])
def test_forkops_write_below_the_real_home_is_refused(home_guard: HomeGuard, where: str) -> None:
    probe = REAL_HOME / f".forkops-probe-{uuid.uuid4().hex}"
    with pytest.raises(WroteToRealHome):
        write_atomic(probe / where / "keys.toml", "secret")
    assert not probe.exists()  # refused before anything was made
    assert home_guard.violations and str(probe) in home_guard.violations[0]
    home_guard.violations.clear()  # this test's own violation is the expected one


def test_forkops_writes_to_the_test_home_pass(home_guard: HomeGuard) -> None:
    target = Path.home() / ".config" / "forkops" / "state.json"
    write_atomic(target, "{}")
    assert target.read_text() == "{}"
    assert Path.home() != REAL_HOME
    assert home_guard.violations == []


def test_reads_of_the_real_home_are_not_writes(home_guard: HomeGuard) -> None:
    from forkops import workspace

    with pytest.raises(Exception, match=r"no forkops\.toml"):
        workspace.find(REAL_HOME)
    assert home_guard.violations == []
