"""``forkops build``: stage the Serving build context and build the devel and serving images.

The package, by responsibility:

* :mod:`~forkops.build.roles` — which forks are built, from the roles their playbooks declare;
* :mod:`~forkops.build.dockerfile` — the devel Dockerfiles' source fetch becomes ``ADD .``; the
  serving Dockerfiles' decryption library comes from a stage of forkops' own;
* :mod:`~forkops.build.bazel` — ``org_tensorflow`` becomes the staged local tree (its patches
  applied), key defines repeated in the Serving ``.bazelrc``;
* :mod:`~forkops.build.stage` — the 0700 scratch folder, the context, the key and the secrets;
* :mod:`~forkops.build.images` — the docker commands (tags, BuildKit, caches, Bazel options, push);
* :mod:`~forkops.build.runner` — running them with redacted output and one log.

Invariants (each module states its part): the user's checkouts are only read; the key never
appears in a docker argument, the log, the status line or an error; the scratch folder is
removed afterwards unless kept.
"""

from forkops.build.bazel import (
    BAZELRC,
    CarriedPatches,
    WorkspaceRewrite,
    apply_carried,
    carry_bazel_defines,
    describe_pin,
    rewrite_workspace,
)
from forkops.build.dockerfile import (
    KEY_SECRET_ID,
    LIBRARY_STAGE,
    PREBUILT_SECRET_ID,
    SOURCE_IN_CONTEXT,
    DockerfileRewrite,
    Instruction,
    LibraryRewrite,
    add_destination,
    add_library_stage,
    instructions,
    rewrite_dockerfile,
)
from forkops.build.images import BuildOptions, BuildStep, check_options, commands, image_repo, tags
from forkops.build.roles import Fork, forks
from forkops.build.runner import BuildFailed, BuildReport, new_log, run_builds
from forkops.build.stage import (
    KEPT,
    OWNER_FILE,
    STAGE_PREFIX,
    Secret,
    Stage,
    _start_time,
    remove_stale_stages,
    stage,
)

__all__ = [
    "BAZELRC", "KEPT", "KEY_SECRET_ID", "LIBRARY_STAGE", "OWNER_FILE", "PREBUILT_SECRET_ID", "SOURCE_IN_CONTEXT",
    "STAGE_PREFIX", "BuildFailed", "BuildOptions", "BuildReport", "BuildStep", "CarriedPatches", "DockerfileRewrite",
    "Fork", "Instruction", "LibraryRewrite", "Secret", "Stage", "WorkspaceRewrite", "_start_time",
    "add_destination", "add_library_stage", "apply_carried", "carry_bazel_defines", "check_options", "commands",
    "describe_pin", "forks", "image_repo", "instructions", "new_log", "remove_stale_stages", "rewrite_dockerfile",
    "rewrite_workspace", "run_builds", "stage", "tags",
]
