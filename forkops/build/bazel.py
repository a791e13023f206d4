"""Bazel rewrites of the staged Serving context.

* ``WORKSPACE``: the ``org_tensorflow`` rule becomes a ``local_repository`` at the path the
  Dockerfile's ``ADD`` puts the staged TensorFlow fork (``/tensorflow-serving/tensorflow``).
  ``local_repository`` has no patch attributes, so what the replaced rule applied (``patch``,
  ``patches`` with ``patch_args``, ``patch_cmds``) is applied here to the staged TensorFlow tree, in
  Bazel's order: patch files first, then the commands (``bash -c`` in the TF root).
* ``.bazelrc``: Bazel reads only the main workspace's, so each bazel-define key site of the
  TensorFlow tree is repeated in the staged Serving ``.bazelrc``.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forkops.build.dockerfile import _short
from forkops.errors import BadInput, ConfigError, ExternalError, NeedsPerson
from forkops.playbook import BuildSpec, Playbook

if TYPE_CHECKING:
    from forkops.keyfile import KeyMaterial

# Attributes of a fetching rule that a local_repository replaces without loss.
_FETCH_ATTRS = frozenset({
    "name", "sha256", "git_commit", "commit", "branch", "tag", "remote", "urls", "url",
    "strip_prefix", "shallow_since", "init_submodules", "verbose", "integrity", "type",
    "recursive_init_submodules", "canonical_id",
})
_PATCH_ATTRS = frozenset({"patch", "patches", "patch_args", "patch_cmds", "patch_tool"})


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


def _tf_rule(text: str, spec: BuildSpec, path: str) -> tuple[_Call, str, dict[str, ast.expr]]:
    """The one top-level rule named ``spec.tf_repo_name``: (call, rule name, attributes)."""
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
    return call, rule, attrs


def describe_pin(text: str, spec: BuildSpec, path: str) -> str:
    """``git_repository (branch = "b2.18.0")``: what the Serving WORKSPACE pins TensorFlow to."""
    _call, rule, attrs = _tf_rule(text, spec, path)
    said = [f"{a} = {ast.unparse(attrs[a])}" for a in ("branch", "tag", "commit", "git_commit", "remote")
            if a in attrs]
    return f"{rule} ({', '.join(said)})" if said else rule


def rewrite_workspace(text: str, spec: BuildSpec, path: str, local_path: str) -> WorkspaceRewrite:
    """Point ``spec.tf_repo_name`` at ``local_path`` and return what its old rule patched."""
    call, rule, attrs = _tf_rule(text, spec, path)
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
