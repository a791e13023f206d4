"""Names vulture cannot see being used: called by typer, pytest, http.server or Python's
protocols (signal handlers, ``__exit__``), not by forkops code. `vulture forkops tests` reads
this file as code; nothing imports it.

Add a name here only when a framework calls it; delete dead code instead of listing it.
"""

from forkops import upgrade
from forkops.cli import crypto, keys, resolutions
from forkops.docker import Engine
from tests import conftest
from tests.standins import tf_serving_rest

# typer commands registered with a decorator inside register(app) or on a sub-app
crypto.inspect
keys.guard_scan
keys.guard_install
keys.hook_pre_commit
keys.hook_pre_push
resolutions.list_
resolutions.forget

# a module's PEP 562 attribute hook, called by Python for a name the module does not have yet
upgrade.__getattr__

# pytest autouse fixtures and hooks, http.server handler methods
conftest.hermetic_seal
conftest.pytest_terminal_summary
tf_serving_rest.Handler.log_message  # type: ignore[attr-defined]
tf_serving_rest.Handler.do_GET  # type: ignore[attr-defined]
tf_serving_rest.Handler.do_POST  # type: ignore[attr-defined]

# protocol parameters: signal handlers (signum, frame), context managers (exc_type, exc, tb)
signum  # type: ignore[name-defined]  # noqa: B018, F821
exc_type  # type: ignore[name-defined]  # noqa: B018, F821
tb  # type: ignore[name-defined]  # noqa: B018, F821

# set for the module (tempfile.tempdir in cli/demo.py); a record field shown by `doctor`
_.tempdir  # type: ignore[name-defined]  # noqa: F821
Engine.client
