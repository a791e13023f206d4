"""Playbooks: per-fork data (names, anchors, key sites, pins, build and smoke settings).

Built-in playbooks ship in ``forkops.playbooks`` (the repository's ``playbooks/`` folder); a
user playbook is any TOML file path. Loading validates everything and reports every problem
as ``file: key: problem`` in one ConfigError.
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal, cast

from forkops.errors import BadInput
from forkops.secrets.encodings import NAMES as ENCODINGS
from forkops.tomlcheck import Checker, Table, load_toml
from forkops.version import BranchName, TagName, Version, VersionBound, parse_name
from forkops.workspace import BUILTIN_PLAYBOOKS

REGEX_SECONDS = 2.0  # a key-site pattern that needs longer on one file is refused
# What a fork is to the others: `forkops build` stages the "serving" fork and builds it against
# the fork whose playbook has the role its [build] names (builds_against). Declared, never guessed
# (a third fork without a role, or with another playbook, changes nothing for these two).
Role = Literal["tensorflow", "serving"]
ROLES: tuple[Role, ...] = ("tensorflow", "serving")
KEY_VALUES = ("key", "iv")
DRIFT_LANGUAGES = ("c++", "starlark")


@dataclass(frozen=True)
class AnchorLocation:
    """Where upstream defines the anchor's symbol for a range of versions (inclusive)."""

    path: str
    since: VersionBound | None = None
    until: VersionBound | None = None


@dataclass(frozen=True)
class Anchor:
    """After a rebase, the function defining ``symbol`` must match ``must_contain``.

    ``definition`` is a regex matching the line that defines the symbol (so a call site
    or a declaration is not mistaken for it); the function body is the brace-balanced
    block that follows.
    """

    name: str
    symbol: str
    definition: str
    must_contain: str
    message: str = ""
    locations: tuple[AnchorLocation, ...] = ()

    def expected_paths(self, version: Version) -> list[str]:
        return [loc.path for loc in self.locations if version.in_range(loc.since, loc.until)]


@dataclass(frozen=True)
class KeySite:
    """A place in the fork's tree that holds the key or the IV in some encoding.

    ``pattern`` matches the whole assignment; its ``value`` group is what gets replaced.
    Every existing path of ``paths`` that matches is a site instance.
    """

    name: str
    paths: tuple[str, ...]
    value: str  # "key" | "iv"
    encoding: str  # one of ENCODINGS
    pattern: str

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.MULTILINE)

    def matches(self, text: str, where: str) -> list[re.Match[str]]:
        """Every match in ``text``, within :data:`REGEX_SECONDS`; a pattern that backtracks
        longer (catastrophically) is BadInput naming the site and ``where``."""
        return bounded_finditer(self.regex, text, f"key site {self.name!r} on {where}")


class _Timeout(Exception):
    pass


def bounded_finditer(regex: re.Pattern[str], text: str, what: str) -> list[re.Match[str]]:
    """``list(regex.finditer(text))`` bounded by :data:`REGEX_SECONDS` of wall time. ``re``
    checks for signals while it backtracks, so a SIGALRM timer interrupts it (main thread
    only: elsewhere the search runs unbounded, and forkops' commands run in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return list(regex.finditer(text))

    def expire(_signum: int, _frame: object) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, REGEX_SECONDS)
    try:
        return list(regex.finditer(text))
    except _Timeout:
        raise BadInput(f"{what}: the pattern ran longer than {REGEX_SECONDS:g} s (it backtracks "
                       "catastrophically); simplify it") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file inside a repository (or staging folder); None if it can:
    relative, '/'-separated, normalised (no '.', '..' or empty parts)."""
    if not path:
        return "is empty"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or path.startswith("~"):
        return f"{path!r} must be a relative path inside the repository"
    if "\\" in path:
        return f"{path!r} must use '/' separators"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or str(PurePosixPath(path)) != path:
        return f"{path!r} must be normalised and stay inside the repository (no '.', '..' or '//')"
    return None


@dataclass(frozen=True)
class Pin:
    """Serving's pin of TensorFlow: the ``value`` group of ``pattern`` in ``file`` must become
    ``value`` rendered for the new version (``{fork_branch}``, ``{version}``)."""

    name: str
    file: str
    pattern: str
    value: str = "{fork_branch}"

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class DriftSpec:
    """``[drift]``: which of the fork's files are read for API drift (forkops.drift).

    ``paths`` are glob patterns (``*`` also matches ``/``; a pattern ending in ``/`` is a
    folder); ``paths = []`` turns drift off. Without the table: every file of ``languages``."""

    paths: tuple[str, ...] = ("*",)
    languages: tuple[str, ...] = DRIFT_LANGUAGES

    @property
    def enabled(self) -> bool:
        return bool(self.paths and self.languages)


@dataclass(frozen=True)
class BuildSpec:
    dockerfile_dir: str = "tensorflow_serving/tools/docker"
    devel: str = "Dockerfile.devel"
    serving: str = "Dockerfile"
    devel_gpu: str = "Dockerfile.devel-gpu"
    serving_gpu: str = "Dockerfile.gpu"
    source_fetch: tuple[str, ...] = ()
    source_replacement: str = "ADD . /tensorflow-serving"
    workspace_file: str = "WORKSPACE"
    tf_repo_name: str = "org_tensorflow"
    tensorflow_dir: str = "tensorflow"
    image: str = "tensorflow-serving"
    builds_against: Role = "tensorflow"  # the role of the fork org_tensorflow points at
    # Instructions of the serving Dockerfiles that install a prebuilt decryption library (the
    # public fork downloads one with somebody's key in it); `forkops build` replaces them by a
    # copy from its own library stage when the TensorFlow playbook declares [library].
    library_install: tuple[str, ...] = (r"^(?:ADD|COPY)\s+(?:--\S+\s+)*\S+\s+/opt/lib/libcryptfile\.so$",)


@dataclass(frozen=True)
class LibrarySpec:
    """Shape (b) of the decryption patch: ReadBinaryProto ``dlopen``s ``path`` and calls
    ``symbol``; the key is compiled into that library at build time, never into the fork."""

    path: str = "/opt/lib/libcryptfile.so"
    symbol: str = "CBCMode_Decrypt"


@dataclass(frozen=True)
class SmokeSpec:
    model_name: str = "half_plus_two"
    rest_port: int = 8501
    instances: tuple[float, ...] = (1.0, 2.0, 5.0)
    expected: tuple[float, ...] = (2.5, 3.0, 4.5)
    tolerance: float = 1e-6
    gpus_all_since: VersionBound | None = None


@dataclass(frozen=True)
class Playbook:
    name: str
    source: str  # "builtin:NAME" or a file path
    description: str
    upstream_remote: str
    upstream_tag: str  # pattern with {version}
    fork_branch: str
    upstream_branch: str
    anchors: tuple[Anchor, ...] = ()
    key_sites: tuple[KeySite, ...] = ()
    pins: tuple[Pin, ...] = ()
    build: BuildSpec | None = None
    smoke: SmokeSpec | None = None
    role: Role | None = None
    library: LibrarySpec | None = None
    drift: DriftSpec = DriftSpec()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def tag(self, version: Version) -> TagName:
        return TagName(version.render(self.upstream_tag))

    def fork_branch_name(self, version: Version) -> BranchName:
        return BranchName(version.render(self.fork_branch))

    def upstream_branch_name(self, version: Version) -> BranchName:
        return BranchName(version.render(self.upstream_branch))

    def version_of_tag(self, tag: str) -> Version | None:
        return parse_name(self.upstream_tag, tag)

    def version_of_fork_branch(self, branch: str) -> Version | None:
        return parse_name(self.fork_branch, branch)


def builtin_path(name: str) -> Path:
    """The shipped playbook file. In a source checkout (``playbooks/`` beside the ``forkops``
    package) that folder, so the checkout's own playbooks are used even when another copy of
    forkops is installed; installed, the package data (``forkops.playbooks``)."""
    checkout = Path(__file__).resolve().parent.parent / "playbooks" / f"{name}.toml"
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("forkops.playbooks").joinpath(f"{name}.toml")))


def load(ref: str, *, base_dir: Path | None = None) -> Playbook:
    """Load a playbook by built-in name or by path (relative paths against ``base_dir``)."""
    if ref in BUILTIN_PLAYBOOKS:
        return load_file(builtin_path(ref), label=f"playbooks/{ref}.toml", source=f"builtin:{ref}")
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise BadInput(
            f"playbook {ref!r}: not a built-in playbook ({', '.join(BUILTIN_PLAYBOOKS)}) and no such file"
        )
    return load_file(path, label=ref, source=str(path))


def load_file(path: Path, *, label: str | None = None, source: str | None = None) -> Playbook:
    name = label or str(path)
    data = load_toml(path, name)
    checker = Checker(name)
    top = checker.table(data, "")
    pb_name = top.str("name", required=True)
    description = top.str("description", "")
    role = cast("Role | None", top.choice("role", ROLES, "") or None) if top.has("role") else None

    upstream = top.sub("upstream", required=True)
    remote = upstream.str("remote", "tf")
    if remote and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", remote):
        checker.problem(upstream.key("remote"), f"{remote!r} is not a valid git remote name")
    tag = upstream.pattern("tag")
    upstream.finish()

    branches = top.sub("branches")
    fork_branch = branches.pattern("fork", "b{version}")
    upstream_branch = branches.pattern("upstream", "tf{version}")
    branches.finish()
    if fork_branch and fork_branch == str(upstream_branch):
        checker.problem("branches", "fork and upstream branch patterns must differ")

    anchors = tuple(_anchor(t) for t in top.subs("anchors"))
    sites = tuple(_key_site(t) for t in top.subs("key_sites"))
    pins = tuple(_pin(t) for t in top.subs("pins"))
    build = _build(top.sub("build")) if top.has("build") else None
    smoke = _smoke(top.sub("smoke")) if top.has("smoke") else None
    library = _library(top.sub("library")) if top.has("library") else None
    drift = _drift(top.sub("drift")) if top.has("drift") else DriftSpec()
    top.finish()
    _unique(checker, "anchors", [a.name for a in anchors])
    _unique(checker, "key_sites", [s.name for s in sites])
    checker.raise_if_any()
    return Playbook(
        name=pb_name,
        source=source or str(path),
        description=description,
        upstream_remote=remote,
        upstream_tag=tag,
        fork_branch=fork_branch,
        upstream_branch=upstream_branch,
        anchors=anchors,
        key_sites=sites,
        pins=pins,
        build=build,
        smoke=smoke,
        role=role,
        library=library,
        drift=drift,
        warnings=tuple(checker.warnings),
    )


def _unique(checker: Checker, key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            checker.problem(key, f"duplicate name {name!r}")
        seen.add(name)


def _anchor(t: Table) -> Anchor:
    locations = []
    for loc in t.subs("locations"):
        locations.append(AnchorLocation(_path(loc, "path", loc.str("path", required=True)),
                                        loc.bound("since"), loc.bound("until")))
        loc.finish()
    anchor = Anchor(
        name=t.str("name", required=True),
        symbol=t.str("symbol", required=True),
        definition=t.regex("definition"),
        must_contain=t.regex("must_contain"),
        message=t.str("message", ""),
        locations=tuple(locations),
    )
    if anchor.symbol and anchor.definition and anchor.symbol not in anchor.definition:
        t.checker.problem(t.key("definition"), f"must mention the symbol {anchor.symbol!r}")
    t.finish()
    return anchor


def _key_site(t: Table) -> KeySite:
    site = KeySite(
        name=t.str("name", required=True),
        paths=tuple(_path(t, f"paths[{i}]", p) for i, p in enumerate(t.strs("paths", required=True))),
        value=t.choice("value", KEY_VALUES),
        encoding=t.choice("encoding", ENCODINGS),
        pattern=t.regex("pattern", groups=("value",)),
    )
    t.finish()
    return site


def _path(t: Table, key: str, path: str) -> str:
    """``path`` as given; a problem is recorded when it could name a file outside its repository."""
    problem = path_problem(path) if path else None
    if problem:
        t.checker.problem(t.key(key), problem)
    return path


def _pin(t: Table) -> Pin:
    pin = Pin(
        name=t.str("name", required=True),
        file=t.str("file", required=True),
        pattern=t.regex("pattern", groups=("value",)),
        value=t.str("value", "{fork_branch}"),
    )
    t.finish()
    return pin


def _build(t: Table) -> BuildSpec:
    d = BuildSpec()
    spec = BuildSpec(
        dockerfile_dir=t.str("dockerfile_dir", d.dockerfile_dir),
        devel=t.str("devel", d.devel),
        serving=t.str("serving", d.serving),
        devel_gpu=t.str("devel_gpu", d.devel_gpu),
        serving_gpu=t.str("serving_gpu", d.serving_gpu),
        source_fetch=tuple(t.strs("source_fetch", required=True)),
        source_replacement=t.str("source_replacement", d.source_replacement),
        workspace_file=t.str("workspace_file", d.workspace_file),
        tf_repo_name=t.str("tf_repo_name", d.tf_repo_name),
        tensorflow_dir=t.str("tensorflow_dir", d.tensorflow_dir),
        image=t.str("image", d.image),
        builds_against=cast("Role", t.choice("builds_against", ROLES, d.builds_against)),
        library_install=tuple(t.strs("library_install", list(d.library_install))),
    )
    for name in ("dockerfile_dir", "devel", "serving", "devel_gpu", "serving_gpu", "workspace_file",
                 "tensorflow_dir"):
        _path(t, name, getattr(spec, name))
    for key in ("source_fetch", "library_install"):
        for i, rx in enumerate(getattr(spec, key)):
            try:
                re.compile(rx)
            except re.error as exc:
                t.checker.problem(f"{t.key(key)}[{i}]", f"invalid regular expression: {exc}")
    t.finish()
    return spec


def _library(t: Table) -> LibrarySpec:
    d = LibrarySpec()
    spec = LibrarySpec(path=t.str("path", d.path), symbol=t.str("symbol", d.symbol))
    if not spec.path.startswith("/"):
        t.checker.problem(t.key("path"), f"{spec.path!r} must be an absolute path in the image")
    t.finish()
    return spec


def _drift(t: Table) -> DriftSpec:
    d = DriftSpec()
    spec = DriftSpec(paths=tuple(t.strs("paths", list(d.paths))),
                     languages=tuple(t.strs("languages", list(d.languages))))
    for i, path in enumerate(spec.paths):
        if not path or path.startswith("/"):
            t.checker.problem(f"{t.key('paths')}[{i}]", f"{path!r} is not a path pattern relative to the repository")
    for i, lang in enumerate(spec.languages):
        if lang not in DRIFT_LANGUAGES:
            t.checker.problem(f"{t.key('languages')}[{i}]", f"{lang!r} is not one of {', '.join(DRIFT_LANGUAGES)}")
    t.finish()
    return spec


def _smoke(t: Table) -> SmokeSpec:
    d = SmokeSpec()
    spec = SmokeSpec(
        model_name=t.str("model_name", d.model_name),
        rest_port=t.int("rest_port", d.rest_port),
        instances=tuple(t.floats("instances", list(d.instances))),
        expected=tuple(t.floats("expected", list(d.expected))),
        tolerance=t.float("tolerance", d.tolerance),
        gpus_all_since=t.bound("gpus_all_since"),
    )
    if len(spec.instances) != len(spec.expected):
        t.checker.problem(t.key("expected"), "must have as many values as instances")
    t.finish()
    return spec
