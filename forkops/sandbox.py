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

import hashlib
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
_LICENSE = """/* Copyright 2015 The TensorFlow Authors. All Rights Reserved.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
==============================================================================*/
"""

_ENV_CC = _LICENSE + """
#include "tensorflow/core/platform/env.h"

#include <sys/stat.h>

#include <deque>
#include <utility>
#include <vector>

#include "tensorflow/core/platform/env_time.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/host_info.h"
#include "tensorflow/core/platform/path.h"
#include "tensorflow/core/platform/protobuf.h"

namespace tensorflow {

// 128KB copy buffer
constexpr size_t kCopyFileBufferSize = 128 * 1024;

class FileSystemRegistryImpl : public FileSystemRegistry {
 public:
  Status Register(const string& scheme, Factory factory) override;
  FileSystem* Lookup(const string& scheme) override;

 private:
  mutable mutex mu_;
  mutable std::unordered_map<string, std::unique_ptr<FileSystem>> registry_
      TF_GUARDED_BY(mu_);
};

Status FileSystemRegistryImpl::Register(const string& scheme,
                                        FileSystemRegistry::Factory factory) {
  mutex_lock lock(mu_);
  if (!registry_.emplace(scheme, std::unique_ptr<FileSystem>(factory()))
           .second) {
    return errors::AlreadyExists("File factory for ", scheme,
                                 " already registered");
  }
  return Status::OK();
}

Status ReadFileToString(Env* env, const string& fname, string* data) {
  uint64 file_size;
  TF_RETURN_IF_ERROR(env->GetFileSize(fname, &file_size));
  std::unique_ptr<RandomAccessFile> file;
  TF_RETURN_IF_ERROR(env->NewRandomAccessFile(fname, &file));
  data->resize(file_size);
  char* p = &*data->begin();
  StringPiece result;
  TF_RETURN_IF_ERROR(file->Read(0, file_size, &result, p));
  if (result.data() != p) {
    memmove(p, result.data(), result.size());
  }
  return Status::OK();
}

Status WriteBinaryProto(Env* env, const string& fname,
                        const protobuf::MessageLite& proto) {
  string serialized;
  proto.AppendToString(&serialized);
  return WriteStringToFile(env, fname, serialized);
}

Status ReadBinaryProto(Env* env, const string& fname,
                       protobuf::MessageLite* proto) {
  std::unique_ptr<RandomAccessFile> file;
  TF_RETURN_IF_ERROR(env->NewRandomAccessFile(fname, &file));
  std::unique_ptr<FileStream> stream(new FileStream(file.get()));

  // TODO(jiayq): the following coded stream is for debugging purposes to allow
  // one to parse arbitrarily large messages for MessageLite. One most likely
  // doesn't want to put protobufs larger than 64MB on Android, so we should
  // eventually remove this and quit loud when a large protobuf is passed in.
  protobuf::io::CodedInputStream coded_stream(stream.get());
  // Total bytes hard limit / warning limit are set to 1GB and 512MB
  // respectively.
  coded_stream.SetTotalBytesLimit(1024LL << 20, 512LL << 20);

  if (!proto->ParseFromCodedStream(&coded_stream) ||
      !coded_stream.ConsumedEntireMessage()) {
    TF_RETURN_IF_ERROR(stream->status());
    return errors::DataLoss("Can't parse ", fname, " as binary proto");
  }
  return Status::OK();
}

Status ReadTextProto(Env* env, const string& fname,
                     protobuf::Message* proto) {
  std::unique_ptr<RandomAccessFile> file;
  TF_RETURN_IF_ERROR(env->NewRandomAccessFile(fname, &file));
  std::unique_ptr<FileStream> stream(new FileStream(file.get()));
  if (!protobuf::TextFormat::Parse(stream.get(), proto)) {
    TF_RETURN_IF_ERROR(stream->status());
    return errors::DataLoss("Can't parse ", fname, " as text proto");
  }
  return Status::OK();
}

}  // namespace tensorflow
"""


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

_FORK_DECRYPT = f"""constexpr size_t kCopyFileBufferSize = 128 * 1024;

// Model decryption (private fork). The key and IV below are placeholders:
// `forkops set-key` writes the real ones into the working tree only.
byte key[CryptoPP::AES::DEFAULT_KEYLENGTH] = {_bytes_literal(PLACEHOLDER_KEY)};
byte iv[CryptoPP::AES::BLOCKSIZE] = {_bytes_literal(DEFAULT_IV)};

Status decryptCBC(const string& cipher, byte key[], int key_size, byte iv[],
                  string* recovered) {{
  try {{
    CryptoPP::CBC_Mode<CryptoPP::AES>::Decryption d;
    d.SetKeyWithIV(key, key_size, iv);
    CryptoPP::StringSource s(cipher, true,
                             new CryptoPP::StreamTransformationFilter(
                                 d, new CryptoPP::StringSink(*recovered)));
  }} catch (const CryptoPP::Exception& e) {{
    return errors::DataLoss("Can't decrypt binary proto");
  }}
  return Status::OK();
}}
"""

_FORK_READ = """  std::unique_ptr<RandomAccessFile> file;
  TF_RETURN_IF_ERROR(env->NewRandomAccessFile(fname, &file));
  std::unique_ptr<FileStream> stream(new FileStream(file.get()));

  // TODO(jiayq)"""

_FORK_READ_NEW = """  // The model file is AES-CBC encrypted: read it whole and decrypt it first.
  string encrypted;
  TF_RETURN_IF_ERROR(ReadFileToString(env, fname, &encrypted));
  string plain;
  TF_RETURN_IF_ERROR(decryptCBC(encrypted, key, sizeof(key), iv, &plain));
  std::unique_ptr<protobuf::io::ArrayInputStream> stream(
      new protobuf::io::ArrayInputStream(plain.data(), plain.size()));

  // TODO(jiayq)"""


def fork_env_cc(upstream_text: str) -> str:
    """The fork's decryption patch (shape (a): key and IV hard-coded, decrypt in ReadBinaryProto)."""
    text = upstream_text.replace("#include <sys/stat.h>\n\n#include <deque>\n", _FORK_INCLUDES, 1)
    text = text.replace("constexpr size_t kCopyFileBufferSize = 128 * 1024;\n", _FORK_DECRYPT, 1)
    text = text.replace(_FORK_READ, _FORK_READ_NEW, 1)
    text = text.replace(
        "      !coded_stream.ConsumedEntireMessage()) {\n    TF_RETURN_IF_ERROR(stream->status());\n",
        "      !coded_stream.ConsumedEntireMessage()) {\n", 1)
    return text


_DLOPEN_READ_NEW = """  // The model file is AES-CBC encrypted: read it whole and decrypt it with the library the
  // image ships (the key is compiled into that library, never into this source).
  string encrypted;
  TF_RETURN_IF_ERROR(ReadFileToString(env, fname, &encrypted));
  void* lib = dlopen("/opt/lib/libcryptfile.so", RTLD_NOW);
  if (lib == nullptr) {
    return errors::Internal("Can't load /opt/lib/libcryptfile.so: ", dlerror());
  }
  typedef unsigned long (*DecryptFn)(const char*, char**, unsigned long);
  DecryptFn decrypt = reinterpret_cast<DecryptFn>(dlsym(lib, "CBCMode_Decrypt"));
  if (decrypt == nullptr) {
    return errors::Internal("No CBCMode_Decrypt in /opt/lib/libcryptfile.so");
  }
  char* plain = nullptr;
  // CBCMode_Decrypt returns the plaintext length (0: it did not decrypt) and sets plain,
  // which the caller never frees.
  unsigned long plain_size = decrypt(encrypted.data(), &plain, encrypted.size());
  if (plain_size == 0) {
    return errors::DataLoss("Can't decrypt ", fname, " (wrong key?)");
  }
  std::unique_ptr<protobuf::io::ArrayInputStream> stream(
      new protobuf::io::ArrayInputStream(plain, plain_size));

  // TODO(jiayq)"""

def fork_env_cc_dlopen(upstream_text: str) -> str:
    """Shape (b) of the decryption patch, as the public fork has it: ReadBinaryProto reads the
    whole file, ``dlopen("/opt/lib/libcryptfile.so")`` and calls its ``CBCMode_Decrypt``; no key."""
    text = upstream_text.replace("#include <sys/stat.h>\n", "#include <dlfcn.h>\n#include <sys/stat.h>\n", 1)
    text = text.replace(_FORK_READ, _DLOPEN_READ_NEW, 1)
    text = text.replace(
        "      !coded_stream.ConsumedEntireMessage()) {\n    TF_RETURN_IF_ERROR(stream->status());\n",
        "      !coded_stream.ConsumedEntireMessage()) {\n", 1)
    return text


FORK_CRYPTFILE_CC = f"""// cryptfile: encrypts saved_model.pb for the fork's ReadBinaryProto (AES-CBC, PKCS#7).
// The key and IV are placeholders: `forkops set-key` writes the real ones (never commit them).
#include <fstream>
#include <iostream>
#include <sstream>

#include "cryptopp/aes.h"
#include "cryptopp/filters.h"
#include "cryptopp/modes.h"

static const char kKey[] = "{PLACEHOLDER_KEY.decode()}";
static const char kIv[] = "{DEFAULT_IV.decode()}";

int main(int argc, char** argv) {{
  if (argc != 3) {{
    std::cerr << "usage: cryptfile IN OUT" << std::endl;
    return 2;
  }}
  std::ifstream in(argv[1], std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string plain = buffer.str(), cipher;
  CryptoPP::CBC_Mode<CryptoPP::AES>::Encryption e;
  e.SetKeyWithIV(reinterpret_cast<const CryptoPP::byte*>(kKey), 16,
                 reinterpret_cast<const CryptoPP::byte*>(kIv));
  CryptoPP::StringSource s(plain, true,
                           new CryptoPP::StreamTransformationFilter(
                               e, new CryptoPP::StringSink(cipher)));
  std::ofstream(argv[2], std::ios::binary) << cipher;
  return 0;
}}
"""

_BAZELRC = """# TensorFlow Bazel configuration file.
# This file tries to group and simplify build options for TensorFlow
#
# ----CONFIG OPTIONS----
#     Android options:
#         android:
#         android_arm:
#     Compiler options:
#         avx_linux:             Build with avx instruction set on linux.
#         avx2_linux:            Build with avx2 instruction set on linux.

build --define=use_fast_cpp_protos=true
build --define=allow_oversize_protos=true

build --spawn_strategy=standalone
build -c opt

# Make Bazel print out all options from rc files.
build --announce_rc

build --define=grpc_no_ares=true

# Other build flags.
build --define=framework_shared_object=true
build --java_toolchain=//third_party/toolchains/java:tf_java_toolchain

# Default options should come above this line.
try-import %workspace%/.tf_configure.bazelrc
"""


def tf_bazelrc(version: tuple[int, int]) -> str:
    text = _BAZELRC
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


_ENV_TIME = _LICENSE + """
#include <sys/time.h>
#include <time.h>

#include "tensorflow/core/platform/env_time.h"

namespace tensorflow {

uint64 EnvTime::NowNanos() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (static_cast<uint64>(ts.tv_sec) * kSecondsToNanos +
          static_cast<uint64>(ts.tv_nsec));
}

}  // namespace tensorflow
"""
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
    return f"""workspace(name = "tf_serving")

# ===== TensorFlow dependency =====
#
# TensorFlow is imported here instead of in tf_serving_workspace() because
# existing automation scripts that bump the TF commit hash expect it here.
#
# To update TensorFlow to a new revision.
# 1. Update the 'git_commit' args below to include the new git hash.
# 2. Get the sha256 hash of the archive with a command such as...
#    curl -L https://github.com/tensorflow/tensorflow/archive/<git hash>.tar.gz | sha256sum
#    and update the 'sha256' arg with the result.
# 3. Request the new archive to be mirrored on mirror.bazel.build for more
#    reliable downloads.
load("//tensorflow_serving:repo.bzl", "tensorflow_http_archive")

tensorflow_http_archive(
    name = "org_tensorflow",
    sha256 = "{_hexof('sha' + tf_version, 64)}",
    git_commit = "{_hexof('commit' + tf_version, 40)}",
{patch_line})

# Import all of TensorFlow Serving's external dependencies.
# Downstream projects (projects importing TF Serving) need to
# duplicate all code below in their WORKSPACE file in order to also initialize
# those external dependencies.
load("//tensorflow_serving:workspace.bzl", "tf_serving_workspace")

tf_serving_workspace()

# Check bazel version requirement, which is stricter than TensorFlow's.
load("@bazel_skylib//lib:versions.bzl", "versions")

versions.check("3.7.2")
"""


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


_GIT_CLONE_FETCH = """RUN git clone --branch=${TF_SERVING_VERSION_GIT_BRANCH} https://github.com/tensorflow/serving . && \\
    git remote add upstream https://github.com/tensorflow/serving.git && \\
    if [ "${TF_SERVING_VERSION_GIT_COMMIT}" != "head" ]; then git checkout ${TF_SERVING_VERSION_GIT_COMMIT} ; fi
"""
_CURL_FETCH = ("RUN curl -sSL --retry 5 https://github.com/tensorflow/serving/tarball/"
               "${TF_SERVING_VERSION_GIT_COMMIT} | tar --strip-components=1 -xzf -\n")


def serving_dockerfile_devel(minor: int, *, gpu: bool) -> str:
    """``Dockerfile.devel[-gpu]``: ``git clone`` fetch up to 2.4, ``curl .../tarball | tar`` from 2.5.

    In the 2.18-style GPU file the fetch sits near line 33, before the toolchain setup."""
    fetch = _GIT_CLONE_FETCH if minor <= 4 else _CURL_FETCH
    ubuntu = "18.04" if minor <= 4 else ("20.04" if minor < 18 else "22.04")
    base = (f"nvidia/cuda:11.0-cudnn8-devel-ubuntu{ubuntu}" if gpu else f"ubuntu:{ubuntu}")
    head = f"""# Copyright 2018 Google LLC
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     https://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
FROM {base} as base_build

ARG TF_SERVING_VERSION_GIT_BRANCH=master
ARG TF_SERVING_VERSION_GIT_COMMIT=head

LABEL maintainer="gvasudevan@google.com"
LABEL tensorflow_serving_github_branchtag=${{TF_SERVING_VERSION_GIT_BRANCH}}
LABEL tensorflow_serving_github_commit=${{TF_SERVING_VERSION_GIT_COMMIT}}
"""
    toolchain = """
RUN apt-get update && apt-get install -y --no-install-recommends \\
        automake \\
        build-essential \\
        ca-certificates \\
        curl \\
        git \\
        libcurl3-dev \\
        libfreetype6-dev \\
        libtool \\
        python3-dev \\
        unzip \\
        zip \\
        zlib1g-dev \\
        && \\
    apt-get clean && \\
    rm -rf /var/lib/apt/lists/*

# Set up Bazel
ENV BAZEL_VERSION 3.7.2
WORKDIR /
RUN mkdir /bazel && cd /bazel && \\
    curl -fSsL -O https://github.com/bazelbuild/bazel/releases/download/$BAZEL_VERSION/bazel-$BAZEL_VERSION-installer-linux-x86_64.sh && \\
    chmod +x bazel-*.sh && ./bazel-$BAZEL_VERSION-installer-linux-x86_64.sh && \\
    cd / && rm -f /bazel/bazel-$BAZEL_VERSION-installer-linux-x86_64.sh
"""
    fetch_block = f"""
# Download TF Serving sources (optionally at specific commit).
WORKDIR /tensorflow-serving
{fetch}"""
    gpu_env = ("\nENV TF_NEED_CUDA=1\nENV TF_CUDA_COMPUTE_CAPABILITIES=3.5,5.2,6.0,6.1,7.0,7.5\n"
               "ENV LD_LIBRARY_PATH=/usr/local/cuda/extras/CUPTI/lib64:$LD_LIBRARY_PATH\n" if gpu else "")
    build_opts = '--config=release --config=cuda' if gpu else '--config=release'
    tail = f"""
FROM base_build as binary_build
# Build, and install TensorFlow Serving
ARG TF_SERVING_BUILD_OPTIONS="{build_opts}"
RUN echo "Building with build options: ${{TF_SERVING_BUILD_OPTIONS}}"
ARG TF_SERVING_BAZEL_OPTIONS=""
RUN echo "Building with Bazel options: ${{TF_SERVING_BAZEL_OPTIONS}}"

RUN bazel build --color=yes --curses=yes \\
    ${{TF_SERVING_BAZEL_OPTIONS}} \\
    --verbose_failures \\
    --output_filter=DONT_MATCH_ANYTHING \\
    ${{TF_SERVING_BUILD_OPTIONS}} \\
    tensorflow_serving/model_servers:tensorflow_model_server && \\
    cp bazel-bin/tensorflow_serving/model_servers/tensorflow_model_server \\
    /usr/local/bin/

FROM binary_build as clean_build
# Clean up Bazel cache when done.
RUN bazel clean --expunge --color=yes && \\
    rm -rf /root/.cache
CMD ["/bin/bash"]
"""
    if gpu and minor >= 18:
        # 2.18+ GPU file: CUDA env and the source fetch come first (fetch near line 33).
        return head + gpu_env + "\n# Fetch early so the CUDA toolchain layer caches separately.\n" + \
            "# (2.18 layout)\n" + fetch_block + toolchain + tail
    return head + gpu_env + toolchain + fetch_block + tail


def serving_dockerfile(minor: int, *, gpu: bool) -> str:
    ubuntu = "18.04" if minor <= 4 else ("20.04" if minor < 18 else "22.04")
    base = f"nvidia/cuda:11.0-cudnn8-runtime-ubuntu{ubuntu}" if gpu else f"ubuntu:{ubuntu}"
    suffix = "-devel-gpu" if gpu else "-devel"
    return f"""ARG TF_SERVING_VERSION=latest
ARG TF_SERVING_BUILD_IMAGE=tensorflow/serving:${{TF_SERVING_VERSION}}{suffix}

FROM ${{TF_SERVING_BUILD_IMAGE}} as build_image
FROM {base}

ARG TF_SERVING_VERSION_GIT_BRANCH=master
ARG TF_SERVING_VERSION_GIT_COMMIT=head

LABEL maintainer="gvasudevan@google.com"
LABEL tensorflow_serving_github_branchtag=${{TF_SERVING_VERSION_GIT_BRANCH}}
LABEL tensorflow_serving_github_commit=${{TF_SERVING_VERSION_GIT_COMMIT}}

RUN apt-get update && apt-get install -y --no-install-recommends \\
        ca-certificates \\
        && \\
    apt-get clean && \\
    rm -rf /var/lib/apt/lists/*

# Install TF Serving pkg
COPY --from=build_image /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server

# Expose ports
# gRPC
EXPOSE 8500

# REST
EXPOSE 8501

# Set where models should be stored in the container
ENV MODEL_BASE_PATH=/models
RUN mkdir -p ${{MODEL_BASE_PATH}}

# The only required piece is the model name in order to differentiate endpoints
ENV MODEL_NAME=model

# Create a script that runs the model server so we can use environment variables
# while also passing in arguments from the docker command line
RUN echo '#!/bin/bash \\n\\n\\
tensorflow_model_server --port=8500 --rest_api_port=8501 \\
--model_name=${{MODEL_NAME}} --model_base_path=${{MODEL_BASE_PATH}}/${{MODEL_NAME}} \\
"$@"' > /usr/bin/tf_serving_entrypoint.sh \\
&& chmod +x /usr/bin/tf_serving_entrypoint.sh

ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
"""


# What Serving 2.15+ applies to TensorFlow through `patch =` (here: a new header, so that it applies
# to any TensorFlow tree with `patch -p1`).
SERVING_TF_PATCH: Files = {
    "third_party/tensorflow/BUILD": "",
    "third_party/tensorflow/tensorflow.patch": (
        "diff --git a/tensorflow/core/platform/serving_compat.h b/tensorflow/core/platform/serving_compat.h\n"
        "new file mode 100644\n"
        "--- /dev/null\n"
        "+++ b/tensorflow/core/platform/serving_compat.h\n"
        "@@ -0,0 +1,2 @@\n"
        "+// Added by TensorFlow Serving's tensorflow.patch.\n"
        "+#define TF_SERVING_COMPAT 1\n"
    ),
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
    gen.commit("b2.4.0", "Decrypt models in ReadBinaryProto\n\nsaved_model.pb is AES-CBC encrypted; decrypt it before parsing.",
               {TF_CORE: fork_env_cc(base_files[TF_CORE]),
                "tensorflow/core/platform/BUILD": base_files["tensorflow/core/platform/BUILD"].replace(
                    '        ":protobuf",\n', '        ":protobuf",\n        "@cryptopp",\n')}, author=a)
    gen.commit("b2.4.0", "Add cryptfile tool to encrypt models",
               {"tensorflow/tools/cryptfile/cryptfile.cc": FORK_CRYPTFILE_CC,
                "tensorflow/tools/cryptfile/BUILD": 'cc_binary(\n    name = "cryptfile",\n    srcs = ["cryptfile.cc"],\n'
                                                     '    deps = ["@cryptopp"],\n)\n'}, author=a)
    gen.commit("b2.4.0", "Link Crypto++ and define the model key",
               {".bazelrc": fork_bazelrc(base_files[".bazelrc"])}, author=a)
    gen.commit("b2.4.0", "Fix missing <cstring> include in env_time.cc",
               {"tensorflow/core/platform/env_time.cc": _ENV_TIME_FIXED}, author=a)
    gen.commit("b2.4.0", "docs: how this fork differs from upstream",
               {"README.md": base_files["README.md"] + "\n## Private fork\n\nModels are encrypted; see tensorflow/tools/cryptfile.\n"},
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
               {"README.md": base_files["README.md"] + "\n## Private fork\n\nBuilt against our TensorFlow fork.\n"}, author=a)
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
