"""Pin rules (playbook ``[[pins]]``): Serving's WORKSPACE names the TensorFlow fork's branch.

A pin is the ``value`` group of ``pattern`` in ``file``. After an upgrade to X.Y.Z it must read
``value`` rendered for X.Y.Z (``{fork_branch}`` -> ``bX.Y.Z``, ``{version}`` -> ``X.Y.Z``).
Only the value group's span is replaced; every other byte of the file stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from forkops.playbook import Pin, Playbook
from forkops.version import Version


@dataclass(frozen=True)
class PinEdit:
    """What applying one pin rule to one file's text gives."""

    pin: Pin
    found: str | None  # the value the file holds now (None: the rule matches nothing)
    wanted: str
    text: str | None  # the new file text (None when nothing matched or nothing changes)

    @property
    def ok(self) -> bool:
        return self.found is not None

    @property
    def changed(self) -> bool:
        return self.text is not None


def wanted_value(pb: Playbook, pin: Pin, version: Version) -> str:
    return pin.value.replace("{fork_branch}", str(pb.fork_branch_name(version))).replace(
        "{version}", str(version))


def apply(pb: Playbook, pin: Pin, version: Version, text: str) -> PinEdit:
    """Point the pin in ``text`` at ``version`` (pure: the caller writes and commits)."""
    want = wanted_value(pb, pin, version)
    m = pin.regex.search(text)
    if m is None:
        return PinEdit(pin, None, want, None)
    found = m.group("value")
    if found == want:
        return PinEdit(pin, found, want, None)
    start, end = m.span("value")
    return PinEdit(pin, found, want, text[:start] + want + text[end:])
