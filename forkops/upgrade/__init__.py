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
"""

from __future__ import annotations

from forkops.upgrade.abort import abort
from forkops.upgrade.machine import CRASH_ENV, Options, Outcome, resume, start
from forkops.upgrade.planning import Request
from forkops.upgrade.preview import preview
from forkops.upgrade.publish import push
from forkops.upgrade.state import Phase, active_run, load_run, load_state
from forkops.upgrade.status import Status, status

__all__ = ["CRASH_ENV", "Options", "Outcome", "Phase", "Request", "Status", "abort", "active_run",
           "load_run", "load_state", "preview", "push", "resume", "start",
           "status"]
