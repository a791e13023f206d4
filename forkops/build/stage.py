"""Staging: the scratch folder (mode 0700, it will hold the key) with the build context.

* ``context/`` is a clean export (``git archive``, no ``.git``) of the Serving fork at ``bX.Y.Z``,
  with the TensorFlow fork at ``bX.Y.Z`` exported into ``context/tensorflow/`` and
  ``org_tensorflow`` pointed at it (:mod:`forkops.build.bazel`). Without a TensorFlow fork in the
  workspace, the WORKSPACE keeps Serving's own pin (Bazel fetches it at build time).
* The devel Dockerfiles build from that tree (:func:`~forkops.build.dockerfile.rewrite_dockerfile`).
* Shape (a), key sites: the key and IV are written into the staged TensorFlow tree's key sites.
* Shape (b), a decryption library (the TensorFlow playbook has ``[library]``): the serving
  Dockerfiles build it in a stage of their own from ``cryptfile.c`` (copied into the context) and
  a key header that is a BuildKit secret, written to ``secrets/`` beside the context, never in it;
  ``--cryptlib FILE`` passes the user's library the same way instead.

Invariants: the user's checkouts are only read (``git archive``); the key is written only below
the scratch folder (never into the context in shape (b)) and never appears in a docker
argument; the scratch folder is removed on error, at the end unless the caller keeps it, and one
whose build was killed (SIGKILL cannot be caught) by the next build (:func:`remove_stale_stages`).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from forkops.build.bazel import BAZELRC, apply_carried, carry_bazel_defines, describe_pin, rewrite_workspace
from forkops.build.dockerfile import (
    KEY_SECRET_ID,
    KEY_SECRET_TARGET,
    PREBUILT_SECRET_ID,
    SOURCE_IN_CONTEXT,
    LibraryMode,
    add_destination,
    add_library_stage,
    instructions,
    rewrite_dockerfile,
)
from forkops.build.roles import Fork
from forkops.errors import BadInput, NeedsPerson
from forkops.git import Repo
from forkops.playbook import BuildSpec, LibrarySpec

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial


@dataclass(frozen=True)
class Secret:
    """A BuildKit secret: ``--secret id=ID,src=PATH`` (a path, never the value)."""

    id: str
    src: Path


@dataclass
class Stage:
    root: Path  # mode 0700: it holds the key
    context: Path  # the docker build context
    serving: Fork
    tensorflow: Fork | None  # None: org_tensorflow stays as the Serving WORKSPACE pins it
    notes: list[str] = field(default_factory=list)
    key_sites: int = 0
    # BuildKit secrets the serving image builds need (the decryption library stage): files in
    # the staging folder, outside the context, mode 0600.
    secrets: list[Secret] = field(default_factory=list)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def keep(self) -> None:
        """Mark the folder as kept on purpose, so a later build's cleanup leaves it alone."""
        (self.root / OWNER_FILE).write_text(KEPT + "\n")


# The staging folder records its owner so that a later build can remove a folder (holding the
# key) that a SIGKILLed build could not clean up. SIGKILL cannot be caught; this is the mitigation.
STAGE_PREFIX = "forkops-build-"
OWNER_FILE = ".forkops-owner"  # "<pid> <process start time>", or KEPT
KEPT = "kept"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or "-" if unknown.

    Recorded beside the pid so that a recycled pid is not mistaken for the owner."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    fields = stat_line.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ')'
    return fields[19] if len(fields) > 19 else "-"


def _owner_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's: not ours to judge
    return start == "-" or _start_time(pid) in ("-", start)


def remove_stale_stages(parent: Path) -> list[Path]:
    """Remove ``forkops-build-*`` folders in ``parent`` whose owning build process is dead.

    Only folders of this user with an owner file naming a dead process are removed; a folder
    marked kept (``--keep``), without an owner file (made by an older forkops, or by hand) or
    owned by a live process stays. Returns the removed folders.
    """
    removed: list[Path] = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGE_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            words = (Path(entry.path) / OWNER_FILE).read_text().split()
        except OSError:
            continue
        if len(words) != 2 or not words[0].isdigit():
            continue  # KEPT, or not a file we wrote
        if not _owner_alive(int(words[0]), words[1]):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _export(repo: Path, commit: str, dest: Path, scratch: Path) -> None:
    """A clean export of ``commit`` (``git archive``, no .git) into ``dest``."""
    archive = scratch / "export.tar"
    Repo(repo).run("archive", "--format=tar", f"--output={archive}", commit)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


def stage(
    serving: Fork,
    tensorflow: Fork | None,
    material: KeyMaterial,
    variants: Sequence[str],
    *,
    prebuilt_library: Path | None = None,
    scratch_parent: Path | None = None,
) -> Stage:
    """Stage the build context (see the module docstring). On error nothing is left behind.

    ``prebuilt_library`` (``--cryptlib FILE``): the decryption library to ship instead of
    compiling one; BadInput when the forks have no library shape. First removes staging folders
    left in the same temp folder by builds that were killed (see :func:`remove_stale_stages`);
    the new folder records this process as its owner.
    """
    if prebuilt_library is not None and not prebuilt_library.is_file():
        raise BadInput(f"--cryptlib {prebuilt_library}: no such file")
    parent = scratch_parent or Path(tempfile.gettempdir())
    stale = remove_stale_stages(parent)
    root = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=parent))
    os.chmod(root, 0o700)  # mkdtemp already does; say it where the key will live
    st = Stage(root, root / "context", serving, tensorflow)
    if stale:
        st.notes.append(f"removed {len(stale)} staging folder(s) left by killed builds: "
                        + ", ".join(str(p) for p in stale))
    try:
        (root / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        _stage_into(st, material, variants, prebuilt_library)
    except BaseException:
        st.remove()
        raise
    return st


def _stage_into(st: Stage, material: KeyMaterial, variants: Sequence[str], prebuilt: Path | None) -> None:
    spec = st.serving.playbook.build
    assert spec is not None
    _export(st.serving.path, st.serving.commit, st.context, st.root)
    for variant in variants:
        rel = f"{spec.dockerfile_dir}/{spec.devel_gpu if variant == 'gpu' else spec.devel}"
        df = _staged(st, rel)
        df_rw = rewrite_dockerfile(df.read_text(), spec, rel)
        df.write_text(df_rw.text)
        st.notes.append(df_rw.note)

    ws_file = _staged(st, spec.workspace_file)
    tf_root = st.context / spec.tensorflow_dir
    if st.tensorflow is None:
        pin = describe_pin(ws_file.read_text(), spec, spec.workspace_file)
        st.notes.append(f'no local fork with role "{spec.builds_against}" in the workspace: {spec.tf_repo_name} '
                        f"stays as {spec.workspace_file} pins it, {pin}; Bazel fetches it at build time")
    else:
        if tf_root.exists() and any(tf_root.iterdir()):
            raise NeedsPerson(f"{st.serving.name} {st.serving.branch}: already has a {spec.tensorflow_dir}/ folder; "
                              "cannot export the TensorFlow fork there")
        _export(st.tensorflow.path, st.tensorflow.commit, tf_root, st.root)
        local_path = f"{add_destination(spec.source_replacement)}/{spec.tensorflow_dir}"
        ws_rw = rewrite_workspace(ws_file.read_text(), spec, spec.workspace_file, local_path)
        apply_carried(ws_rw.carried, serving_root=st.context, tf_root=tf_root, path=spec.workspace_file)
        ws_file.write_text(ws_rw.text)
        st.notes.append(ws_rw.note)

    library = _library_shape(st, spec, variants)
    if library is not None:
        _stage_library(st, spec, variants, library, material, prebuilt)
    elif prebuilt is not None:
        raise BadInput("--cryptlib: these forks have no decryption library (no [library] in the TensorFlow "
                       "playbook, no library installed by the serving Dockerfile); their key goes into key sites")
    if st.tensorflow is None:
        if library is None:
            st.notes.append("no key written: the TensorFlow that Bazel fetches must already decrypt with your key")
        return
    if library is not None and not st.tensorflow.playbook.key_sites:
        return  # shape (b): the key is in the library only

    from forkops import keys  # lazy: another module's work; imported only when staging

    written = keys.write_sites(tf_root, st.tensorflow.playbook, material)
    st.key_sites = len(written)
    if st.key_sites == 0:
        raise NeedsPerson(f"{st.tensorflow.name} {st.tensorflow.branch}: no key site found in the staged tree; "
                          "the image would not decrypt models with your key")
    defines = carry_bazel_defines(tf_root, st.context, st.tensorflow.playbook, material)
    st.notes.append(f"key {material.key_fingerprint} written into {st.key_sites} key site(s) of the staged "
                    "TensorFlow tree only")
    if defines:
        st.notes.append(f"{BAZELRC}: added {', '.join(f'--define={n}' for n in defines)} to the staged Serving "
                        "tree (Bazel does not read the .bazelrc of a local_repository)")


def _staged(st: Stage, rel: str) -> Path:
    path = st.context / rel
    if not path.is_file():
        raise NeedsPerson(f"{rel}: not found in {st.serving.name} {st.serving.branch}")
    return path


def _serving_dockerfiles(spec: BuildSpec, variants: Sequence[str]) -> list[str]:
    return [f"{spec.dockerfile_dir}/{spec.serving_gpu if v == 'gpu' else spec.serving}" for v in variants]


def _library_shape(st: Stage, spec: BuildSpec, variants: Sequence[str]) -> LibrarySpec | None:
    """The decryption library the image needs: the TensorFlow playbook's ``[library]``; with no
    TensorFlow fork, the library a serving Dockerfile installs (its destination), if any."""
    if st.tensorflow is not None:
        return st.tensorflow.playbook.library
    patterns = [re.compile(rx) for rx in spec.library_install]
    for rel in _serving_dockerfiles(spec, variants):
        for ins in instructions(_staged(st, rel).read_text()):
            if any(p.search(ins.text) for p in patterns):
                return LibrarySpec(path=ins.text.split()[-1])
    return None


def _stage_library(st: Stage, spec: BuildSpec, variants: Sequence[str], library: LibrarySpec,
                   material: KeyMaterial, prebuilt: Path | None) -> None:
    """The library stage in each serving Dockerfile, and its secret beside the context."""
    from forkops import cryptlib  # lazy: only the library shape needs it

    secrets = st.root / "secrets"
    secrets.mkdir(mode=0o700)
    name = PurePosixPath(library.path).name
    mode: LibraryMode
    if prebuilt is not None:
        mode, secret = "prebuilt", Secret(PREBUILT_SECRET_ID, secrets / name)
        shutil.copyfile(prebuilt, secret.src)
        what = f"your library {prebuilt} (passed as a BuildKit secret)"
    else:
        mode, secret = "compile", Secret(KEY_SECRET_ID, secrets / PurePosixPath(KEY_SECRET_TARGET).name)
        source = st.context / SOURCE_IN_CONTEXT
        if source.exists():
            raise NeedsPerson(f"{SOURCE_IN_CONTEXT}: the Serving fork already has this path; forkops puts the "
                              "library source there")
        source.parent.mkdir(parents=True)
        shutil.copyfile(cryptlib.SOURCE, source)
        fd = os.open(secret.src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(cryptlib.key_header(material))
        what = (f"compiled from {SOURCE_IN_CONTEXT} with key {material.key_fingerprint} "
                "(a BuildKit secret, outside the context)")
    os.chmod(secret.src, 0o600)
    argv = [str(a) for a in cryptlib.compile_command(
        Path("/forkops/cryptfile.c"), Path(KEY_SECRET_TARGET), Path(f"/forkops/out/{name}"))]
    for rel in _serving_dockerfiles(spec, variants):
        df = _staged(st, rel)
        rw = add_library_stage(df.read_text(), spec, rel, library=library.path, mode=mode, compile_argv=argv)
        df.write_text(rw.text)
        st.notes.append(rw.note)
    st.secrets.append(secret)
    st.notes.append(f"decryption library {library.path}: {what}")
