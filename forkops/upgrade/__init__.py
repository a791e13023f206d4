"""The upgrade flow (docs/SPEC.md sections 1, 5, 6): plan, run, continue, skip, abort, status, push.

Layout, in the order of the flow:

``state``       what a run records (typed ``Phase``, ``Failure``, format version) and where
``preflight``   checks before anything moves (identity, operations in progress, git locks)
``planning``    one repository fully checked, upstream objects fetched, nothing else written
``preview``     ``--plan``: the plan and the predicted stops, changing nothing at all
``rebase``      running ``git rebase``, recording stops, detecting a killed pick
``accounting``  the invariant: every stack commit applied, resolved, emptied, skipped or upstream
``gates``       conflict markers, ``git diff --check`` and the key, before commits and pushes
``steps``       the phase steps after the rebase (verify, anchors, pins, keys)
``machine``     the phase table (``STEPS``) and the commands that drive it
``abort``       ``--abort``: refs, HEAD, tags, config and worktree exactly as before
``status``      ``forkops status`` (a dataclass with ``as_json()``), stop and completion reports
``publish``     ``forkops push``
``masking``     key site values masked out of text forkops shows

Names are resolved on first use (PEP 562): importing any submodule runs this file, and
``forkops status`` needs ``state`` and ``status`` only, not the machine with its anchors, pins
and key scanning behind ``start``. ``abort``, ``preview`` and ``status`` are both a submodule
and its function: import the function from its module (``from forkops.upgrade.status import
status``), as the package attribute is the module once that is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forkops.upgrade.machine import CRASH_ENV, Options, Outcome, resume, start
    from forkops.upgrade.planning import Request
    from forkops.upgrade.publish import push
    from forkops.upgrade.state import Phase, active_run, load_run, load_state
    from forkops.upgrade.status import Status

_HOME = {"CRASH_ENV": "machine", "Options": "machine", "Outcome": "machine",
         "resume": "machine", "start": "machine", "Request": "planning", "push": "publish", "Phase": "state",
         "active_run": "state", "load_run": "state", "load_state": "state", "Status": "status"}

__all__ = ["CRASH_ENV", "Options", "Outcome", "Phase", "Request", "Status", "active_run",
           "load_run", "load_state", "push", "resume", "start"]


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
