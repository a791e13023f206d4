"""``forkops build``: stage the Serving build context and build the devel and serving images.

Staging happens in a scratch folder (mode 0700, because it will hold the key), never in the
user's checkouts:

* ``context/`` is a clean export (``git archive``, no ``.git``) of the Serving fork at
  ``bX.Y.Z``, with the TensorFlow fork at ``bX.Y.Z`` exported into ``context/tensorflow/``.
* ``WORKSPACE``: the ``org_tensorflow`` rule becomes a ``local_repository`` at the path the
  Dockerfile's ``ADD`` puts the tree (``/tensorflow-serving/tensorflow``). ``local_repository``
  has no patch attributes, so what the replaced rule applied (``patch``, ``patches`` with
  ``patch_args``, ``patch_cmds``) is applied here to the staged TensorFlow tree, in Bazel's
  order: patch files first, then the commands (run with ``bash -c`` in the TF root).
* ``Dockerfile.devel[-gpu]``: the instruction that fetches the sources (``git clone`` up to
  2.4, ``curl .../tarball | tar`` from 2.5, wherever it is, continuation lines included) is
  replaced by ``ADD . /tensorflow-serving``. A fork that already did so is reported, not an
  error; a file with neither is an error naming the file and the patterns looked for.
* The key and IV are written into the staged TensorFlow tree's key sites (``forkops.keys``).
  Bazel reads only the main workspace's ``.bazelrc``, so each bazel-define key site found in
  the TensorFlow tree is also appended to the staged Serving ``.bazelrc``.

Invariants: the user's checkouts are only read (``git archive``); the key is written only
below the scratch folder and never appears in a docker argument; build output is redacted
(:class:`LogRedactor`) before it reaches the log, the status line or an error; the scratch
folder is removed at the end unless the caller keeps it, and one whose build was killed
(SIGKILL cannot be caught) is removed by the next build (:func:`remove_stale_stages`).
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.docker import Docker, DockerFailed
from forkops.errors import BadInput, ConfigError, ExternalError, NeedsPerson
from forkops.git import Repo
from forkops.playbook import BuildSpec, Playbook
from forkops.version import Version

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial
    from forkops.workspace import RepoConfig, Workspace

# Attributes of a fetching rule that a local_repository replaces without loss.
_FETCH_ATTRS = frozenset({
    "name", "sha256", "git_commit", "commit", "branch", "tag", "remote", "urls", "url",
    "strip_prefix", "shallow_since", "init_submodules", "verbose", "integrity", "type",
    "recursive_init_submodules", "canonical_id",
})
_PATCH_ATTRS = frozenset({"patch", "patches", "patch_args", "patch_cmds", "patch_tool"})


# ---------------------------------------------------------------------------------------
# Dockerfile: replace the source fetch
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    first: int  # index of its first physical line
    last: int  # index of its last physical line (inclusive)
    text: str  # the instruction with continuations joined by single spaces


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with backslash continuations joined (comment lines skipped)."""
    lines = text.splitlines()
    result: list[Instruction] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        first, parts = i, list[str]()
        while True:
            line = lines[i].rstrip()
            if line.strip().startswith("#") and parts:  # comments inside a continued instruction
                i += 1
                continue
            cont = line.endswith("\\")
            parts.append(line[:-1].strip() if cont else line.strip())
            if not cont or i + 1 >= len(lines):
                break
            i += 1
        result.append(Instruction(first, i, " ".join(p for p in parts if p)))
        i += 1
    return result


@dataclass(frozen=True)
class DockerfileRewrite:
    path: str
    text: str
    replaced: tuple[str, ...]  # the fetch instructions replaced
    already: bool  # the fork had already replaced the fetch

    @property
    def note(self) -> str:
        if self.already:
            return f"{self.path}: the fork already builds from local source (ADD .); nothing to replace"
        return f"{self.path}: replaced the source fetch ({_short(self.replaced[0])}) with ADD ."


def rewrite_dockerfile(text: str, spec: BuildSpec, path: str) -> DockerfileRewrite:
    """Replace every instruction matching ``spec.source_fetch`` with ``spec.source_replacement``."""
    patterns = [re.compile(rx) for rx in spec.source_fetch]
    found = [ins for ins in instructions(text) if any(p.search(ins.text) for p in patterns)]
    if not found:
        wanted = " ".join(spec.source_replacement.split())
        if any(" ".join(ins.text.split()) == wanted for ins in instructions(text)):
            return DockerfileRewrite(path, text, (), already=True)
        raise NeedsPerson(
            f"{path}: no source fetch to replace (looked for an instruction matching "
            f"{' or '.join(f'/{rx}/' for rx in spec.source_fetch)}, or an existing `{spec.source_replacement}`)",
            hint="update [build] source_fetch in the serving playbook to match this Dockerfile",
        )
    lines = text.splitlines(keepends=True)
    for ins in reversed(found):  # from the bottom so earlier line numbers stay valid
        lines[ins.first: ins.last + 1] = [
            "# forkops build: the source fetch is replaced by the staged local tree.\n",
            spec.source_replacement + "\n",
        ]
    return DockerfileRewrite(path, "".join(lines), tuple(i.text for i in found), already=False)


def add_destination(replacement: str) -> str:
    """The in-image path of ``ADD . /tensorflow-serving`` (the last word of the instruction)."""
    words = replacement.split()
    if len(words) < 3 or words[0].upper() not in ("ADD", "COPY"):
        raise BadInput(f"[build] source_replacement {replacement!r} is not an ADD/COPY instruction")
    return words[-1].rstrip("/")


# ---------------------------------------------------------------------------------------
# WORKSPACE: org_tensorflow from the staged local tree
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CarriedPatches:
    """What the replaced rule applied to TensorFlow, to be applied to the staged tree."""

    files: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (path in the Serving tree, patch args)
    commands: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.files or self.commands)


@dataclass(frozen=True)
class WorkspaceRewrite:
    path: str
    text: str
    rule: str  # the rule that was there (tensorflow_http_archive, git_repository, ...)
    carried: CarriedPatches
    dropped: tuple[str, ...] = ()  # attributes that have no meaning for a local tree
    already: bool = False

    @property
    def note(self) -> str:
        if self.already:
            return f"{self.path}: org_tensorflow is already a local_repository at the staged path"
        what = []
        if self.carried.files:
            what.append(f"{len(self.carried.files)} patch file(s)")
        if self.carried.commands:
            what.append(f"{len(self.carried.commands)} patch_cmds")
        carried = f"; applied its {' and '.join(what)} to the staged TensorFlow tree" if what else ""
        dropped = f"; dropped {', '.join(self.dropped)}" if self.dropped else ""
        return f"{self.path}: org_tensorflow {self.rule} -> local_repository{carried}{dropped}"


@dataclass(frozen=True)
class _Call:
    start: int
    end: int
    node: ast.Call


def _top_level_calls(text: str, path: str) -> list[_Call]:
    """Top-level calls of a Starlark file (its tokens are Python's), with their char spans."""
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    calls: list[_Call] = []
    depth, start, prev = 0, -1, None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                if depth == 0 and tok.string == "(" and prev is not None and prev.type == tokenize.NAME:
                    start = offsets[prev.start[0] - 1] + prev.start[1]
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0 and start >= 0:
                    end = offsets[tok.end[0] - 1] + tok.end[1]
                    node = ast.parse(text[start:end], mode="eval").body
                    if isinstance(node, ast.Call):
                        calls.append(_Call(start, end, node))
                    start = -1
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                prev = tok
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise BadInput(f"{path}: cannot parse it as Starlark ({exc})") from None
    return calls


def _literal(node: ast.expr, path: str, attr: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise NeedsPerson(f"{path}: org_tensorflow's {attr} is not a literal; forkops cannot carry it over") from None


def _label_path(label: str, path: str) -> str:
    """``//third_party/tensorflow:tensorflow.patch`` -> ``third_party/tensorflow/tensorflow.patch``."""
    m = re.fullmatch(r"(?:@(?:tf_serving)?)?//([^:]*)(?::(.+))?|:?([^:/@][^:@]*)", label)
    if m is None:
        raise NeedsPerson(f"{path}: patch label {label!r} is not in the Serving repository; cannot apply it")
    if m.group(3):
        return m.group(3)
    package, name = m.group(1), m.group(2) or m.group(1).rsplit("/", 1)[-1]
    return f"{package}/{name}" if package else name


def rewrite_workspace(text: str, spec: BuildSpec, path: str, local_path: str) -> WorkspaceRewrite:
    """Point ``spec.tf_repo_name`` at ``local_path`` and return what its old rule patched."""
    matches = []
    for call in _top_level_calls(text, path):
        for kw in call.node.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant) and kw.value.value == spec.tf_repo_name:
                matches.append(call)
    if not matches:
        raise NeedsPerson(f'{path}: no repository rule with name = "{spec.tf_repo_name}" to point at the local '
                          "TensorFlow tree (looked for tensorflow_http_archive, git_repository, http_archive, "
                          "local_repository)")
    if len(matches) > 1:
        raise NeedsPerson(f'{path}: {len(matches)} rules named "{spec.tf_repo_name}"; expected exactly one')
    call = matches[0]
    func = call.node.func
    rule = func.id if isinstance(func, ast.Name) else ast.unparse(func)
    if rule == "maybe" and call.node.args and isinstance(call.node.args[0], ast.Name):
        rule = call.node.args[0].id  # maybe(local_repository, name = ...)
    attrs = {kw.arg: kw.value for kw in call.node.keywords if kw.arg is not None}
    path_attr = attrs.get("path")
    if rule == "local_repository" and isinstance(path_attr, ast.Constant) and path_attr.value == local_path:
        return WorkspaceRewrite(path, text, rule, CarriedPatches(), already=True)

    files: list[tuple[str, tuple[str, ...]]] = []
    if "patch" in attrs:  # tensorflow_http_archive: ctx.patch(patch, strip = 1)
        label = _literal(attrs["patch"], path, "patch")
        if isinstance(label, str) and label:
            files.append((_label_path(label, path), ("-p1",)))
    if "patches" in attrs:  # Bazel's patches: patch_args default to -p0
        labels = _literal(attrs["patches"], path, "patches")
        args = _literal(attrs["patch_args"], path, "patch_args") if "patch_args" in attrs else ["-p0"]
        if not isinstance(labels, list) or not isinstance(args, list):
            raise NeedsPerson(f"{path}: org_tensorflow's patches/patch_args must be lists")
        files += [(_label_path(str(label), path), tuple(str(a) for a in args)) for label in labels]
    commands: list[str] = []
    if "patch_cmds" in attrs:
        cmds = _literal(attrs["patch_cmds"], path, "patch_cmds")
        if not isinstance(cmds, list):
            raise NeedsPerson(f"{path}: org_tensorflow's patch_cmds must be a list of strings")
        commands = [str(c) for c in cmds]
    keep = {"repo_mapping"}
    dropped = tuple(sorted(a for a in attrs if a not in _FETCH_ATTRS | _PATCH_ATTRS | keep | {"path"}))
    extra = "".join(f"    {a} = {ast.unparse(attrs[a])},\n" for a in sorted(keep) if a in attrs)
    block = (
        f"# forkops build: {spec.tf_repo_name} comes from the staged TensorFlow fork (was {rule};\n"
        "# its patches were applied to the staged tree, since local_repository cannot apply them).\n"
        f'local_repository(\n    name = "{spec.tf_repo_name}",\n    path = "{local_path}",\n{extra})'
    )
    new_text = text[: call.start] + block + text[call.end:]
    return WorkspaceRewrite(path, new_text, rule, CarriedPatches(tuple(files), tuple(commands)), dropped)


def apply_carried(carried: CarriedPatches, *, serving_root: Path, tf_root: Path, path: str) -> None:
    """Apply patch files (``patch --batch``) then ``patch_cmds`` (``bash -c``) in ``tf_root``.

    A patch that does not apply, or a command that fails, is NeedsPerson (exit 1): the fork's
    patch no longer fits the fork's TensorFlow, which a person must reconcile. The message names
    the patch file and its first failing hunk. A missing ``patch``/``bash`` is ExternalError
    (exit 3), like a missing git or docker.
    """
    for rel, args in carried.files:
        patch_file = serving_root / rel
        if not patch_file.is_file():
            raise NeedsPerson(f"{path}: org_tensorflow's patch {rel} does not exist in the Serving fork")
        proc = _run(["patch", "--batch", "--forward", "-d", str(tf_root), "-i", str(patch_file), *args])
        if proc.returncode != 0:
            raise NeedsPerson(f"{path}: patch {rel} does not apply to the TensorFlow fork: {_first_failure(proc)}",
                              hint=f"update {rel} in the Serving fork for this TensorFlow fork branch")
    for cmd in carried.commands:
        proc = _run(["bash", "-c", cmd], cwd=tf_root)
        if proc.returncode != 0:
            raise NeedsPerson(f"{path}: patch_cmds {_short(cmd)!r} failed in the TensorFlow tree: {_last(proc)}")


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ExternalError(f"{argv[0]} is not installed; it is needed to apply org_tensorflow's patches") from None


# GNU patch's words for a hunk that did not apply, a file it could not find, a patch already in.
_PATCH_FAILURE = re.compile(r"Hunk #\d+ FAILED|can't find file to patch|No file to patch|"
                            r"Reversed \(or previously applied\) patch detected|malformed patch|"
                            r"Only garbage was found")


def _first_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """``FILE: Hunk #N FAILED at L.`` (the first failing hunk and the file it patches)."""
    target = ""
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if line.startswith(("patching file ", "checking file ")):
            target = line.split(" file ", 1)[1].strip().strip("'")
        elif _PATCH_FAILURE.search(line):
            return f"{target}: {line.strip()}" if target else line.strip()
    return _last(proc)


def _last(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fork:
    name: str
    path: Path
    playbook: Playbook
    branch: str
    commit: str


@dataclass
class Stage:
    root: Path  # mode 0700: it holds the key
    context: Path  # the docker build context
    serving: Fork
    tensorflow: Fork
    notes: list[str] = field(default_factory=list)
    key_sites: int = 0

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


def forks(ws: Workspace, version: Version) -> tuple[Fork, Fork]:
    """(serving, tensorflow): the repos whose playbooks have [build] and key sites, at bX.Y.Z."""
    serving = [r for r in ws.repos if ws.playbook(r).build is not None]
    tensorflow = [r for r in ws.repos if ws.playbook(r).key_sites and ws.playbook(r).build is None]
    if len(serving) != 1 or len(tensorflow) != 1:
        raise BadInput(f"{ws.file}: expected one repository whose playbook has [build] (Serving) and one with "
                       f"key sites (TensorFlow); found {len(serving)} and {len(tensorflow)}")
    return _fork(ws, serving[0], version), _fork(ws, tensorflow[0], version)


def _fork(ws: Workspace, repo: RepoConfig, version: Version) -> Fork:
    pb = ws.playbook(repo)
    branch = pb.fork_branch_name(version)
    git = Repo(repo.path)
    if not git.is_repo():
        raise BadInput(f"{repo.name}: {repo.path} is not a git clone (run `forkops init`)")
    for ref in (branch.ref, f"refs/remotes/origin/{branch}"):
        commit = git.commit_of(ref)
        if commit:
            return Fork(repo.name, repo.path, pb, str(branch), commit)
    raise BadInput(f"{repo.name}: no branch {branch} (nor origin/{branch}) in {repo.path}; "
                   f"run `forkops upgrade {version}` first")


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
    tensorflow: Fork,
    material: KeyMaterial,
    variants: Sequence[str],
    *,
    scratch_parent: Path | None = None,
) -> Stage:
    """Stage the build context (see the module docstring). On error nothing is left behind.

    First removes staging folders left in the same temp folder by builds that were killed
    (see :func:`remove_stale_stages`); the new folder records this process as its owner.
    """
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
        _stage_into(st, material, variants)
    except BaseException:
        st.remove()
        raise
    return st


def _stage_into(st: Stage, material: KeyMaterial, variants: Sequence[str]) -> None:
    spec = st.serving.playbook.build
    assert spec is not None
    _export(st.serving.path, st.serving.commit, st.context, st.root)
    tf_root = st.context / spec.tensorflow_dir
    if tf_root.exists() and any(tf_root.iterdir()):
        raise NeedsPerson(f"{st.serving.name} {st.serving.branch}: already has a {spec.tensorflow_dir}/ folder; "
                          "cannot export the TensorFlow fork there")
    _export(st.tensorflow.path, st.tensorflow.commit, tf_root, st.root)

    local_path = f"{add_destination(spec.source_replacement)}/{spec.tensorflow_dir}"
    ws_file = st.context / spec.workspace_file
    if not ws_file.is_file():
        raise NeedsPerson(f"{spec.workspace_file}: not found in {st.serving.name} {st.serving.branch}")
    ws_rw = rewrite_workspace(ws_file.read_text(), spec, spec.workspace_file, local_path)
    apply_carried(ws_rw.carried, serving_root=st.context, tf_root=tf_root, path=spec.workspace_file)
    ws_file.write_text(ws_rw.text)
    st.notes.append(ws_rw.note)

    for variant in variants:
        rel = f"{spec.dockerfile_dir}/{spec.devel_gpu if variant == 'gpu' else spec.devel}"
        df = st.context / rel
        if not df.is_file():
            raise NeedsPerson(f"{rel}: not found in {st.serving.name} {st.serving.branch}")
        df_rw = rewrite_dockerfile(df.read_text(), spec, rel)
        df.write_text(df_rw.text)
        st.notes.append(df_rw.note)

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


BAZELRC = ".bazelrc"
# What precedes a bazel-define site's value: `--define=NAME=` or `--define NAME=`.
_DEFINE_NAME = re.compile(r"--define[=\s]+([A-Za-z_][A-Za-z0-9_.-]*)=$")


def carry_bazel_defines(tf_root: Path, serving_root: Path, playbook: Playbook, material: KeyMaterial) -> list[str]:
    """Repeat the TensorFlow tree's bazel-define key sites in the Serving tree's ``.bazelrc``.

    TensorFlow is a ``local_repository`` in the Serving build, and Bazel reads only the main
    workspace's ``.bazelrc``, so a ``--define`` in TensorFlow's would not reach the build. For
    every bazel-define site instance found in ``tf_root``, ``build --define=NAME=<value>`` is
    appended to ``serving_root/.bazelrc`` (created if absent), value encoded with
    :func:`forkops.keys.encode` from ``material``: the value is written to that file only, never
    on a command line. ConfigError (nothing written) if the value cannot be a define (a
    ``key_hex`` key), or NeedsPerson if a site's match does not say the define's name.
    Returns the define names written.
    """
    from forkops import keys

    lines: dict[str, str] = {}
    problems: list[str] = []
    for site in playbook.key_sites:
        if site.encoding != "bazel-define":
            continue
        for rel in site.paths:
            full = tf_root / rel
            if not full.is_file():
                continue
            text = full.read_bytes().decode("utf-8", "surrogateescape")
            for m in site.regex.finditer(text):
                line_no = text.count("\n", 0, m.start()) + 1
                name = _DEFINE_NAME.search(text[m.start():m.start("value")])
                if name is None:
                    raise NeedsPerson(f"{rel}:{line_no}: key site {site.name!r} does not match as "
                                      "`--define=NAME=VALUE`; cannot repeat it in the Serving .bazelrc")
                secret = material.key if site.value == "key" else material.iv
                try:
                    value = keys.encode(secret, "bazel-define")
                except keys.Unencodable as exc:
                    problems.append(f"{rel}:{line_no}: key site {site.name!r} refused: {exc}")
                    continue
                lines[name.group(1)] = f"build --define={name.group(1)}={value}\n"
    if problems:
        raise ConfigError(problems)
    if not lines:
        return []
    rc = serving_root / BAZELRC
    old = rc.read_bytes() if rc.is_file() else b""
    sep = b"" if not old or old.endswith(b"\n") else b"\n"
    block = ("\n# forkops build: TensorFlow is a local_repository here, and Bazel does not read its .bazelrc;\n"
             "# its key define(s), repeated (staged copy only).\n" + "".join(lines.values()))
    rc.write_bytes(old + sep + block.encode())  # below the 0700 staging folder
    return list(lines)


# ---------------------------------------------------------------------------------------
# docker build
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    version: Version
    variants: tuple[str, ...] = ("cpu",)
    registry: str | None = None
    builder: str | None = None
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()

    @property
    def buildkit(self) -> bool:
        """BuildKit through ``docker buildx build`` when a builder or a cache is asked for."""
        return bool(self.builder or self.cache_from or self.cache_to)


@dataclass(frozen=True)
class BuildStep:
    variant: str  # "cpu" | "gpu"
    kind: str  # "devel" | "serving"
    tag: str
    args: tuple[str, ...]  # docker arguments (without the leading "docker")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.variant}"


def image_repo(spec: BuildSpec, registry: str | None) -> str:
    return f"{registry.rstrip('/')}/{spec.image}" if registry else spec.image


def tags(spec: BuildSpec, options: BuildOptions, variant: str) -> tuple[str, str]:
    """(devel tag, serving tag): ``<registry>/tensorflow-serving:X.Y.Z-devel[-gpu]``, ``:X.Y.Z[-gpu]``."""
    repo = image_repo(spec, options.registry)
    suffix = "-gpu" if variant == "gpu" else ""
    return f"{repo}:{options.version}-devel{suffix}", f"{repo}:{options.version}{suffix}"


def commands(spec: BuildSpec, options: BuildOptions, context: Path, serving: Fork) -> list[BuildStep]:
    """The docker builds, in order: for each variant, the devel image then the serving image."""
    steps = []
    labels = ("--build-arg", f"TF_SERVING_VERSION_GIT_BRANCH={serving.branch}",
              "--build-arg", f"TF_SERVING_VERSION_GIT_COMMIT={serving.commit}")
    for variant in options.variants:
        devel_tag, serving_tag = tags(spec, options, variant)
        gpu = variant == "gpu"
        devel_df = context / spec.dockerfile_dir / (spec.devel_gpu if gpu else spec.devel)
        serving_df = context / spec.dockerfile_dir / (spec.serving_gpu if gpu else spec.serving)
        # The build cache pays off for the long devel build (Bazel); the serving image only
        # copies the binary out of it, and sharing one cache ref between both would clobber it.
        devel = (*_front(options, with_cache=True), "--file", str(devel_df), "--tag", devel_tag, *labels,
                 str(context))
        serving_args = (*_front(options, with_cache=False), "--file", str(serving_df), "--tag", serving_tag,
                        "--build-arg", f"TF_SERVING_BUILD_IMAGE={devel_tag}", *labels, str(context))
        steps.append(BuildStep(variant, "devel", devel_tag, devel))
        steps.append(BuildStep(variant, "serving", serving_tag, serving_args))
    return steps


def _front(options: BuildOptions, *, with_cache: bool) -> tuple[str, ...]:
    if not options.buildkit:
        return ("build",)
    args = ["buildx", "build"]
    if options.builder:
        args += ["--builder", options.builder]
    args += ["--load", "--progress=plain"]  # --load: the serving build starts FROM the devel image
    if with_cache:
        for ref in options.cache_from:
            args += ["--cache-from", ref]
        for ref in options.cache_to:
            args += ["--cache-to", ref]
    return tuple(args)


@dataclass
class BuildReport:
    steps: list[BuildStep]
    log: Path | None = None
    seconds: list[float] = field(default_factory=list)


class BuildFailed(DockerFailed):
    """A docker build failed; ``tail`` holds its last lines, ``log`` the full log."""


class LogRedactor:
    """Replaces the key (and a non-default IV) in a line of build output with ``<key FP>``.

    Bazel echoes rc options (``--announce_rc``: ``--define=MODEL_ENCRYPT_KEY=...``) and a
    compiler error may quote a key site, so every line of build output passes through here
    before it reaches the log, the live status or the failure tail. Detection is
    :class:`forkops.guard.Matcher` (every encoding the guard knows); the spans are located the
    same way (raw bytes as they are; hex, ``\\xNN`` and byte arrays case- and
    whitespace-insensitively). Invariant: a returned line never holds a secret the Matcher
    finds; if a hit cannot be located, the whole line is withheld.
    """

    def __init__(self, material: KeyMaterial) -> None:
        from forkops.guard import Matcher

        self.matcher = Matcher(material)

    def __call__(self, line: bytes) -> bytes:
        from forkops.guard import squeeze

        if not self.matcher.find(line):
            return line
        body = line.rstrip(b"\r\n")
        end = line[len(body):]
        keep = [i for i, c in enumerate(body) if c not in b" \t\r\n\f\v"]  # norm index -> line index
        norm = body.lower().translate(None, b" \t\r\n\f\v")
        spans: list[tuple[int, int, str]] = []
        for n in self.matcher.needles:
            label = f"<{n.what} {n.fingerprint}>"
            spans += [(a, a + len(n.raw), label) for a in _occurrences(body, n.raw)]
            found = [(a, a + len(f)) for f in (n.hex, n.escaped) for a in _occurrences(norm, f)]
            spans += [(keep[a], keep[b - 1] + 1, label) for a, b in found if b > a]
            squeezed, where = squeeze(body)
            spans += [(where[m.start()], where[m.end() - 1] + 1, label) for m in n.array.finditer(squeezed)]
        out, pos = bytearray(), 0
        for a, b, label in sorted(spans):
            if b <= pos:
                continue
            out += body[pos:max(a, pos)] + label.encode()
            pos = b
        out += body[pos:]
        if self.matcher.find(bytes(out)):
            fps = ", ".join(f"{n.what} {n.fingerprint}" for n in self.matcher.needles)
            return f"<line withheld: it holds key material ({fps})>".encode() + end
        return bytes(out) + end


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    found, i = [], data.find(needle)
    while needle and i >= 0:
        found.append(i)
        i = data.find(needle, i + 1)
    return found


def run_builds(
    docker: Docker,
    steps: Sequence[BuildStep],
    *,
    log: Path,
    material: KeyMaterial,
    on_line: Callable[[BuildStep, int, str], None] | None = None,
) -> BuildReport:
    """Run each step in order; stop at the first failure with BuildFailed.

    Every output line is redacted (:class:`LogRedactor`) before the log, ``on_line`` and the
    failure tail see it.
    """
    report = BuildReport(list(steps), log)
    redact = LogRedactor(material)
    # BUILDKIT_PROGRESS=plain: line-oriented output from BuildKit; the classic builder ignores it.
    env = {"BUILDKIT_PROGRESS": "plain"}
    for index, step in enumerate(steps):
        started = time.monotonic()

        def forward(line: str, step: BuildStep = step, index: int = index) -> None:
            if on_line is not None:
                on_line(step, index, line)

        code, tail = docker.stream(step.args, log=log, on_line=forward, env=env, redact=redact)
        report.seconds.append(time.monotonic() - started)
        if code != 0:
            raise BuildFailed(f"docker build of {step.tag} ({step.label})", code, tail, log)
    return report


def new_log(version: Version) -> Path:
    """A private (0600) log file for the whole build; it outlives the scratch folder."""
    fd, name = tempfile.mkstemp(prefix=f"forkops-build-{version}-", suffix=".log")
    os.close(fd)
    return Path(name)
