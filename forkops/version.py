"""Release versions (``2.18.0``, ``2.18.0-rc1``) and their tag and branch names.

A ``Version`` orders rcs before the release they precede. Names are rendered through
playbook patterns containing ``{version}``, e.g. ``v{version}`` or ``b{version}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from forkops.errors import BadInput

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-?rc(\d+))?")
_VERSION_BODY = r"\d+\.\d+\.\d+(?:-rc\d+)?"


class TagName(str):
    """An upstream tag name, e.g. ``v2.18.0`` (always resolved as ``refs/tags/<name>``)."""

    @property
    def ref(self) -> str:
        return f"refs/tags/{self}"


class BranchName(str):
    """A local branch short name, e.g. ``b2.18.0`` or ``tf2.18.0``."""

    @property
    def ref(self) -> str:
        return f"refs/heads/{self}"


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    rc: int | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``X.Y.Z`` or ``X.Y.Z-rcN``; a leading ``v`` is accepted. Raises BadInput."""
        m = _VERSION_RE.fullmatch(text.strip())
        if not m:
            raise BadInput(
                f"malformed version {text!r}: expected X.Y.Z or X.Y.Z-rcN (e.g. 2.18.0, 2.18.0-rc1)"
            )
        major, minor, patch, rc = m.groups()
        return cls(int(major), int(minor), int(patch), None if rc is None else int(rc))

    @classmethod
    def try_parse(cls, text: str) -> Version | None:
        try:
            return cls.parse(text)
        except BadInput:
            return None

    @property
    def is_rc(self) -> bool:
        return self.rc is not None

    @property
    def release(self) -> Version:
        """The final release this version belongs to (drops the rc)."""
        return Version(self.major, self.minor, self.patch)

    def _key(self) -> tuple[int, int, int, int]:
        # An rc sorts before its release: 2.4.0-rc1 < 2.4.0.
        return (self.major, self.minor, self.patch, self.rc if self.rc is not None else 1 << 30)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        return base if self.rc is None else f"{base}-rc{self.rc}"

    def render(self, pattern: str) -> str:
        """Render a name pattern such as ``v{version}`` or ``b{version}``."""
        return pattern.replace("{version}", str(self))

    def in_range(self, since: VersionBound | None, until: VersionBound | None) -> bool:
        """Inclusive range test on bounds like ``2.11`` (any 2.11.x) or ``2.11.2``."""
        if since is not None and since.compare(self) > 0:
            return False
        return not (until is not None and until.compare(self) < 0)


@dataclass(frozen=True)
class VersionBound:
    """A ``X.Y`` or ``X.Y.Z`` bound used by playbooks (``since``/``until``), rcs ignored."""

    parts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> VersionBound:
        if not re.fullmatch(r"\d+\.\d+(?:\.\d+)?", text.strip()):
            raise BadInput(f"malformed version bound {text!r}: expected X.Y or X.Y.Z")
        return cls(tuple(int(p) for p in text.strip().split(".")))

    def compare(self, version: Version) -> int:
        """Sign of (bound - version) on the bound's precision."""
        mine = self.parts
        theirs = (version.major, version.minor, version.patch)[: len(mine)]
        return (mine > theirs) - (mine < theirs)

    def __str__(self) -> str:
        return ".".join(str(p) for p in self.parts)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a name pattern (``v{version}``) into a regex with a ``version`` group."""
    if pattern.count("{version}") != 1:
        raise BadInput(f"name pattern {pattern!r} must contain {{version}} exactly once")
    before, after = pattern.split("{version}")
    return re.compile(re.escape(before) + f"(?P<version>{_VERSION_BODY})" + re.escape(after))


def parse_name(pattern: str, name: str) -> Version | None:
    """The version a tag or branch name encodes under ``pattern``, or None."""
    m = pattern_regex(pattern).fullmatch(name)
    return Version.parse(m.group("version")) if m else None


def nearest(wanted: Version, available: list[Version], count: int = 3) -> list[Version]:
    """The ``count`` available versions closest to ``wanted`` (for 'did you mean' lines).

    Release candidates are only suggested for a wanted release candidate."""
    pool = [v for v in set(available) if wanted.is_rc or not v.is_rc] or list(set(available))

    def distance(v: Version) -> tuple[int, bool, int]:
        linear = (v.major - wanted.major) * 1_000_000 + (v.minor - wanted.minor) * 1000 + v.patch - wanted.patch
        return abs(linear), v.is_rc != wanted.is_rc, abs((v.rc or 0) - (wanted.rc or 0))

    return sorted(sorted(pool, key=distance)[:count])
