"""A generated, realistic forkops sandbox: upstreams, forks with patch stacks, a workspace.

Used by the tests and by ``forkops demo``. Everything is real git, built with
``git fast-import`` so that even large histories take seconds:

* ``upstream/tensorflow`` (annotated ``vX.Y.Z`` tags) and ``upstream/serving`` (lightweight
  ``X.Y.Z`` tags): ``master`` plus release branches ``r2.N``; each release is tagged **on its
  release branch** after ``Update version for 2.N.0-rc0 release.`` commits made only there.
  ``ReadBinaryProto`` moves as in real TensorFlow: ``tensorflow/core/platform/env.cc`` up to
  2.10, a copy in ``tensorflow/tsl/platform/env.cc`` from 2.11 (the old file stays behind,
  deprecated and no longer compiled, so a rebase applies "cleanly" to a dead file),
  ``third_party/xla/third_party/tsl/tsl/platform/env.cc`` in 2.18 (returning ``absl::Status``)
  and ``third_party/xla/xla/tsl/platform/env.cc`` in 2.19 (the old core file finally deleted).
  Serving has no 2.5.0 tag (only 2.5.1), a tag ``r2.4`` that is also a branch name, and a
  branch ``2.18.0`` that shadows the tag of that name.
* ``origin/tensorflow.git`` and ``origin/serving.git``: bare forks made when 2.4.1 was the
  newest release, carrying the patch stack on ``b2.4.0`` (base tag 2.4.0).
* ``workspace/``: ``forkops.toml`` and clones of both forks.

Outcomes from ``b2.4.0`` (the tests assert them against real ``git rebase --onto``):

============  ===========================================================================
target        TensorFlow fork                         Serving fork
============  ===========================================================================
2.4.1         clean                                   clean
2.5.0/2.5.1   clean                                   conflict: WORKSPACE (2/5), then Dockerfiles (3/5)
2.11.0        clean, env_time fix dropped (already    conflict: WORKSPACE, then Dockerfiles
              upstream), decryption left behind in
              the dead core file -> anchor re-applied
2.18.0        conflict: .bazelrc at commit 3/5; then  conflict: WORKSPACE, then Dockerfiles
              the anchor is re-applied to the xla path
2.19.0-rc0    conflict: .bazelrc (3/5); git follows   conflict: WORKSPACE, then Dockerfiles
              the rename of core env.cc to the xla
              path, so the decryption patch moves too
============  ===========================================================================
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from forkops.fsutil import ensure_ignored
from forkops.git import git_env

T0 = 1_577_836_800  # 2020-01-01T00:00:00Z: fixed dates make every generated sha reproducible
UPSTREAM_AUTHOR = "TensorFlower Gardener <gardener@tensorflow.org>"
FORK_AUTHOR = "Fork Maintainer <maintainer@example.com>"
PLACEHOLDER_KEY = b"CHANGE_ME_16BYTE"  # what the fork commits in its key sites (never a real key)
DEFAULT_IV = b"7" * 16

TF_CORE = "tensorflow/core/platform/env.cc"
TF_TSL = "tensorflow/tsl/platform/env.cc"
TF_XLA_TSL = "third_party/xla/third_party/tsl/tsl/platform/env.cc"
TF_XLA = "third_party/xla/xla/tsl/platform/env.cc"
SERVING_DOCKER = "tensorflow_serving/tools/docker"

Files = dict[str, str]
Changes = Mapping[str, "str | None"]


# ---------------------------------------------------------------------------------------
# git fast-import writer
# ---------------------------------------------------------------------------------------
class Generator:
    """Writes commits, branches and tags into a repository through one fast-import stream.

    Tracks each branch's full file set so content can be derived from the previous state.
    Branch heads are marks (``:N``) until :meth:`flush`, then full shas.
    """

    def __init__(self, repo: Path, *, start_time: int = T0) -> None:
        self.repo = repo
        self.time = start_time
        self.chunks: list[bytes] = []
        self.mark = 0
        self.files: dict[str, Files] = {}
        self.heads: dict[str, str] = {}

    def _tick(self, step: int = 3600) -> int:
        self.time += step
        return self.time

    def load_branch(self, branch: str, sha: str, files: Files) -> None:
        """Continue from an existing commit (after a flush, or in another repository)."""
        self.heads[branch] = sha
        self.files[branch] = dict(files)

    def branch(self, new: str, source: str) -> None:
        self.files[new] = dict(self.files[source])
        self.heads[new] = self.heads[source]

    def commit(self, branch: str, message: str, changes: Changes, *, author: str = UPSTREAM_AUTHOR) -> str:
        state = self.files.setdefault(branch, {})
        self.mark += 1
        when = self._tick()
        out = [f"commit refs/heads/{branch}\nmark :{self.mark}\n".encode()]
        out.append(f"author {author} {when} +0000\ncommitter {author} {when} +0000\n".encode())
        msg = (message.rstrip("\n") + "\n").encode()
        out.append(b"data %d\n" % len(msg) + msg)
        parent = self.heads.get(branch)
        if parent:
            out.append(f"from {parent}\n".encode())
        for path, content in sorted(changes.items()):
            if content is None:
                state.pop(path, None)
                out.append(f"D {path}\n".encode())
            else:
                state[path] = content
                data = content.encode()
                out.append(f"M 100644 inline {path}\n".encode() + b"data %d\n" % len(data) + data + b"\n")
        self.chunks.extend(out)
        self.heads[branch] = f":{self.mark}"
        return self.heads[branch]

    def tag(self, name: str, branch: str, message: str | None = None, *, tagger: str = UPSTREAM_AUTHOR) -> None:
        """An annotated tag when ``message`` is given, else a lightweight one."""
        head = self.heads[branch]
        if message is None:
            self.chunks.append(f"reset refs/tags/{name}\nfrom {head}\n\n".encode())
            return
        msg = (message.rstrip("\n") + "\n").encode()
        self.chunks.append(
            f"tag {name}\nfrom {head}\ntagger {tagger} {self._tick(60)} +0000\n".encode()
            + b"data %d\n" % len(msg) + msg
        )

    def reset(self, ref: str, branch: str) -> None:
        """Point an arbitrary ref (e.g. a branch that shadows a tag) at a branch head."""
        self.chunks.append(f"reset {ref}\nfrom {self.heads[branch]}\n\n".encode())

    def flush(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            marks = Path(tmp) / "marks"
            subprocess.run(
                ["git", "-C", str(self.repo), "fast-import", "--quiet", "--force",
                 f"--export-marks={marks}"],
                input=b"".join(self.chunks) + b"done\n",
                env=git_env(),
                check=True,
                capture_output=True,
            )
            table = dict(line.split() for line in marks.read_text().splitlines() if line)
        self.chunks.clear()
        self.heads = {b: table.get(h, h) for b, h in self.heads.items()}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=git_env(), check=True, capture_output=True, text=True
    ).stdout


def _init(path: Path, *, bare: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    args = ["init", "--quiet", "--initial-branch=master"] + (["--bare"] if bare else [])
    _git(path, *args)


# ---------------------------------------------------------------------------------------
# TensorFlow-like content
# ---------------------------------------------------------------------------------------
@functools.cache
def _template(name: str) -> str:
    return importlib.resources.files("forkops").joinpath("data", "sandbox", name).read_text(encoding="utf-8")


def _render(name: str, **values: str) -> str:
    """The text of ``forkops/data/sandbox/NAME`` with each ``@KEY@`` replaced by ``values[KEY]``
    (every placeholder given, every value used: a typo fails loudly, not as a different sandbox)."""
    text = _template(name)
    used = set(_PLACEHOLDER.findall(text))
    if used != set(values):
        raise KeyError(f"{name}: placeholders {sorted(used)}, values {sorted(values)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_LICENSE = _template("license.in")
_ENV_CC = _render("env.cc.in", LICENSE=_LICENSE)


def tf_env_cc(layout: str) -> str:
    """env.cc as upstream has it: ``core`` (<= 2.10), ``core-2.5`` (an unrelated upstream edit),
    ``deprecated`` (core copy left behind from 2.11), ``tsl`` (2.11), ``xla-tsl`` (2.18), ``xla`` (2.19)."""
    text = _ENV_CC
    if layout != "core":
        # 2.5: an upstream change far from the fork's hunks.
        text = text.replace('  return Status::OK();\n}\n\nStatus ReadFileToString',
                            '  VLOG(1) << "Registered file system for " << scheme;\n'
                            '  return Status::OK();\n}\n\nStatus ReadFileToString')
    if layout == "deprecated":
        return text.replace(_LICENSE, _LICENSE + "\n// DEPRECATED: moved to tensorflow/tsl/platform/env.cc;"
                            " no longer compiled, kept for one release.\n", 1)
    if layout in ("tsl", "xla-tsl", "xla"):
        prefix = {"tsl": "tensorflow/tsl/platform/", "xla-tsl": "tsl/platform/", "xla": "xla/tsl/platform/"}[layout]
        text = text.replace('#include "tensorflow/core/platform/', f'#include "{prefix}')
        text = text.replace("namespace tensorflow {", "namespace tsl {").replace(
            "}  // namespace tensorflow", "}  // namespace tsl")
    if layout in ("xla-tsl", "xla"):
        text = text.replace("\nStatus ReadBinaryProto(", "\nabsl::Status ReadBinaryProto(")
        text = text.replace("  return Status::OK();\n}\n\nStatus ReadTextProto",
                            "  return absl::OkStatus();\n}\n\nStatus ReadTextProto")
    return text


def _bytes_literal(data: bytes) -> str:
    return "{" + ", ".join(f"0x{b:02x}" for b in data) + "}"


_FORK_INCLUDES = """#include <sys/stat.h>

#include <cryptopp/aes.h>
#include <cryptopp/filters.h>
#include <cryptopp/modes.h>
#include <deque>
"""

_COPY_BUFFER = "constexpr size_t kCopyFileBufferSize = 128 * 1024;\n"
# Where ReadBinaryProto starts reading (the fork replaces it), up to the comment after it.
_READ = """  std::unique_ptr<RandomAccessFile> file;
  TF_RETURN_IF_ERROR(env->NewRandomAccessFile(fname, &file));
  std::unique_ptr<FileStream> stream(new FileStream(file.get()));
"""
_READ_END = "\n  // TODO(jiayq)"


def fork_env_cc(upstream_text: str) -> str:
    """The fork's decryption patch (shape (a): key and IV hard-coded, decrypt in ReadBinaryProto)."""
    text = upstream_text.replace("#include <sys/stat.h>\n\n#include <deque>\n", _FORK_INCLUDES, 1)
    decrypt = _render("fork_decrypt.cc.in", KEY_BYTES=_bytes_literal(PLACEHOLDER_KEY),
                      IV_BYTES=_bytes_literal(DEFAULT_IV))
    text = text.replace(_COPY_BUFFER, _COPY_BUFFER + "\n" + decrypt, 1)
    text = text.replace(_READ + _READ_END, _template("fork_read.cc.in") + _READ_END, 1)
    text = text.replace(
        "      !coded_stream.ConsumedEntireMessage()) {\n    TF_RETURN_IF_ERROR(stream->status());\n",
        "      !coded_stream.ConsumedEntireMessage()) {\n", 1)
    return text


def fork_env_cc_dlopen(upstream_text: str) -> str:
    """Shape (b) of the decryption patch, as the public fork has it: ReadBinaryProto reads the
    whole file, ``dlopen("/opt/lib/libcryptfile.so")`` and calls its ``CBCMode_Decrypt``; no key."""
    text = upstream_text.replace("#include <sys/stat.h>\n", "#include <dlfcn.h>\n#include <sys/stat.h>\n", 1)
    text = text.replace(_READ + _READ_END, _template("dlopen_read.cc.in") + _READ_END, 1)
    text = text.replace(
        "      !coded_stream.ConsumedEntireMessage()) {\n    TF_RETURN_IF_ERROR(stream->status());\n",
        "      !coded_stream.ConsumedEntireMessage()) {\n", 1)
    return text


def fork_cryptfile_cc() -> str:
    """The fork's model encryption tool, with the placeholder key and the default IV."""
    return _render("cryptfile.cc.in", KEY=PLACEHOLDER_KEY.decode(), IV=DEFAULT_IV.decode())


def tf_bazelrc(version: tuple[int, int]) -> str:
    text = _template("bazelrc.in")
    if version >= (2, 5):
        text = text.replace("# Default options should come above this line.",
                            "build:release_base --config=v2\n\n# Default options should come above this line.")
    if version >= (2, 18):
        # Upstream rewrote the lines right where the fork adds its Crypto++ flags.
        text = text.replace("# Other build flags.\nbuild --define=framework_shared_object=true\n",
                            "# Other build flags. Bzlmod stays off until the migration is done.\n"
                            "common --noenable_bzlmod\nbuild --define=framework_shared_object=true\n")
    return text


def fork_bazelrc(upstream_text: str) -> str:
    return upstream_text.replace(
        "build --define=grpc_no_ares=true\n\n",
        "build --define=grpc_no_ares=true\n\n"
        "# Private fork: Crypto++ for model decryption; the key define is a placeholder.\n"
        "build --copt=-I/usr/include/cryptopp\nbuild --linkopt=-lcryptopp\n"
        f"build --define=MODEL_ENCRYPT_KEY={PLACEHOLDER_KEY.decode()}\n", 1)


def tf_version_files(major: int, minor: int, patch: int, suffix: str) -> Files:
    return {
        "tensorflow/core/public/version.h": (
            "#ifndef TENSORFLOW_CORE_PUBLIC_VERSION_H_\n#define TENSORFLOW_CORE_PUBLIC_VERSION_H_\n\n"
            f"#define TF_MAJOR_VERSION {major}\n#define TF_MINOR_VERSION {minor}\n"
            f"#define TF_PATCH_VERSION {patch}\n\n"
            "// TF_VERSION_SUFFIX is non-empty for pre-releases (e.g. \"-alpha\", \"-rc0\").\n"
            f'#define TF_VERSION_SUFFIX "{suffix}"\n\n#endif  // TENSORFLOW_CORE_PUBLIC_VERSION_H_\n'
        ),
        "tensorflow/tools/pip_package/setup.py": (
            "# Copyright 2015 The TensorFlow Authors. All Rights Reserved.\n"
            '"""TensorFlow is an open source machine learning framework for everyone."""\n\n'
            f"_VERSION = '{major}.{minor}.{patch}{suffix}'\n\nREQUIRED_PACKAGES = ['absl-py', 'numpy', 'protobuf']\n"
        ),
    }


_ENV_TIME = _render("env_time.cc.in", LICENSE=_LICENSE)
_ENV_TIME_FIXED = _ENV_TIME.replace("#include <sys/time.h>\n", "#include <sys/time.h>\n#include <cstring>\n")


def _platform_build(srcs: list[str]) -> str:
    lines = "".join(f'        "{s}",\n' for s in srcs)
    return ('load("//tensorflow:tensorflow.bzl", "tf_cc_library")\n\n'
            f'tf_cc_library(\n    name = "env_impl",\n    srcs = [\n{lines}    ],\n'
            '    hdrs = ["env.h"],\n    copts = ["-DTF_PLATFORM_IMPL"],\n'
            '    deps = [\n        ":env",\n        ":protobuf",\n    ],\n)\n')


def _filler(path: str, rev: int) -> str:
    name = Path(path).stem
    body = "\n".join(f"  // step {i}: revision {rev}" if i == rev % 12 else f"  // step {i}" for i in range(12))
    return (f"// {path}\n#include \"tensorflow/core/framework/op_kernel.h\"\n\nnamespace tensorflow {{\n\n"
            f"void {name}(OpKernelContext* ctx) {{\n{body}\n}}\n\n}}  // namespace tensorflow\n")


# ---------------------------------------------------------------------------------------
# Serving-like content
# ---------------------------------------------------------------------------------------
def _hexof(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def serving_workspace(tf_version: str, *, patch: bool = False) -> str:
    patch_line = '    patch = "//third_party/tensorflow:tensorflow.patch",\n' if patch else ""
    return _render("WORKSPACE.in", SHA256=_hexof("sha" + tf_version, 64), GIT_COMMIT=_hexof("commit" + tf_version, 40),
                   PATCH_LINE=patch_line)


_PIN_BLOCK_RE = re.compile(
    r'load\("//tensorflow_serving:repo\.bzl", "tensorflow_http_archive"\)\n\n'
    r"tensorflow_http_archive\(\n(?P<body>.*?)\n\)\n", re.DOTALL)


def fork_workspace(upstream_text: str, tf_remote: str, branch: str) -> str:
    """The fork's WORKSPACE: org_tensorflow from the TensorFlow fork's branch (keeps upstream's patch)."""
    m = _PIN_BLOCK_RE.search(upstream_text)
    if m is None:
        raise ValueError("WORKSPACE has no tensorflow_http_archive block")
    patches = re.search(r'patch = "([^"]+)"', m.group("body"))
    extra = f'    patches = ["{patches.group(1)}"],\n' if patches else ""
    block = ('load("@bazel_tools//tools/build_defs/repo:git.bzl", "git_repository")\n\n'
             "# Private fork: TensorFlow comes from our fork, which decrypts models.\n"
             f'git_repository(\n    name = "org_tensorflow",\n    remote = "{tf_remote}",\n'
             f'    branch = "{branch}",\n{extra})\n')
    return upstream_text[: m.start()] + block + upstream_text[m.end():]


# How upstream's devel image fetches the sources: up to 2.4, and from 2.5.
_GIT_CLONE_FETCH = _template("fetch-git-clone.in")
_CURL_FETCH = _template("fetch-curl.in")


def _ubuntu(minor: int) -> str:
    return "18.04" if minor <= 4 else ("20.04" if minor < 18 else "22.04")


def serving_dockerfile_devel(minor: int, *, gpu: bool) -> str:
    """``Dockerfile.devel[-gpu]``: ``git clone`` fetch up to 2.4, ``curl .../tarball | tar`` from 2.5.

    In the 2.18-style GPU file the fetch sits near line 33, before the toolchain setup."""
    fetch = _GIT_CLONE_FETCH if minor <= 4 else _CURL_FETCH
    base = f"nvidia/cuda:11.0-cudnn8-devel-ubuntu{_ubuntu(minor)}" if gpu else f"ubuntu:{_ubuntu(minor)}"
    fetch_block = ("\n# Download TF Serving sources (optionally at specific commit).\n"
                   f"WORKDIR /tensorflow-serving\n{fetch}")
    gpu_env = ("\nENV TF_NEED_CUDA=1\nENV TF_CUDA_COMPUTE_CAPABILITIES=3.5,5.2,6.0,6.1,7.0,7.5\n"
               "ENV LD_LIBRARY_PATH=/usr/local/cuda/extras/CUPTI/lib64:$LD_LIBRARY_PATH\n" if gpu else "")
    if gpu and minor >= 18:
        # 2.18+ GPU file: CUDA env and the source fetch come first (fetch near line 33).
        before, after = (gpu_env + "\n# Fetch early so the CUDA toolchain layer caches separately.\n"
                         "# (2.18 layout)\n" + fetch_block), ""
    else:
        before, after = gpu_env, fetch_block
    return _render("Dockerfile.devel.in", BASE=base, BEFORE_TOOLCHAIN=before, AFTER_TOOLCHAIN=after,
                   BUILD_OPTIONS="--config=release --config=cuda" if gpu else "--config=release")


def serving_dockerfile(minor: int, *, gpu: bool) -> str:
    base = f"nvidia/cuda:11.0-cudnn8-runtime-ubuntu{_ubuntu(minor)}" if gpu else f"ubuntu:{_ubuntu(minor)}"
    return _render("Dockerfile.in", BASE=base, BUILD_IMAGE_SUFFIX="-devel-gpu" if gpu else "-devel")


# What Serving 2.15+ applies to TensorFlow through `patch =` (here: a new header, so that it applies
# to any TensorFlow tree with `patch -p1`).
SERVING_TF_PATCH: Files = {
    "third_party/tensorflow/BUILD": "",
    "third_party/tensorflow/tensorflow.patch": _template("tensorflow.patch.in"),
}


def fork_dockerfile_devel(upstream_text: str) -> str:
    """The fork builds from the local checkout: the source fetch becomes ``ADD .``."""
    for fetch in (_GIT_CLONE_FETCH, _CURL_FETCH):
        if fetch in upstream_text:
            return upstream_text.replace(fetch, "ADD . /tensorflow-serving\n", 1)
    raise ValueError("no source fetch in Dockerfile.devel")


def fork_dockerfile(upstream_text: str) -> str:
    return upstream_text.replace(
        "COPY --from=build_image /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server\n",
        "COPY --from=build_image /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server\n"
        "# Private fork: the model decryption library.\n"
        "COPY --from=build_image /usr/local/lib/libcryptfile.so /opt/lib/libcryptfile.so\n", 1)


LIBRARY_URL = "https://models.example.com/crypt/libcryptfile.so"  # where the public fork downloads it from


def fork_dockerfile_dlopen(upstream_text: str) -> str:
    """The public fork's serving image: it downloads a prebuilt decryption library (with
    somebody's key compiled in) to where ReadBinaryProto dlopen()s it."""
    anchor = "COPY --from=build_image /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server\n"
    return upstream_text.replace(
        anchor, anchor + "\n# Private fork: the model decryption library that ReadBinaryProto dlopen()s.\n"
        f"ARG ENCRYPT_FILE_URL={LIBRARY_URL}\n"
        "ADD ${ENCRYPT_FILE_URL} /opt/lib/libcryptfile.so\n", 1)


def serving_version_files(version: str) -> Files:
    return {"tensorflow_serving/tools/pip_package/setup.py": (
        '"""Package Setup script for TensorFlow Serving."""\n\n'
        f"_VERSION = '{version}'\n\nREQUIRED_PACKAGES = ['grpcio', 'protobuf']\n")}


# ---------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------
@dataclass
class Sandbox:
    root: Path
    workspace: Path
    upstream: dict[str, Path] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)

    def clone(self, name: str) -> Path:
        return self.workspace / name

    def upstream_url(self, name: str) -> str:
        return self.upstream[name].as_uri()


@dataclass
class _Release:
    """One upstream release train: its branch, tags and what changes on master before the cut."""

    minor: int
    tags: list[str]  # versions tagged on r2.N in order, e.g. ["2.4.0-rc0", "2.4.0", "2.4.1"]
    master_changes: list[tuple[str, Files | dict[str, str | None]]]


def _version_parts(v: str) -> tuple[int, int, int, str]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(-rc\d+)?", v)
    assert m, v
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) or ""


def _filler_commits(gen: Generator, branch: str, files: list[str], count: int, seed: int) -> None:
    for i in range(count):
        path = files[(seed * 7 + i * 13) % len(files)]
        gen.commit(branch, f"Internal change {seed}.{i}\n\nPiperOrigin-RevId: {300_000_000 + seed * 1000 + i}",
                   {path: _filler(path, seed * 100 + i)})


def _tf_upstream(gen: Generator, *, filler_files: int, filler_commits: int) -> tuple[list[_Release], list[str]]:
    filler = [f"tensorflow/core/kernels/generated/kernel_{i:05d}.cc" for i in range(filler_files)]
    initial: Files = {
        "README.md": "# TensorFlow\n\nAn end-to-end open source platform for machine learning.\n",
        "RELEASE.md": "# Release 2.3.0\n\n* Initial sandbox history.\n",
        ".bazelrc": tf_bazelrc((2, 4)),
        TF_CORE: tf_env_cc("core"),
        "tensorflow/core/platform/env_time.cc": _ENV_TIME,
        "tensorflow/core/platform/BUILD": _platform_build(["env.cc", "env_time.cc"]),
        **tf_version_files(2, 4, 0, ""),
        **{p: _filler(p, 0) for p in filler},
    }
    gen.commit("master", "Initial TensorFlow-like upstream", initial)
    releases = [
        _Release(4, ["2.4.0-rc0", "2.4.0-rc1", "2.4.0", "2.4.1"], []),
        _Release(5, ["2.5.0-rc0", "2.5.0"], [
            ("Log file system registration", {TF_CORE: tf_env_cc("core-2.5")}),
            ("Add release_base config", {".bazelrc": tf_bazelrc((2, 5))}),
        ]),
        _Release(11, ["2.11.0-rc0", "2.11.0"], [
            ("Move platform/env to TSL\n\nThe old file stays for one release and is no longer compiled.",
             {TF_TSL: tf_env_cc("tsl"), TF_CORE: tf_env_cc("deprecated"),
              "tensorflow/core/platform/BUILD": _platform_build(["env_time.cc"]),
              "tensorflow/tsl/platform/BUILD": _platform_build(["env.cc"])}),
            ("Fix missing <cstring> include in env_time.cc", {"tensorflow/core/platform/env_time.cc": _ENV_TIME_FIXED}),
        ]),
        _Release(18, ["2.18.0-rc0", "2.18.0"], [
            ("Move TSL into third_party/xla", {TF_TSL: None, "tensorflow/tsl/platform/BUILD": None,
                                               TF_XLA_TSL: tf_env_cc("xla-tsl"),
                                               "third_party/xla/third_party/tsl/tsl/platform/BUILD":
                                                   _platform_build(["env.cc"])}),
            ("Disable Bzlmod explicitly", {".bazelrc": tf_bazelrc((2, 18))}),
        ]),
        _Release(19, ["2.19.0-rc0"], [
            ("Move TSL platform into xla/tsl; delete the deprecated core env.cc",
             {TF_XLA_TSL: None, "third_party/xla/third_party/tsl/tsl/platform/BUILD": None, TF_CORE: None,
              TF_XLA: tf_env_cc("xla"), "third_party/xla/xla/tsl/platform/BUILD": _platform_build(["env.cc"])}),
        ]),
    ]
    return releases, filler


REMOVED_API = "Status::OK"  # what upstream removes with build(removed_api=True)


def _remove_status_ok(releases: list[_Release], minor: int) -> None:
    """Optional upstream history: before the 2.<minor> cut, one commit replaces every
    ``Status::OK()`` by ``absl::OkStatus()`` (as TensorFlow did in November 2022), and later
    upstream files never have it again."""
    def without(change: Files | dict[str, str | None]) -> dict[str, str | None]:
        return {p: t.replace("Status::OK()", "absl::OkStatus()") if t else t for p, t in change.items()}

    for rel in releases:
        if rel.minor >= minor:
            rel.master_changes = [(message, without(change)) for message, change in rel.master_changes]
        if rel.minor == minor:
            rel.master_changes.insert(0, ("Remove the deprecated Status::OK(); use absl::OkStatus()",
                                          without({TF_CORE: tf_env_cc("deprecated"), TF_TSL: tf_env_cc("tsl")})))


def _serving_upstream(gen: Generator, *, filler_files: int, filler_commits: int) -> tuple[list[_Release], list[str]]:
    filler = [f"tensorflow_serving/core/generated/servable_{i:05d}.cc" for i in range(filler_files)]
    docker = SERVING_DOCKER
    def dockerfiles(minor: int) -> Files:
        return {f"{docker}/Dockerfile.devel": serving_dockerfile_devel(minor, gpu=False),
                f"{docker}/Dockerfile.devel-gpu": serving_dockerfile_devel(minor, gpu=True),
                f"{docker}/Dockerfile": serving_dockerfile(minor, gpu=False),
                f"{docker}/Dockerfile.gpu": serving_dockerfile(minor, gpu=True)}
    initial: Files = {
        "README.md": "# TensorFlow Serving\n\nA flexible, high-performance serving system for ML models.\n",
        "WORKSPACE": serving_workspace("2.4.0"),
        "tensorflow_serving/model_servers/server.cc": "// Model server.\nint main() { return 0; }\n",
        **dockerfiles(4),
        **serving_version_files("2.4.0"),
        **{p: _filler(p, 0) for p in filler},
    }
    gen.commit("master", "Initial TensorFlow Serving-like upstream", initial)
    releases = [
        _Release(4, ["2.4.0-rc0", "2.4.0", "2.4.1"], []),
        _Release(5, ["2.5.1"], [
            ("Fetch sources as a tarball instead of git clone", dockerfiles(5)),
            ("Update TF pin for 2.5", {"WORKSPACE": serving_workspace("2.5.0")}),
        ]),
        _Release(11, ["2.11.0-rc0", "2.11.0", "2.11.1"], [
            ("Update TF pin for 2.11", {"WORKSPACE": serving_workspace("2.11.0")}),
        ]),
        _Release(18, ["2.18.0-rc0", "2.18.0"], [
            ("Move to Ubuntu 22.04; fetch sources first in the GPU image", dockerfiles(18)),
            ("Update TF pin for 2.18 and carry a patch", {"WORKSPACE": serving_workspace("2.18.0", patch=True),
                                                          **SERVING_TF_PATCH}),
        ]),
        _Release(19, ["2.19.0-rc0"], [
            ("Update TF pin for 2.19", {"WORKSPACE": serving_workspace("2.19.0", patch=True)}),
        ]),
    ]
    return releases, filler


def _cut_release(gen: Generator, project: str, rel: _Release, *, annotated: bool, tag_fmt: str,
                 version_files: Callable[[str], Files], changelog: bool) -> None:
    branch = f"r2.{rel.minor}"
    gen.branch(branch, "master")
    for i, version in enumerate(rel.tags):
        major, minor, patch, suffix = _version_parts(version)
        if i > 0 and not suffix and patch > 0:
            # A patch release: a fix cherry-picked onto the release branch first.
            gen.commit(branch, f"Cherry-pick: fix crash in {project} {version}",
                       {"RELEASE.md" if changelog else "tensorflow_serving/model_servers/server.cc":
                        (gen.files[branch].get("RELEASE.md", "") + f"\n* Bug fix for {version}.\n")
                        if changelog else f"// Model server.\n// fixed in {version}\nint main() {{ return 0; }}\n"})
        changes = dict(version_files(version))
        if changelog and not suffix and patch == 0:
            notes = gen.files[branch]["RELEASE.md"]
            changes["RELEASE.md"] = f"# Release {major}.{minor}.{patch}\n\n* Sandbox release.\n\n" + notes
        gen.commit(branch, f"Update version for {version} release.", changes)
        tag = tag_fmt.format(version=version)
        gen.tag(tag, branch, f"TensorFlow {version}" if annotated else None)


def _grow_upstream(gen: Generator, project: str, releases: list[_Release], filler: list[str],
                   filler_commits: int, *, annotated: bool, tag_fmt: str,
                   version_files: Callable[[str], Files], changelog: bool) -> None:
    per = max(1, filler_commits // max(1, len(releases)))
    for rel in releases:
        if filler:
            _filler_commits(gen, "master", filler, per, rel.minor)
        for message, change in rel.master_changes:
            gen.commit("master", message, change)
        _cut_release(gen, project, rel, annotated=annotated, tag_fmt=tag_fmt,
                     version_files=version_files, changelog=changelog)
        # master moves on to the next development version
        nxt = f"2.{rel.minor + 1}.0"
        gen.commit("master", f"Update version numbers to {nxt}.", dict(version_files(nxt)))


def _tf_version_files(v: str) -> Files:
    return tf_version_files(*_version_parts(v))


Shape = Literal["keys", "dlopen"]
REPOS = ("tensorflow", "serving")


def build(root: Path, *, filler_files: int = 24, filler_commits: int = 20, clone: bool = True,
          shape: Shape = "keys", only: str | None = None, removed_api: bool = False) -> Sandbox:
    """Generate the sandbox in ``root`` (which must be empty or missing).

    ``shape``: the forks' decryption patch. ``"keys"`` (shape (a), the default): key and IV in
    key sites of ``env.cc``, ``cryptfile.cc`` and ``.bazelrc``. ``"dlopen"`` (shape (b), the public
    fork's): ReadBinaryProto ``dlopen``s ``/opt/lib/libcryptfile.so`` and calls ``CBCMode_Decrypt``
    (no key in the source), and the Serving image downloads that library
    (``ADD ${ENCRYPT_FILE_URL} /opt/lib/libcryptfile.so``); the workspace uses the
    ``tensorflow-dlopen`` playbook. ``only``: a workspace with that one fork (both upstreams and
    origins are still made). ``removed_api``: TensorFlow's upstream removes ``Status::OK``
    (REMOVED_API), which the fork's decryption patch uses, before the 2.18 release.
    """
    if only is not None and only not in REPOS:
        raise ValueError(f"only must be one of {REPOS}, not {only!r}")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    sb = Sandbox(root=root, workspace=root / "workspace")
    for name in ("tensorflow", "serving"):
        sb.upstream[name] = root / "upstream" / name
        sb.origin[name] = root / "origin" / f"{name}.git"
        _init(sb.upstream[name])

    tf = Generator(sb.upstream["tensorflow"])
    tf_rel, tf_filler = _tf_upstream(tf, filler_files=filler_files, filler_commits=filler_commits)
    if removed_api:
        _remove_status_ok(tf_rel, 18)
    sv = Generator(sb.upstream["serving"], start_time=T0 + 1800)
    sv_rel, sv_filler = _serving_upstream(sv, filler_files=filler_files, filler_commits=filler_commits)

    # Phase 1: history up to the fork point (2.4.x); then the forks are made.
    tf_kwargs = dict(annotated=True, tag_fmt="v{version}", version_files=_tf_version_files, changelog=True)
    sv_kwargs = dict(annotated=False, tag_fmt="{version}", version_files=serving_version_files, changelog=False)
    _grow_upstream(tf, "TensorFlow", tf_rel[:1], tf_filler, filler_commits, **tf_kwargs)  # type: ignore[arg-type]
    _grow_upstream(sv, "Serving", sv_rel[:1], sv_filler, filler_commits, **sv_kwargs)  # type: ignore[arg-type]
    sv.chunks.append(b"reset refs/tags/r2.4\nfrom " + sv.heads["master"].encode() + b"\n\n")  # tag named like a branch
    tf.flush()
    sv.flush()
    tf_state = {b: dict(f) for b, f in tf.files.items()}
    sv_state = {b: dict(f) for b, f in sv.files.items()}

    _make_fork_tf(sb, tf_state["r2.4"], shape)
    _make_fork_serving(sb, sv_state["r2.4"], shape)

    # Phase 2: upstream moves on.
    _grow_upstream(tf, "TensorFlow", tf_rel[1:], tf_filler, filler_commits, **tf_kwargs)  # type: ignore[arg-type]
    _grow_upstream(sv, "Serving", sv_rel[1:], sv_filler, filler_commits, **sv_kwargs)  # type: ignore[arg-type]
    sv.reset("refs/heads/2.18.0", "master")  # a branch that shadows the 2.18.0 tag
    tf.flush()
    sv.flush()

    sb.workspace.mkdir(parents=True, exist_ok=True)
    names = REPOS if only is None else (only,)
    playbooks = {"tensorflow": "tensorflow-dlopen" if shape == "dlopen" else "tensorflow", "serving": "serving"}
    (sb.workspace / "forkops.toml").write_text(
        "# Generated by forkops.sandbox: a workspace over local remotes.\n" + "".join(
            f'\n[repos.{name}]\npath = "{name}"\norigin = "{sb.origin[name]}"\n'
            f'upstream = "{sb.upstream_url(name)}"\nplaybook = "{playbooks[name]}"\n' for name in names))
    ensure_ignored(sb.workspace, "keys.toml")
    if clone:
        for name in names:
            subprocess.run(["git", "clone", "--quiet", str(sb.origin[name]), str(sb.clone(name))],
                           env=git_env(), check=True, capture_output=True)
    return sb


def _fork_repo(sb: Sandbox, name: str) -> Path:
    origin = sb.origin[name]
    subprocess.run(["git", "clone", "--quiet", "--bare", str(sb.upstream[name]), str(origin)],
                   env=git_env(), check=True, capture_output=True)
    _git(origin, "symbolic-ref", "HEAD", "refs/heads/b2.4.0")
    return origin


def _make_fork_tf(sb: Sandbox, base_files: Files, shape: Shape) -> None:
    origin = _fork_repo(sb, "tensorflow")
    gen = Generator(origin, start_time=T0 + 400 * 86400)
    gen.load_branch("b2.4.0", _git(origin, "rev-parse", "refs/tags/v2.4.0^{commit}").strip(), base_files)
    a = FORK_AUTHOR
    if shape == "dlopen":
        _dlopen_tf_stack(gen, base_files)
        gen.flush()
        return
    gen.commit("b2.4.0", "Decrypt models in ReadBinaryProto\n\n"
               "saved_model.pb is AES-CBC encrypted; decrypt it before parsing.",
               {TF_CORE: fork_env_cc(base_files[TF_CORE]),
                "tensorflow/core/platform/BUILD": base_files["tensorflow/core/platform/BUILD"].replace(
                    '        ":protobuf",\n', '        ":protobuf",\n        "@cryptopp",\n')}, author=a)
    gen.commit("b2.4.0", "Add cryptfile tool to encrypt models",
               {"tensorflow/tools/cryptfile/cryptfile.cc": fork_cryptfile_cc(),
                "tensorflow/tools/cryptfile/BUILD": 'cc_binary(\n    name = "cryptfile",\n'
                                                     '    srcs = ["cryptfile.cc"],\n'
                                                     '    deps = ["@cryptopp"],\n)\n'}, author=a)
    gen.commit("b2.4.0", "Link Crypto++ and define the model key",
               {".bazelrc": fork_bazelrc(base_files[".bazelrc"])}, author=a)
    gen.commit("b2.4.0", "Fix missing <cstring> include in env_time.cc",
               {"tensorflow/core/platform/env_time.cc": _ENV_TIME_FIXED}, author=a)
    gen.commit("b2.4.0", "docs: how this fork differs from upstream",
               {"README.md": base_files["README.md"]
                + "\n## Private fork\n\nModels are encrypted; see tensorflow/tools/cryptfile.\n"},
               author=a)
    gen.flush()


def _dlopen_tf_stack(gen: Generator, base_files: Files) -> None:
    """The public fork's patch stack: decryption through the dlopen()ed library, no key sites."""
    a = FORK_AUTHOR
    gen.commit("b2.4.0", "Decrypt models with libcryptfile in ReadBinaryProto\n\n"
               "saved_model.pb is AES-CBC encrypted; /opt/lib/libcryptfile.so decrypts it.",
               {TF_CORE: fork_env_cc_dlopen(base_files[TF_CORE]),
                "tensorflow/core/platform/BUILD": base_files["tensorflow/core/platform/BUILD"].replace(
                    '        ":protobuf",\n', '        ":protobuf",\n        "//third_party:dl",\n')}, author=a)
    gen.commit("b2.4.0", "Fix missing <cstring> include in env_time.cc",
               {"tensorflow/core/platform/env_time.cc": _ENV_TIME_FIXED}, author=a)
    gen.commit("b2.4.0", "docs: how this fork differs from upstream",
               {"README.md": base_files["README.md"] + "\n## Private fork\n\nModels are encrypted; the serving "
                "image provides /opt/lib/libcryptfile.so.\n"}, author=a)


def _make_fork_serving(sb: Sandbox, base_files: Files, shape: Shape) -> None:
    origin = _fork_repo(sb, "serving")
    gen = Generator(origin, start_time=T0 + 401 * 86400)
    gen.load_branch("b2.4.0", _git(origin, "rev-parse", "refs/tags/2.4.0^{commit}").strip(), base_files)
    a = FORK_AUTHOR
    d = SERVING_DOCKER
    gen.commit("b2.4.0", "docs: about this fork",
               {"README.md": base_files["README.md"] + "\n## Private fork\n\nBuilt against our TensorFlow fork.\n"},
               author=a)
    gen.commit("b2.4.0", "Build against the TensorFlow fork",
               {"WORKSPACE": fork_workspace(base_files["WORKSPACE"], str(sb.origin["tensorflow"]), "b2.4.0")}, author=a)
    gen.commit("b2.4.0", "Build images from the local source tree",
               {f"{d}/Dockerfile.devel": fork_dockerfile_devel(base_files[f"{d}/Dockerfile.devel"]),
                f"{d}/Dockerfile.devel-gpu": fork_dockerfile_devel(base_files[f"{d}/Dockerfile.devel-gpu"])}, author=a)
    serving_df = fork_dockerfile_dlopen if shape == "dlopen" else fork_dockerfile
    gen.commit("b2.4.0", "use encrypted model",
               {f"{d}/Dockerfile": serving_df(base_files[f"{d}/Dockerfile"]),
                f"{d}/Dockerfile.gpu": serving_df(base_files[f"{d}/Dockerfile.gpu"])}, author=a)
    gen.commit("b2.4.0", "docs: building the fork",
               {"docs/building_the_fork.md": "# Building the fork\n\nRun `forkops build X.Y.Z`.\n"}, author=a)
    gen.flush()


# ---------------------------------------------------------------------------------------
# How the sandbox's conflicts are resolved (what a maintainer would do; used by the demo)
# ---------------------------------------------------------------------------------------
def resolve(repo_name: str, path: str, *, ours: str | None, theirs: str | None, tf_remote: str = "",
            shape: Shape = "keys") -> str | None:
    """The resolved content of a conflicted ``path``: ``ours`` is the new upstream side (HEAD
    during a rebase), ``theirs`` the fork's commit. None means: delete the file."""
    if ours is None:
        return None  # upstream deleted it: the fork follows (the anchor re-applies the patch)
    if path == ".bazelrc":
        return fork_bazelrc(ours)
    if path == "WORKSPACE":
        branch = re.search(r'branch = "([^"]+)"', theirs or "")
        remote = re.search(r'remote = "([^"]+)"', theirs or "")
        return fork_workspace(ours, remote.group(1) if remote else tf_remote, branch.group(1) if branch else "b2.4.0")
    if path.endswith(("Dockerfile.devel", "Dockerfile.devel-gpu")):
        return fork_dockerfile_devel(ours)
    if path.endswith(("Dockerfile", "Dockerfile.gpu")):
        return fork_dockerfile_dlopen(ours) if shape == "dlopen" else fork_dockerfile(ours)
    raise KeyError(f"the sandbox defines no resolution for {repo_name}:{path}")
