"""Key sites (docs/SPEC.md section 4): write the key and IV into the fork's working tree, read them
back, verify they agree, and put the committed values back.

A *site instance* is one match of a playbook :class:`~forkops.playbook.KeySite` pattern in one
existing file of the working tree; its ``value`` group is the encoded value exactly as it
appears (a C string literal with its quotes, a C byte array with its braces, a bare Bazel
define value).

Invariants:

* Nothing here returns, prints or raises the key or IV: results carry SHA-256 fingerprints.
* Every write is planned in full first (a site that cannot hold the value refuses the whole
  operation before any file changes), then each file is replaced atomically, once.
* Only the ``value`` spans change; every other byte of a file is preserved, as is its mode.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from forkops import guard
from forkops.errors import BadInput, ConfigError, NeedsPerson
from forkops.fsutil import write_atomic
from forkops.git import Repo
from forkops.keyfile import DEFAULT_IV, KeyMaterial, fingerprint
from forkops.playbook import KeySite, Playbook
from forkops.secrets import encodings
from forkops.secrets.encodings import Unencodable as Unencodable  # re-exported: build.py catches it

# Read files as UTF-8 with surrogateescape so any byte round-trips unchanged.
_ENC, _ERRORS = "utf-8", "surrogateescape"
# Temp files a key-site write creates next to the file: ".NAME.forkops-key.XXXXXXXX.tmp".
# A run killed by SIGKILL leaves one holding the key; the next run finds it by this name.
_TMP_INFIX = ".forkops-key."


def encode(value: bytes, encoding: str) -> str:
    """The value as it must appear in the source (the whole ``value`` group)."""
    return encodings.get(encoding).encode(value)


def decode(text: str, encoding: str) -> bytes:
    """The bytes an encoded value stands for; ValueError (without the value) if malformed."""
    try:
        enc = encodings.get(encoding)
    except Unencodable as exc:
        raise ValueError(str(exc)) from None
    return enc.decode(text)


# -- site instances -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteResult:
    """One site instance as read from the working tree. Never holds the value itself."""

    path: str  # repo-relative, '/'-separated
    site: str  # KeySite.name
    value: str  # "key" | "iv"
    encoding: str
    line: int
    fingerprint: str | None  # of the decoded value; None if it cannot be decoded
    problem: str | None = None  # why it cannot be decoded (never contains the value)

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "site": self.site, "value": self.value, "encoding": self.encoding,
                "line": self.line, "fingerprint": self.fingerprint, "problem": self.problem}


@dataclass(frozen=True)
class _Instance:
    site: KeySite
    path: str
    start: int  # span of the value group in the file text
    end: int
    line: int


def _read_text(path: Path) -> str:
    return path.read_bytes().decode(_ENC, _ERRORS)


def _instances_in(text: str, path: str, sites: Iterable[KeySite]) -> list[_Instance]:
    found: list[_Instance] = []
    for site in sites:
        for m in site.matches(text, path):
            start, end = m.span("value")
            found.append(_Instance(site, path, start, end, text.count("\n", 0, start) + 1))
    found.sort(key=lambda i: i.start)
    for a, b in itertools.pairwise(found):
        if b.start < a.end:
            raise ConfigError([f"{path}: key sites {a.site.name!r} and {b.site.name!r} "
                               "match overlapping text; fix their patterns"])
    return found


def _files_with_sites(repo_path: Path, playbook: Playbook) -> dict[str, tuple[str, list[_Instance]]]:
    """Every existing site path with at least one match: path -> (text, instances)."""
    by_path: dict[str, list[KeySite]] = {}
    for site in playbook.key_sites:
        for p in site.paths:
            by_path.setdefault(p, []).append(site)
    files: dict[str, tuple[str, list[_Instance]]] = {}
    for rel, sites in sorted(by_path.items()):
        full = repo_path / rel
        if full.is_symlink() or not full.resolve().is_relative_to(repo_path.resolve()):
            raise BadInput(f"{rel}: a key site file must be a regular file inside the repository "
                           "(this one is a symlink or leads outside it); forkops will not write the key there")
        if not full.is_file():
            continue
        text = _read_text(full)
        found = _instances_in(text, rel, sites)
        if found:
            files[rel] = (text, found)
    return files


def _reading(inst: _Instance, text: str) -> SiteResult:
    raw = text[inst.start:inst.end]
    try:
        fp: str | None = fingerprint(decode(raw, inst.site.encoding))
        problem = None
    except ValueError as exc:
        fp, problem = None, str(exc)
    return SiteResult(inst.path, inst.site.name, inst.site.value, inst.site.encoding, inst.line, fp, problem)


def site_paths(repo_path: Path, playbook: Playbook) -> list[str]:
    """Repo-relative paths that currently hold at least one site instance."""
    return sorted(_files_with_sites(repo_path, playbook))


def read_sites(repo_path: Path, playbook: Playbook) -> list[SiteResult]:
    """Every site instance in the working tree, decoded to a fingerprint."""
    return [_reading(inst, text)
            for text, found in _files_with_sites(repo_path, playbook).values() for inst in found]


def expected_fingerprints(material: KeyMaterial) -> dict[str, str]:
    return {"key": material.key_fingerprint, "iv": material.iv_fingerprint}


def disagreements(results: Iterable[SiteResult], material: KeyMaterial) -> list[SiteResult]:
    """Site instances that do not decode to the key file's key (or IV)."""
    want = expected_fingerprints(material)
    return [r for r in results if r.fingerprint != want[r.value]]


# -- writing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """New contents for every file that holds a site instance (planned, not yet written)."""

    repo_path: Path
    playbook: Playbook
    files: dict[str, str]  # repo-relative path -> new text (only files that change)
    instances: int

    def apply(self, *, secret: bool = True) -> None:
        """Replace each file atomically: mode 0600 while it holds the key (``secret``), else
        the mode git checks it out with. The temp files are removed on any exit this process
        sees (SIGTERM and SIGHUP included); a SIGKILL leaves one for
        :func:`remove_stale_temp_files`."""
        repo = Repo(self.repo_path)
        remove_stale_temp_files(self.repo_path, self.playbook)
        with _signals_exit():
            for rel, text in self.files.items():
                full = self.repo_path / rel
                mode = 0o600 if secret else _checkout_mode(repo, rel)
                write_atomic(full, text.encode(_ENC, _ERRORS), mode=mode, infix=_TMP_INFIX)


@contextlib.contextmanager
def _signals_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit meanwhile, so ``finally`` blocks remove temp files."""
    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, leave)
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _checkout_mode(repo: Repo, rel: str) -> int:
    """The mode ``git checkout`` gives ``rel``: 0777 or 0666 (executable or not) less the umask."""
    staged = repo.run("ls-files", "-s", "--", rel).split()
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if staged[:1] == ["100755"] else 0o666) & ~umask


def remove_stale_temp_files(repo_path: Path, playbook: Playbook) -> list[str]:
    """Remove what a killed key-site write left next to each key-site path (temp files that
    may hold the key: this module's ``.NAME.forkops-key.*.tmp`` and the ``.NAME.*.tmp`` of
    earlier forkops versions). Returns the repo-relative paths removed. For set-key, --clear
    and the upgrade engine."""
    removed = []
    for rel in sorted({p for site in playbook.key_sites for p in site.paths}):
        full = repo_path / rel
        if not full.parent.is_dir():
            continue
        for tmp in full.parent.glob(f".{glob_escape(full.name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed.append(tmp.relative_to(repo_path).as_posix())
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _splice(text: str, found: list[_Instance], values: list[str]) -> str:
    parts, pos = [], 0
    for inst, value in zip(found, values, strict=True):
        parts += [text[pos:inst.start], value]
        pos = inst.end
    parts.append(text[pos:])
    return "".join(parts)


def plan_sites(repo_path: Path, playbook: Playbook, material: KeyMaterial) -> Plan:
    """Plan writing ``material`` into every site instance; BadInput if any site cannot hold it."""
    files = _files_with_sites(repo_path, playbook)
    problems: list[str] = []
    new_files: dict[str, str] = {}
    count = 0
    for rel, (text, found) in files.items():
        values = []
        for inst in found:
            count += 1
            secret = material.key if inst.site.value == "key" else material.iv
            try:
                values.append(encode(secret, inst.site.encoding))
            except Unencodable as exc:
                problems.append(f"{rel}:{inst.line}: key site {inst.site.name!r} refused: {exc}")
                values.append(text[inst.start:inst.end])
        new = _splice(text, found, values)
        if new != text:
            new_files[rel] = new
    if problems:
        raise ConfigError(problems)
    return Plan(repo_path, playbook, new_files, count)


def write_sites(repo_path: Path, playbook: Playbook, material: KeyMaterial) -> list[SiteResult]:
    """Write the key and IV into every existing site instance of the working tree.

    Planned in full first (BadInput, nothing written, if a site cannot hold the value), then
    each changed file is replaced atomically. Returns what the sites hold afterwards, read
    back from disk; NeedsPerson if a site does not read back as written (a playbook pattern
    that does not match its own output).
    """
    plan_sites(repo_path, playbook, material).apply()
    results = read_sites(repo_path, playbook)
    bad = disagreements(results, material)
    if bad:
        raise NeedsPerson("key sites do not read back as written: "
                          + ", ".join(f"{r.path}:{r.line} ({r.site})" for r in bad))
    return results


def clear_sites(repo_path: Path, playbook: Playbook) -> list[SiteResult]:
    """Put HEAD's committed value back into every site instance of the working tree.

    Only the value spans change, so other uncommitted edits in those files survive; a file
    whose only difference from HEAD was its site values becomes identical to HEAD again.
    BadInput (nothing written) if HEAD lacks the file or holds a different number of matches
    for a site, since it is then unclear which committed value belongs where.
    """
    repo = Repo(repo_path)
    problems: list[str] = []
    new_files: dict[str, str] = {}
    for rel, (text, found) in _files_with_sites(repo_path, playbook).items():
        blob = repo.show_file("HEAD", rel)
        if blob is None:
            problems.append(f"{rel}: not in HEAD, so there is no committed value to restore")
            continue
        head_text = blob.decode(_ENC, _ERRORS)
        head_found = _instances_in(head_text, rel, {i.site.name: i.site for i in found}.values())
        committed: dict[str, list[str]] = {}
        for inst in head_found:
            committed.setdefault(inst.site.name, []).append(head_text[inst.start:inst.end])
        values: list[str] = []
        used: dict[str, int] = {}
        for inst in found:
            n = used.get(inst.site.name, 0)
            used[inst.site.name] = n + 1
            options = committed.get(inst.site.name, [])
            values.append(options[n] if n < len(options) else "")
        mismatched = [name for name, n in used.items() if n != len(committed.get(name, []))]
        if mismatched:
            problems.extend(f"{rel}: key site {name!r} matches {used[name]} time(s) in the working "
                            f"tree but {len(committed.get(name, []))} in HEAD" for name in mismatched)
            continue
        new = _splice(text, found, values)
        if new != text:
            new_files[rel] = new
    if problems:
        raise BadInput("; ".join(problems))
    Plan(repo_path, playbook, new_files, 0).apply(secret=False)
    return read_sites(repo_path, playbook)


def relpath(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when inside it (for messages), else as given."""
    try:
        return os.path.relpath(path, start) if path.is_relative_to(start) else str(path)
    except ValueError:
        return str(path)


# -- set-key, --check, --clear (the engine under `forkops set-key`) ---------------------------------
WHERE_THE_KEY_GOES = ("no playbook of this workspace has key sites: the key is compiled into libcryptfile.so "
                      "instead, by `forkops cryptlib build --keys FILE -o libcryptfile.so` or by `forkops build`")


@dataclass(frozen=True)
class Target:
    """One fork clone of the workspace and its playbook."""

    name: str
    path: Path
    playbook: Playbook


@dataclass(frozen=True)
class RepoSite:
    repo: str
    site: SiteResult

    def as_json(self) -> dict[str, object]:
        return {"repo": self.repo, **self.site.as_json()}


@dataclass(frozen=True)
class RepoHook:
    repo: str
    hook: guard.HookInstall

    def as_json(self) -> dict[str, object]:
        return {"repo": self.repo, **self.hook.as_json()}


@dataclass(frozen=True)
class SetKeyResult:
    """What ``set-key`` did. ``disagree`` non-empty means a person must look (exit 1)."""

    key_fingerprint: str
    iv_fingerprint: str
    sites: tuple[RepoSite, ...]
    disagree: tuple[RepoSite, ...]
    hooks: tuple[RepoHook, ...]
    note: str | None = None  # where the key goes when no playbook has key sites

    def as_json(self) -> dict[str, object]:
        return {"key_fingerprint": self.key_fingerprint, "iv_fingerprint": self.iv_fingerprint,
                "note": self.note, "sites": [s.as_json() for s in self.sites],
                "disagree": [s.as_json() for s in self.disagree], "guard": [h.as_json() for h in self.hooks]}


@dataclass(frozen=True)
class CheckResult:
    key_fingerprint: str
    iv_fingerprint: str
    sites: tuple[RepoSite, ...]
    disagree: tuple[RepoSite, ...]
    guard_missing: tuple[str, ...]  # "REPO HOOK"

    @property
    def ok(self) -> bool:
        return bool(self.sites) and not self.disagree

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "key_fingerprint": self.key_fingerprint, "iv_fingerprint": self.iv_fingerprint,
                "sites": [s.as_json() for s in self.sites], "disagree": [s.as_json() for s in self.disagree],
                "guard_missing": list(self.guard_missing)}


@dataclass(frozen=True)
class ClearResult:
    sites: tuple[RepoSite, ...]
    still_secret: tuple[RepoSite, ...]  # HEAD itself holds the key there (committed earlier)
    removed_temp_files: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"sites": [s.as_json() for s in self.sites], "still_secret": [s.as_json() for s in self.still_secret],
                "removed_temp_files": list(self.removed_temp_files)}


def _rows(target: Target, results: Iterable[SiteResult]) -> list[RepoSite]:
    return [RepoSite(target.name, r) for r in results]


def set_key(targets: list[Target], material: KeyMaterial, keys_path: Path) -> SetKeyResult:
    """Write the key and IV into every key site of every target and install the guard.

    All or nothing before the first write: every site must be able to hold the values and
    every hooks folder must accept forkops' hooks (BadInput otherwise). With no key sites in
    any playbook the guard is still installed and ``note`` says where the key goes instead.
    NeedsPerson if playbooks declare sites but no clone has one (not on a fork branch)."""
    plans = [plan_sites(t.path, t.playbook, material) for t in targets]
    for t in targets:
        guard.check_installable(t.path)
    fps = (material.key_fingerprint, material.iv_fingerprint)
    if not any(t.playbook.key_sites for t in targets):
        hooks = [RepoHook(t.name, h) for t in targets for h in guard.install_hooks(t.path, keys_path)]
        return SetKeyResult(*fps, (), (), tuple(hooks), WHERE_THE_KEY_GOES)
    if not any(p.instances for p in plans):
        raise NeedsPerson("no key site found in any repository "
                          f"({', '.join(t.name for t in targets)}): are the clones on a fork branch?")
    sites: list[RepoSite] = []
    for t, plan in zip(targets, plans, strict=True):
        plan.apply()
        sites += _rows(t, read_sites(t.path, t.playbook))
    want = expected_fingerprints(material)
    bad = tuple(s for s in sites if s.site.fingerprint != want[s.site.value])
    hooks = [RepoHook(t.name, h) for t in targets for h in guard.install_hooks(t.path, keys_path)]
    return SetKeyResult(*fps, tuple(sites), bad, tuple(hooks))


def check(targets: list[Target], material: KeyMaterial) -> CheckResult:
    """Read every key site and compare it with the keys file; which guard hooks are missing."""
    sites = [row for t in targets for row in _rows(t, read_sites(t.path, t.playbook))]
    want = expected_fingerprints(material)
    bad = tuple(s for s in sites if s.site.fingerprint != want[s.site.value])
    missing = tuple(f"{t.name} {hook}" for t in targets for hook, ok in guard.installed(t.path).items() if not ok)
    return CheckResult(material.key_fingerprint, material.iv_fingerprint, tuple(sites), bad, missing)


def clear(targets: list[Target], material: KeyMaterial | None) -> ClearResult:
    """Put HEAD's values back into every key site (and remove stale temp files); with the key
    known, say which sites HEAD itself holds the key in (a commit made with --no-verify)."""
    removed = [f"{t.name}:{p}" for t in targets for p in remove_stale_temp_files(t.path, t.playbook)]
    sites = [row for t in targets for row in _rows(t, clear_sites(t.path, t.playbook))]
    still: list[RepoSite] = []
    if material is not None:
        want = expected_fingerprints(material)
        still = [s for s in sites if s.site.fingerprint == want[s.site.value]
                 and (s.site.value == "key" or material.iv != DEFAULT_IV)]
    return ClearResult(tuple(sites), tuple(still), tuple(removed))
