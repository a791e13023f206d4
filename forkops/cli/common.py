"""Helpers shared by the command modules: consoles, workspace loading, JSON output."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from forkops.workspace import Workspace


def console() -> Console:
    """Human output (stdout)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    """Progress and warnings (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def load_workspace() -> Workspace:
    from forkops import workspace

    ws = workspace.load()
    for warning in ws.warnings:
        print(f"forkops: warning: {warning}", file=sys.stderr)
    return ws


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
