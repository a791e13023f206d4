"""Pin rules (playbook ``[[pins]]``): Serving's WORKSPACE names the TensorFlow fork's branch.

A pin is the ``value`` group of ``pattern`` in ``file``. After an upgrade to X.Y.Z it must read
``value`` rendered for X.Y.Z (``{fork_branch}`` -> ``bX.Y.Z``, ``{version}`` -> ``X.Y.Z``).
Only the value group's span is replaced; every other byte of the file stays as it was.

The pin's ``name`` is the Bazel repository it pins (``org_tensorflow``). When the pattern
matches nothing, the rule of that name tells why: a ``local_repository`` (or a
``git_repository`` pinned by ``commit``/``tag``, without ``branch``) has no branch to move,
which docs/SPEC.md allows: the pin is skipped with a reason. Any other shape (no such rule,
upstream's ``tensorflow_http_archive``) means the fork no longer builds against its TensorFlow
fork: the pin fails and a person decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forkops.playbook import Pin, Playbook
from forkops.version import Version

_NO_BRANCH_RULES = ("local_repository", "new_local_repository")
_GIT_RULES = ("git_repository", "new_git_repository")


@dataclass(frozen=True)
class PinEdit:
    """What applying one pin rule to one file's text gives."""

    pin: Pin
    found: str | None  # the value the file holds now (None: the rule matches nothing)
    wanted: str
    text: str | None  # the new file text (None when nothing matched or nothing changes)
    skip: str | None = None  # why there is nothing to pin (None: there is, or it is missing)
    rule: str | None = None  # the kind of the rule named like the pin, when it has no match

    @property
    def ok(self) -> bool:
        return self.found is not None or self.skip is not None

    @property
    def changed(self) -> bool:
        return self.text is not None


def wanted_value(pb: Playbook, pin: Pin, version: Version) -> str:
    return pin.value.replace("{fork_branch}", str(pb.fork_branch_name(version))).replace(
        "{version}", str(version))


def rule_named(text: str, name: str) -> tuple[str, str] | None:
    """(rule kind, attribute text) of the call ``kind(..., name = "NAME", ...)`` in a Bazel
    file, or None. Attribute values holding parentheses are not followed (None then)."""
    m = re.search(r'(?P<kind>[A-Za-z_]\w*)\s*\((?P<body>[^()]*?\bname\s*=\s*"' + re.escape(name)
                  + r'"[^()]*)\)', text)
    return (m.group("kind"), m.group("body")) if m else None


def apply(pb: Playbook, pin: Pin, version: Version, text: str) -> PinEdit:
    """Point the pin in ``text`` at ``version`` (pure: the caller writes and commits)."""
    want = wanted_value(pb, pin, version)
    m = pin.regex.search(text)
    if m is None:
        rule = rule_named(text, pin.name)
        kind = rule[0] if rule else None
        if rule is not None and kind in _NO_BRANCH_RULES:
            return PinEdit(pin, None, want, None, skip=f"{pin.name} is a {kind}; nothing to pin", rule=kind)
        if rule is not None and kind in _GIT_RULES and not re.search(r"\bbranch\s*=", rule[1]):
            by = "commit" if re.search(r"\bcommit\s*=", rule[1]) else "tag" if re.search(
                r"\btag\s*=", rule[1]) else "something other than a branch"
            return PinEdit(pin, None, want, None, rule=kind,
                           skip=f"{pin.name} is a {kind} pinned by {by}; nothing to pin "
                                f"(update it by hand if it must follow {want})")
        return PinEdit(pin, None, want, None, rule=kind)
    found = m.group("value")
    if found == want:
        return PinEdit(pin, found, want, None)
    start, end = m.span("value")
    return PinEdit(pin, found, want, text[:start] + want + text[end:])
