"""CLI commands: ``forkops playbook show|validate``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from forkops.cli.common import JsonOption, console, cwd, print_json

playbook_app = typer.Typer(help="Show and validate playbooks (built-in or your own TOML files).",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(playbook_app, name="playbook")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "warnings"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@playbook_app.command("show")
def show(
    name: Annotated[str, typer.Argument(
        help="A built-in playbook (tensorflow, tensorflow-dlopen, serving) or a path.")],
    as_json: JsonOption = False,
) -> None:
    """Print the resolved playbook (defaults filled in)."""
    from forkops import playbook

    pb = playbook.load(name, base_dir=cwd())
    data = _plain(pb)
    if as_json:
        print_json(data)
        return
    out = console()
    out.print(f"[bold]{pb.name}[/bold] ({pb.source}) — {pb.description}")
    out.print(f"  upstream remote [cyan]{pb.upstream_remote}[/cyan], tags [cyan]{pb.upstream_tag}[/cyan]; "
              f"fork branches [cyan]{pb.fork_branch}[/cyan], upstream branches [cyan]{pb.upstream_branch}[/cyan]")
    if pb.role:
        out.print(f"  role [cyan]{pb.role}[/cyan]")
    if pb.library:
        out.print(f"  decryption library {pb.library.path} ({pb.library.symbol}): the key goes into it at build time")
    for a in pb.anchors:
        out.print(f"  anchor [bold]{a.name}[/bold]: {a.symbol} must match /{a.must_contain}/")
        for loc in a.locations:
            out.print(f"    {loc.since or '...'} - {loc.until or '...'}: {loc.path}")
    for s in pb.key_sites:
        out.print(f"  key site [bold]{s.name}[/bold]: {s.value} as {s.encoding} in {', '.join(s.paths)}")
    for p in pb.pins:
        out.print(f"  pin [bold]{p.name}[/bold]: {p.file} -> {p.value}")
    if pb.build:
        out.print(f"  build: {pb.build.dockerfile_dir}/{{{pb.build.devel},{pb.build.serving},"
                  f"{pb.build.devel_gpu},{pb.build.serving_gpu}}}, image {pb.build.image}, "
                  f"built against role {pb.build.builds_against}")
    if pb.smoke:
        out.print(f"  smoke: {pb.smoke.model_name} {list(pb.smoke.instances)} -> {list(pb.smoke.expected)}")
    for w in pb.warnings:
        print(f"forkops: warning: {w}", file=sys.stderr)


@playbook_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Playbook TOML files to check.")],
) -> None:
    """Check playbook files; report every problem as FILE: KEY: PROBLEM (exit 2 if any)."""
    from forkops import playbook
    from forkops.errors import ConfigError, ForkopsError

    problems: list[str] = []
    for path in files:
        try:
            pb = playbook.load_file(path, label=str(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ForkopsError as exc:
            problems.append(exc.message)
            continue
        for w in pb.warnings:
            print(f"forkops: warning: {w}", file=sys.stderr)
        console().print(f"{path}: ok ({len(pb.anchors)} anchors, {len(pb.key_sites)} key sites, {len(pb.pins)} pins)")
    if problems:
        raise ConfigError(problems)
