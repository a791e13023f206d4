"""CLI commands: ``forkops set-key`` and ``forkops guard scan`` (plus the hidden hook entry).

Output shows fingerprints (first 8 hex digits of SHA-256), never the key or IV.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkops.cli.common import JsonOption, KeysOption, RepoOption, console, cwd, err_console, print_json

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.keys import RepoHook, RepoSite, Target
    from forkops.workspace import Workspace

guard_app = typer.Typer(help="The commit/push guard that keeps the model key out of git.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("set-key")(set_key)
    app.add_typer(guard_app, name="guard")


# The shared options (forkops.cli.common), under the names this module uses.
KeysOpt = KeysOption
RepoOpt = RepoOption
JsonOpt = JsonOption


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


def _targets(ws: Workspace, repo: str | None) -> list[Target]:
    from forkops.errors import BadInput
    from forkops.git import Repo
    from forkops.keys import Target

    targets = []
    for cfg in ws.select(repo):
        if not Repo(cfg.path).is_repo():
            raise BadInput(f"{cfg.name}: no clone at {cfg.path}", hint="run `forkops init` to clone the forks")
        targets.append(Target(cfg.name, cfg.path, ws.playbook(cfg)))
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
        return
    from forkops import lock

    assert ws is not None
    with lock.workspace_lock(ws, "forkops set-key"):
        # A key written into a worktree mid-rebase would be committed by `git add -A` and
        # --continue: rebase commits run no hook.
        lock.refuse_while_upgrading(ws, "set-key")
        _write(targets, material, keys_path, as_json=as_json)


def _generate(keys_path: Path, targets: list[Target], ws: Workspace | None, *, cipher: str,
              hex_key: bool, random_iv: bool, force: bool, as_json: bool) -> KeyMaterial:
    from forkops import keyfile, keys

    keyfile.check_can_write(keys_path, force=force)
    material = keyfile.generate(cipher, hex_key=hex_key, random_iv=random_iv)
    for t in targets:  # refuse before the keys file exists if some site cannot hold this key
        keys.plan_sites(t.path, t.playbook, material)
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
    from forkops.fsutil import ensure_ignored

    try:
        rel = keys_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return ensure_ignored(root, f"/{rel}" if "/" in rel else rel, comment="the model key (forkops)")


def _print_sites(sites: tuple[RepoSite, ...], material: KeyMaterial | None) -> None:
    from rich.table import Table

    want = {"key": material.key_fingerprint, "iv": material.iv_fingerprint} if material else {}
    table = Table(box=None, pad_edge=False)
    for col in ("repo", "site", "path", "holds"):
        table.add_column(col, overflow="fold")
    for row in sites:
        r = row.site
        if r.fingerprint is None:
            holds = f"[red]unreadable: {r.problem}[/red]"
        elif want and r.fingerprint != want[r.value]:
            holds = f"[red]{r.value} {r.fingerprint} (expected {want[r.value]})[/red]"
        else:
            holds = f"{r.value} [cyan]{r.fingerprint}[/cyan]"
        table.add_row(row.repo, r.site, f"{r.path}:{r.line}", holds)
    console().print(table)


def _print_hooks(hooks: tuple[RepoHook, ...]) -> None:
    out = console()
    for h in hooks:
        chained = f", runs the earlier hook {h.hook.chained.name} first" if h.hook.chained else ""
        out.print(f"guard: {h.repo} {h.hook.hook} {h.hook.action}{chained}", markup=False, highlight=False)


def _write(targets: list[Target], material: KeyMaterial, keys_path: Path, *, as_json: bool) -> None:
    from forkops import keys
    from forkops.errors import NeedsPerson

    result = keys.set_key(targets, material, keys_path)
    if as_json:
        print_json(result.as_json())
    else:
        out = console()
        out.print(f"key [cyan]{material.key_fingerprint}[/cyan], iv [cyan]{material.iv_fingerprint}[/cyan] "
                  f"from {keys_path}")
        if result.note:
            out.print(result.note, markup=False, highlight=False)
        else:
            _print_sites(result.sites, material)
        _print_hooks(result.hooks)
    if result.disagree:
        raise NeedsPerson("key sites disagree after writing: "
                          + ", ".join(f"{s.repo}:{s.site.path}:{s.site.line}" for s in result.disagree))
    if not as_json and result.sites:
        console().print(f"all {len(result.sites)} key sites agree. "
                        "Do not commit them: the guard refuses it; `forkops set-key --clear` restores them.")


def _check(targets: list[Target], material: KeyMaterial, *, as_json: bool) -> None:
    from forkops import keys
    from forkops.errors import NeedsPerson

    result = keys.check(targets, material)
    if as_json:
        print_json(result.as_json())
    else:
        _print_sites(result.sites, material)
        for item in result.guard_missing:
            print(f"forkops: warning: guard hook not installed: {item} (run `forkops guard install`)",
                  file=sys.stderr)
    if not result.sites:
        raise NeedsPerson("no key site found in any repository")
    if result.disagree:
        want = keys.expected_fingerprints(material)
        raise NeedsPerson(f"{len(result.disagree)} key site(s) disagree with the keys file: " + "; ".join(
            f"{s.repo}:{s.site.path}:{s.site.line} {s.site.site} holds "
            f"{s.site.fingerprint or 'an unreadable value'}, expected {want[s.site.value]}" for s in result.disagree))
    if not as_json:
        console().print(f"all {len(result.sites)} key sites hold key "
                        f"[cyan]{material.key_fingerprint}[/cyan] and iv [cyan]{material.iv_fingerprint}[/cyan]")


def _clear(repo: str | None, keys_file: Path | None, *, as_json: bool) -> None:
    from forkops import keyfile, keys
    from forkops.errors import BadInput

    ws = _find_workspace(required=True)
    assert ws is not None
    targets = _targets(ws, repo)
    try:  # HEAD itself may hold the key (a commit made with --no-verify): say so when we can tell
        material: KeyMaterial | None = keyfile.load(keyfile.resolve_path(keys_file, ws.root))
    except BadInput:
        material = None
    from forkops import lock

    with lock.workspace_lock(ws, "forkops set-key --clear"):
        result = keys.clear(targets, material)
    if as_json:
        print_json(result.as_json())
    else:
        _print_sites(result.sites, None)
        for tmp in result.removed_temp_files:
            console().print(f"removed a temp file a killed set-key left: {tmp}", markup=False, highlight=False)
        console().print("restored the committed (HEAD) value of every key site; other edits were kept")
    for s in result.still_secret:
        print(f"forkops: warning: {s.repo}:{s.site.path}:{s.site.line} {s.site.site}: HEAD itself holds the "
              f"{s.site.value} (committed earlier); run `forkops guard scan`", file=sys.stderr)


# -- guard ----------------------------------------------------------------------------------------
def _guard_repos(repo: str | None) -> tuple[list[Path], Workspace | None]:
    from forkops.git import Repo

    ws = _find_workspace(required=False)
    if ws is not None:
        return [t.path for t in _targets(ws, repo)], ws
    from forkops.errors import BadInput

    if repo is not None:
        raise BadInput("--repo needs a forkops workspace")
    here = Repo(cwd())
    if not here.is_repo():
        raise BadInput("not in a forkops workspace or a git repository")
    return [Path(here.run("rev-parse", "--show-toplevel").strip())], None


@guard_app.command("install")
def guard_install(
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Install the pre-commit, commit-msg and pre-push guard hooks (needs only the keys file)."""
    from forkops import guard, keyfile
    from forkops.keys import RepoHook

    paths, ws = _guard_repos(repo)
    keys_path = keyfile.resolve_path(keys, ws.root if ws else None)
    material = keyfile.load(keys_path)  # a hook that cannot read it would refuse every commit
    for path in paths:
        guard.check_installable(path)
    hooks = tuple(RepoHook(path.name, h) for path in paths for h in guard.install_hooks(path, keys_path))
    if as_json:
        print_json({"key_fingerprint": material.key_fingerprint, "guard": [h.as_json() for h in hooks]})
    else:
        _print_hooks(hooks)


@guard_app.command("scan")
def guard_scan(
    revs: Annotated[list[str] | None, typer.Argument(metavar="REV-RANGE",
                                                     help="What to scan, as git rev-list takes it (default HEAD); "
                                                          "put -- before options such as --all.")] = None,
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan history for the key (and a non-default IV): every commit, tag and file version the
    revisions reach; exit 1 naming them."""
    from forkops import guard, keyfile
    from forkops.errors import NeedsPerson
    from forkops.git import Repo

    paths, ws = _guard_repos(repo)
    material = keyfile.load(keyfile.resolve_path(keys, ws.root if ws else None))
    from forkops.secrets import Matcher

    matcher = Matcher(material)
    err = err_console()
    report = []
    for path in paths:
        def progress(objects: int, commits: int, path: Path = path) -> None:
            err.print(f"guard scan: {path.name}: {objects} object(s), {commits} commit(s) read",
                      markup=False, highlight=False)

        result = guard.scan_objects(Repo(path), revs or ["HEAD"], matcher, progress=progress)
        report.append((path, result))
    found = [(p, f) for p, r in report for f in r.findings]
    if as_json:
        print_json({"key_fingerprint": material.key_fingerprint,
                    "repos": [{"path": str(p), "commits": r.commits, "objects": r.objects,
                               "findings": [f.as_json() for f in r.findings]} for p, r in report]})
    else:
        out = console()
        for p, r in report:
            out.print(f"{p}: scanned {r.commits} commit(s), {r.objects} object(s): "
                      + (f"[red]{len(r.findings)} finding(s)[/red]" if r.findings else "clean"))
            for f in r.findings:
                out.print(f"  {f.describe()}", markup=False, highlight=False)
    if found:
        raise NeedsPerson(f"the key or IV is in {len(found)} object(s) of the history",
                          hint="rewrite those commits or tags before pushing them; never push them anywhere public")


hook_app = typer.Typer(hidden=True, help="Entry points of hooks installed by earlier forkops versions.")
guard_app.add_typer(hook_app, name="hook")


def _run_hook(hook: str, keys: Path, args: list[str] | None) -> int:
    from forkops import guard

    return guard.run_hook(hook, keys, args or [], sys.stdin)  # the exit code git sees


@hook_app.command("pre-commit")
def hook_pre_commit(
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE")],
    args: Annotated[list[str] | None, typer.Argument()] = None,
) -> int:
    """Refuse the commit if the staged content holds the key."""
    return _run_hook("pre-commit", keys, args)


@hook_app.command("pre-push")
def hook_pre_push(
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE")],
    args: Annotated[list[str] | None, typer.Argument()] = None,
) -> int:
    """Refuse the push if an outgoing object holds the key."""
    return _run_hook("pre-push", keys, args)
