"""CLI commands: ``forkops ci workflow`` (the GitHub Actions workflow for ``forkops nightly``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from forkops.cli.common import load_workspace

ci_app = typer.Typer(help="Continuous integration: the nightly GitHub Actions workflow.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ci_app, name="ci")


@ci_app.command("workflow")
def workflow(
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE",
                                                help="Write it to FILE (e.g. .github/workflows/forkops-nightly.yml) "
                                                     "instead of printing it.")] = None,
    install: Annotated[str | None, typer.Option("--install", metavar="REQUIREMENT",
                                                help="What the job pip-installs (default: this forkops version, "
                                                     "forkops==VERSION).")] = None,
) -> None:
    """Print the GitHub Actions workflow that runs `forkops nightly` every night.

    One job per repository of forkops.toml; actions pinned to full commit SHAs; the checkout
    keeps no credentials; each newly incompatible tag gets an issue (nightly --open-issue)."""
    from forkops import __version__, ci, fsutil

    text = ci.workflow(load_workspace(), install=f"forkops=={__version__}" if install is None else install)
    if output is None:
        sys.stdout.write(text)
        return
    fsutil.write_atomic(output, text)
    print(f"wrote {output}", file=sys.stderr)
