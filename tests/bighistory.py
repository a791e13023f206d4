"""Large real git histories, generated fast with ``git fast-import`` (for the guard's scale
test and benchmarks/bench_guard.py): ``files`` source-like files in a first commit, then
``commits`` commits that each rewrite one line of one file, release tags along the way.
Deterministic for a given size; never holds any key unless a caller plants one."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

_WORDS = ("tensor", "shape", "status", "kernel", "device", "buffer", "graph", "session", "proto", "alloc")


_LINES = (
    "  OP_REQUIRES_OK(ctx, ctx->input(\"{w}\", &{w}_in));",
    "  const Tensor& {w} = ctx->input({n});",
    "  if (!{w}.IsInitialized()) return errors::InvalidArgument(\"{w} is not ready\");",
    "  auto {w}_flat = {w}.flat<float>();  // see {W}Op::Compute",
    "  for (int64_t i = 0; i < {w}_flat.size(); ++i) {w}_flat(i) *= scale_;",
    "  VLOG(2) << \"{w}: \" << {w}.DebugString();",
    "  std::vector<{W}Handle> {w}_handles;",
    "  TF_RETURN_IF_ERROR({W}Util::Validate({w}, /*strict=*/true));",
)


def _file(rng: random.Random, i: int, lines: int) -> list[str]:
    """C++ shaped like TensorFlow kernels (digits about as rare as in real source)."""
    out = [f"// Copyright 2024 The Authors. file {i}", "#include \"tensorflow/core/framework/op_kernel.h\"",
           "namespace tensorflow {"]
    for n in range(lines):
        w = rng.choice(_WORDS)
        out.append(rng.choice(_LINES).format(w=w, W=w.title(), n=n % 4))
    return [*out, "}  // namespace tensorflow", ""]


def generate(path: Path, *, files: int, commits: int, lines: int = 40, seed: int = 1) -> None:
    """A new repository at ``path`` with branch ``master`` and tags ``v0.N`` every 1000 commits."""
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    rng = random.Random(seed)
    contents = {f"src/d{i % 200:03d}/f{i:05d}.cc": _file(rng, i, lines) for i in range(files)}
    names = list(contents)
    proc = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet", "--done"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    w = proc.stdin.write

    def data(text: str) -> None:
        raw = text.encode()
        w(b"data %d\n" % len(raw) + raw + b"\n")

    when = 1_600_000_000
    w(b"commit refs/heads/master\nmark :1\n")
    w(b"committer Gen <gen@example.com> %d +0000\n" % when)
    data("initial import")
    for name in names:
        w(f"M 100644 inline {name}\n".encode())
        data("\n".join(contents[name]))
    for n in range(1, commits + 1):
        name = names[rng.randrange(len(names))]
        body = contents[name]
        body[3 + rng.randrange(lines)] = f"  // revision {n}: {rng.choice(_WORDS)} handling changed"
        w(b"commit refs/heads/master\n")
        w(b"committer Gen <gen@example.com> %d +0000\n" % (when + n))
        data(f"change {n}: {rng.choice(_WORDS)} in {name}")
        w(f"M 100644 inline {name}\n".encode())
        data("\n".join(body))
        if n % 1000 == 0:
            w(f"reset refs/tags/v0.{n // 1000}\nfrom refs/heads/master\n\n".encode())
    w(b"done\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "master"], check=True)
