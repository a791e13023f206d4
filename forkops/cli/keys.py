"""CLI commands: ``forkops set-key`` and ``forkops guard scan`` (plus the hidden hook entry).

Output shows fingerprints (first 8 hex digits of SHA-256), never the key or IV.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.common import console, cwd, err_console, print_json

if TYPE_CHECKING:
    from forkops.guard import Finding
    from forkops.keyfile import KeyMaterial
    from forkops.keys import SiteResult
    from forkops.playbook import Playbook
    from forkops.workspace import RepoConfig, Workspace

guard_app = typer.Typer(help="The commit/push guard that keeps the model key out of git.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("set-key")(set_key)
    app.add_typer(guard_app, name="guard")


KeysOpt = Annotated[Path | None, typer.Option(
    "--keys", metavar="FILE", help="Keys file (default: $FORKOPS_KEYS, else keys.toml in the workspace).")]
RepoOpt = Annotated[str | None, typer.Option("--repo", metavar="R", help="Only this repository of the workspace.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@dataclass
class _Target:
    config: RepoConfig
    playbook: Playbook
    results: list[SiteResult] = field(default_factory=list)


def _find_workspace(*, required: bool) -> Workspace | None:
    from forkops import workspace
    from forkops.cli.common import load_workspace
    from forkops.errors import BadInput

    try:
        workspace.find(cwd())
    except BadInput:
        if required:
            raise
        return None
    return load_workspace()


def _targets(ws: Workspace, repo: str | None) -> list[_Target]:
    from forkops.errors import BadInput
    from forkops.git import Repo

    targets = []
    for cfg in ws.select(repo):
        if not Repo(cfg.path).is_repo():
            raise BadInput(f"{cfg.name}: no clone at {cfg.path}", hint="run `forkops init` to clone the forks")
        targets.append(_Target(cfg, ws.playbook(cfg)))
    return targets


def set_key(
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    generate: Annotated[bool, typer.Option(
        "--generate", help="Create a new keys file with a random key first.")] = False,
    hex_key: Annotated[bool, typer.Option(
        "--hex", help="With --generate: a full-entropy binary key, stored as key_hex.")] = False,
    random_iv: Annotated[bool, typer.Option(
        "--random-iv", help="With --generate: a random IV instead of the public default 7777777777777777.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="With --generate: replace an existing keys file.")] = False,
    cipher: Annotated[str, typer.Option(
        "--cipher", metavar="CIPHER",
        help="With --generate: aes-128-cbc, aes-192-cbc or aes-256-cbc.")] = "aes-128-cbc",
    check: Annotated[bool, typer.Option(
        "--check", help="Only verify that every site holds the key and IV (exit 1 if not).")] = False,
    clear: Annotated[bool, typer.Option(
        "--clear", help="Put the committed (HEAD) values back into every site.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the key and IV into every key site, verify they agree, install the commit/push guard."""
    from forkops import keyfile
    from forkops.errors import BadInput

    if sum((generate, check, clear)) > 1:
        raise BadInput("--generate, --check and --clear do not combine; pick one")
    if not generate and (hex_key or random_iv or force or cipher != keyfile.DEFAULT_CIPHER):
        raise BadInput("--hex, --random-iv, --force and --cipher only apply with --generate")

    if clear:
        _clear(repo, keys, as_json=as_json)
        return
    ws = _find_workspace(required=not generate)
    keys_path = keyfile.resolve_path(keys, ws.root if ws else None)
    targets = _targets(ws, repo) if ws else []
    if generate:
        material = _generate(keys_path, targets, ws, cipher=cipher, hex_key=hex_key,
                             random_iv=random_iv, force=force, as_json=as_json and ws is None)
        if ws is None:
            return
    else:
        material = keyfile.load(keys_path)
    if check:
        _check(targets, material, as_json=as_json)
    else:
        _write(targets, material, keys_path, as_json=as_json)


def _generate(keys_path: Path, targets: list[_Target], ws: Workspace | None, *, cipher: str,
              hex_key: bool, random_iv: bool, force: bool, as_json: bool) -> KeyMaterial:
    from forkops import keyfile, keys

    keyfile.check_can_write(keys_path, force=force)
    material = keyfile.generate(cipher, hex_key=hex_key, random_iv=random_iv)
    for t in targets:  # refuse before the keys file exists if some site cannot hold this key
        keys.plan_sites(t.config.path, t.playbook, material)
    keyfile.write(keys_path, material, force=force)
    material = keyfile.load(keys_path)  # what every later reader will see
    ignored = _gitignore(keys_path, ws.root) if ws else None
    if as_json:
        print_json({"keys_file": str(keys_path), "cipher": material.cipher,
                    "key_fingerprint": material.key_fingerprint, "iv_fingerprint": material.iv_fingerprint,
                    "gitignore": str(ignored) if ignored else None})
    else:
        out = err_console() if ws else console()
        out.print(f"wrote [bold]{keys_path}[/bold] (mode 0600): {material.cipher}, "
                  f"key [cyan]{material.key_fingerprint}[/cyan]"
                  f"{' (binary, key_hex)' if material.key_is_hex else ''}, "
                  f"iv [cyan]{material.iv_fingerprint}[/cyan]"
                  f"{' (random)' if random_iv else ' (default 7777777777777777)'}")
        if ignored:
            out.print(f"{ignored}: keys.toml is ignored by git")
    return material


def _gitignore(keys_path: Path, root: Path) -> Path | None:
    """Make sure the workspace's .gitignore ignores the keys file (when it lives in the workspace)."""
    from forkops.fsutil import write_atomic

    try:
        rel = keys_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    path = root / ".gitignore"
    text = path.read_text() if path.exists() else ""
    entry = f"/{rel}" if "/" in rel else rel
    if any(line.strip() in (rel, f"/{rel}", entry) for line in text.splitlines()):
        return path
    if text and not text.endswith("\n"):
        text += "\n"
    write_atomic(path, text + "# the model key (forkops)\n" + entry + "\n")
    return path


def _site_rows(t: _Target) -> list[dict[str, object]]:
    return [{"repo": t.config.name, **r.as_json()} for r in t.results]


def _print_sites(targets: list[_Target], material: KeyMaterial | None) -> None:
    from rich.table import Table

    want = {"key": material.key_fingerprint, "iv": material.iv_fingerprint} if material else {}
    table = Table(box=None, pad_edge=False)
    for col in ("repo", "site", "path", "holds"):
        table.add_column(col, overflow="fold")
    for t in targets:
        for r in t.results:
            if r.fingerprint is None:
                holds = f"[red]unreadable: {r.problem}[/red]"
            elif want and r.fingerprint != want[r.value]:
                holds = f"[red]{r.value} {r.fingerprint} (expected {want[r.value]})[/red]"
            else:
                holds = f"{r.value} [cyan]{r.fingerprint}[/cyan]"
            table.add_row(t.config.name, r.site, f"{r.path}:{r.line}", holds)
    console().print(table)


def _write(targets: list[_Target], material: KeyMaterial, keys_path: Path, *, as_json: bool) -> None:
    from forkops import guard, keys
    from forkops.errors import NeedsPerson

    plans = [keys.plan_sites(t.config.path, t.playbook, material) for t in targets]  # all or nothing
    if not any(p.instances for p in plans):
        raise NeedsPerson("no key site found in any repository "
                          f"({', '.join(t.config.name for t in targets)}): are the clones on a fork branch?")
    for t, plan in zip(targets, plans, strict=True):
        plan.apply()
        t.results = keys.read_sites(t.config.path, t.playbook)
    bad = [(t, r) for t in targets for r in keys.disagreements(t.results, material)]
    hooks = {t.config.name: guard.install_hooks(t.config.path, keys_path) for t in targets}
    if as_json:
        print_json({"key_fingerprint": material.key_fingerprint, "iv_fingerprint": material.iv_fingerprint,
                    "sites": [row for t in targets for row in _site_rows(t)],
                    "disagree": [{"repo": t.config.name, **r.as_json()} for t, r in bad],
                    "guard": [{"repo": name, "hook": h.hook, "path": str(h.path), "action": h.action,
                               "chained": str(h.chained) if h.chained else None}
                              for name, hs in hooks.items() for h in hs]})
    else:
        out = console()
        out.print(f"key [cyan]{material.key_fingerprint}[/cyan], iv [cyan]{material.iv_fingerprint}[/cyan] "
                  f"from {keys_path}")
        _print_sites(targets, material)
        for name, hs in hooks.items():
            for h in hs:
                chained = f", runs the earlier hook {h.chained.name} first" if h.chained else ""
                out.print(f"guard: {name} {h.hook} {h.action}{chained}")
    if bad:
        raise NeedsPerson("key sites disagree after writing: "
                          + ", ".join(f"{t.config.name}:{r.path}:{r.line}" for t, r in bad))
    if not as_json:
        console().print(f"all {sum(len(t.results) for t in targets)} key sites agree. "
                        "Do not commit them: the guard refuses it; `forkops set-key --clear` restores them.")


def _check(targets: list[_Target], material: KeyMaterial, *, as_json: bool) -> None:
    from forkops import guard, keys
    from forkops.errors import NeedsPerson

    for t in targets:
        t.results = keys.read_sites(t.config.path, t.playbook)
    bad = [(t, r) for t in targets for r in keys.disagreements(t.results, material)]
    missing_guard = [f"{t.config.name} {hook}" for t in targets
                     for hook, ok in guard.installed(t.config.path).items() if not ok]
    if as_json:
        print_json({"ok": not bad and any(t.results for t in targets),
                    "key_fingerprint": material.key_fingerprint, "iv_fingerprint": material.iv_fingerprint,
                    "sites": [row for t in targets for row in _site_rows(t)],
                    "disagree": [{"repo": t.config.name, **r.as_json()} for t, r in bad],
                    "guard_missing": missing_guard})
    else:
        _print_sites(targets, material)
        for item in missing_guard:
            print(f"forkops: warning: guard hook not installed: {item} (run `forkops set-key`)", file=sys.stderr)
    if not any(t.results for t in targets):
        raise NeedsPerson("no key site found in any repository")
    if bad:
        want = keys.expected_fingerprints(material)
        raise NeedsPerson(f"{len(bad)} key site(s) disagree with the keys file: " + "; ".join(
            f"{t.config.name}:{r.path}:{r.line} {r.site} holds "
            f"{r.fingerprint or 'an unreadable value'}, expected {want[r.value]}" for t, r in bad))
    if not as_json:
        console().print(f"all {sum(len(t.results) for t in targets)} key sites hold key "
                        f"[cyan]{material.key_fingerprint}[/cyan] and iv [cyan]{material.iv_fingerprint}[/cyan]")


def _clear(repo: str | None, keys_file: Path | None, *, as_json: bool) -> None:
    from forkops import keyfile, keys
    from forkops.errors import BadInput

    ws = _find_workspace(required=True)
    assert ws is not None
    targets = _targets(ws, repo)
    for t in targets:
        t.results = keys.clear_sites(t.config.path, t.playbook)
    # HEAD itself may hold the key (a commit made with --no-verify): say so when we can tell.
    try:
        material: KeyMaterial | None = keyfile.load(keyfile.resolve_path(keys_file, ws.root))
    except BadInput:
        material = None
    still = []
    if material is not None:
        want = keys.expected_fingerprints(material)
        still = [(t, r) for t in targets for r in t.results
                 if r.fingerprint == want[r.value] and (r.value == "key" or material.iv != keyfile.DEFAULT_IV)]
    if as_json:
        print_json({"sites": [row for t in targets for row in _site_rows(t)],
                    "still_secret": [{"repo": t.config.name, **r.as_json()} for t, r in still]})
    else:
        _print_sites(targets, None)
        console().print("restored the committed (HEAD) value of every key site; other edits were kept")
    for t, r in still:
        print(f"forkops: warning: {t.config.name}:{r.path}:{r.line} {r.site}: HEAD itself holds the {r.value} "
              "(committed earlier); run `forkops guard scan`", file=sys.stderr)


# -- guard ----------------------------------------------------------------------------------------
def _guard_repos(repo: str | None) -> tuple[list[Path], Workspace | None]:
    from forkops.git import Repo

    ws = _find_workspace(required=False)
    if ws is not None:
        return [t.config.path for t in _targets(ws, repo)], ws
    from forkops.errors import BadInput

    if repo is not None:
        raise BadInput("--repo needs a forkops workspace")
    here = Repo(cwd())
    if not here.is_repo():
        raise BadInput("not in a forkops workspace or a git repository")
    return [Path(here.run("rev-parse", "--show-toplevel").strip())], None


@guard_app.command("scan")
def guard_scan(
    revs: Annotated[list[str] | None, typer.Argument(metavar="REV-RANGE",
                                                     help="What to scan, as git rev-list takes it (default HEAD); "
                                                          "put -- before options such as --all.")] = None,
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan existing history for the key (and a non-default IV); exit 1 naming commits and paths."""
    from forkops import guard, keyfile
    from forkops.errors import NeedsPerson
    from forkops.git import Repo

    paths, ws = _guard_repos(repo)
    material = keyfile.load(keyfile.resolve_path(keys, ws.root if ws else None))
    matcher = guard.Matcher(material)
    report = []
    for path in paths:
        count, findings = guard.scan_commits(Repo(path), revs or ["HEAD"], matcher)
        report.append((path, count, findings))
    found = [(p, f) for p, _, fs in report for f in fs]
    if as_json:
        print_json({"key_fingerprint": material.key_fingerprint,
                    "repos": [{"path": str(p), "commits": n, "findings": [f.as_json() for f in fs]}
                              for p, n, fs in report]})
    else:
        out = console()
        for p, n, fs in report:
            out.print(f"{p}: scanned {n} commit(s): " + (f"[red]{len(fs)} finding(s)[/red]" if fs else "clean"))
            for f in fs:
                out.print(f"  {f.describe()}")
    if found:
        raise NeedsPerson(f"the key or IV is in {len(found)} committed file version(s)",
                          hint="rewrite those commits before pushing them; never push them anywhere public")


hook_app = typer.Typer(hidden=True, help="Entry points run by the installed git hooks.")
guard_app.add_typer(hook_app, name="hook")


@hook_app.command("pre-commit")
def hook_pre_commit(
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE")],
    args: Annotated[list[str] | None, typer.Argument()] = None,
) -> None:
    """Refuse the commit if the staged content holds the key (run by .git/hooks/pre-commit)."""
    from forkops import guard
    from forkops.git import Repo

    matcher = guard.Matcher(_hook_keys(keys))
    findings = guard.scan_staged(Repo(cwd()), matcher, index_file=os.environ.get("GIT_INDEX_FILE"))
    _refuse("commit", findings, "unstage it (`git restore --staged PATH`) or put the committed "
                                "values back (`forkops set-key --clear`), then stage again")


@hook_app.command("pre-push")
def hook_pre_push(
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE")],
    args: Annotated[list[str] | None, typer.Argument()] = None,
) -> None:
    """Refuse the push if an outgoing commit holds the key (run by .git/hooks/pre-push)."""
    from forkops import guard
    from forkops.git import Repo

    matcher = guard.Matcher(_hook_keys(keys))
    repo = Repo(cwd())
    # git runs the hook as `pre-push <remote name or URL> <URL>`.
    remote = args[0] if args else None
    sent = guard.outgoing(repo, sys.stdin.read().splitlines(), remote=remote,
                          upstream=guard.upstream_of(repo.path))
    err = err_console()
    for note in sent.notes:
        err.print(f"forkops guard: note: {note}", markup=False, highlight=False)
    count, findings = guard.scan_commits(repo, sent.revs, matcher) if sent.revs else (0, [])
    _refuse("push", findings, "rewrite those commits without the key (e.g. `git rebase -i`), then push")
    if sent.revs:
        skipped = f" (history of upstream tag(s) {', '.join(sent.trusted_tags)} skipped)" if sent.trusted_tags else ""
        err.print(f"forkops guard: checked {count} outgoing commit(s): no key{skipped}",
                  markup=False, highlight=False)


def _hook_keys(path: Path) -> KeyMaterial:
    from forkops import keyfile
    from forkops.errors import BadInput

    try:
        return keyfile.load(path)
    except BadInput as exc:
        # Fail closed: without the key the guard cannot tell, so it refuses.
        hint = exc.hint or "fix the keys file, or bypass once with `git commit/push --no-verify`"
        raise BadInput(f"guard: cannot read the keys file, so it refuses: {exc.message}", hint=hint) from None


def _refuse(action: str, findings: list[Finding], hint: str) -> None:
    from forkops.errors import NeedsPerson

    if not findings:
        return
    err = err_console()
    for f in findings:
        err.print(f"forkops guard: {f.describe()}")
    raise NeedsPerson(f"guard: refusing the {action}: it contains the model key or IV "
                      f"({len(findings)} file version(s))", hint=hint)
