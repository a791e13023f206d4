"""CLI commands: (not built yet)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Nothing is registered until these commands work."""
