"""Dockerfile rewrites of the staged Serving context.

* :func:`rewrite_dockerfile`: the devel image's source fetch (``git clone`` up to 2.4,
  ``curl .../tarball | tar`` from 2.5, continuation lines included) becomes
  ``ADD . /tensorflow-serving``.
* :func:`add_library_stage`: the serving image's decryption library (the dlopen shape) comes from
  a stage of forkops' own instead of a download: the stage compiles ``cryptfile.c`` with the key
  header mounted as a BuildKit secret (or copies the user's ``--cryptlib`` file, mounted the same
  way), and ``ADD ${ENCRYPT_FILE_URL} /opt/lib/libcryptfile.so`` (or a ``COPY`` of such a library)
  becomes ``COPY --from=<stage>``. The ``ARG`` only the replaced instruction used goes too.

Invariant: the rewritten text never holds key material; a secret is referred to by its id.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from forkops.errors import BadInput, NeedsPerson
from forkops.playbook import BuildSpec


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


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------
# The decryption library: a stage of forkops' own
# ---------------------------------------------------------------------------------------
LIBRARY_STAGE = "forkops_cryptlib"
KEY_SECRET_ID = "forkops_cryptfile_key"
KEY_SECRET_TARGET = "/run/secrets/cryptfile_key.h"
PREBUILT_SECRET_ID = "forkops_cryptlib"
SOURCE_IN_CONTEXT = "forkops_cryptlib/cryptfile.c"  # the library's source (no key in it)
_OUT = "/forkops/out"
LibraryMode = Literal["compile", "prebuilt"]
_FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(?P<image>\S+)", re.IGNORECASE)
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class LibraryRewrite:
    path: str
    text: str
    replaced: tuple[str, ...]  # the install instructions replaced (empty: a COPY was added)
    dropped_args: tuple[str, ...]

    @property
    def note(self) -> str:
        what = (f"replaced {_short(self.replaced[0])}" if self.replaced
                else "added a copy of the library to the final stage (it installed none)")
        args = f"; dropped ARG {', '.join(self.dropped_args)}" if self.dropped_args else ""
        return f"{self.path}: decryption library from the {LIBRARY_STAGE} stage: {what}{args}"


def library_stage(base: str, library: str, mode: LibraryMode, compile_argv: list[str]) -> str:
    """The Dockerfile text of the library stage, FROM ``base`` (the image the library runs in,
    so its libcrypto matches). ``compile_argv`` is the compiler command (mode "compile")."""
    name = PurePosixPath(library).name
    out = f"{_OUT}/{name}"
    lines = [
        "# forkops build: the model decryption library, built here. The key reaches this stage only",
        "# as a BuildKit secret (never a build arg, an environment variable or a file of the context).",
        f"FROM {base} AS {LIBRARY_STAGE}",
    ]
    if mode == "compile":
        lines += [
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev && \\",
            "    rm -rf /var/lib/apt/lists/*",
            f"COPY {SOURCE_IN_CONTEXT} /forkops/cryptfile.c",
            "# Its libcrypto goes beside it (rpath $ORIGIN), in case the serving image has none.",
            f"RUN --mount=type=secret,id={KEY_SECRET_ID},target={KEY_SECRET_TARGET},required=true \\",
            f"    mkdir -p {_OUT} && {shlex.join(compile_argv)} -Wl,-rpath,'$ORIGIN' && \\",
            f"    for lib in $(ldd {out} | awk '/libcrypto/ {{print $3}}'); do cp -L \"$lib\" {_OUT}/; done",
        ]
    else:
        lines += [
            f"RUN --mount=type=secret,id={PREBUILT_SECRET_ID},target=/run/secrets/{name},required=true \\",
            f"    mkdir -p {_OUT} && cp /run/secrets/{name} {out} && chmod 0755 {out}",
        ]
    return "\n".join(lines) + "\n\n"


def add_library_stage(text: str, spec: BuildSpec, path: str, *, library: str, mode: LibraryMode,
                      compile_argv: list[str]) -> LibraryRewrite:
    """Build the decryption library in a stage of its own and copy it into the final image.

    Every instruction matching ``spec.library_install`` is replaced by
    ``COPY --from=forkops_cryptlib /forkops/out/ <dir of library>/``; a file without one gets that
    COPY at its end (the final stage). The stage goes before the first ``FROM`` (global ``ARG``s
    stay first) and starts from the base image of the stage that receives the library. ``ARG``s
    used only by the replaced instructions are dropped (``ENCRYPT_FILE_URL``).
    """
    patterns = [re.compile(rx) for rx in spec.library_install]
    found = instructions(text)
    froms = [ins for ins in found if _FROM.match(ins.text)]
    if not froms:
        raise NeedsPerson(f"{path}: no FROM instruction; cannot add the decryption library stage")
    hits = [ins for ins in found if any(p.search(ins.text) for p in patterns)]
    if any(LIBRARY_STAGE in ins.text for ins in found):
        raise NeedsPerson(f"{path}: already has a stage named {LIBRARY_STAGE}")
    receiver = [f for f in froms if f.first < hits[0].first][-1] if hits else froms[-1]
    m = _FROM.match(receiver.text)
    assert m is not None
    copy = f"COPY --from={LIBRARY_STAGE} {_OUT}/ {PurePosixPath(library).parent}/"
    lines = text.splitlines(keepends=True)
    used = {v for ins in hits for v in _VAR.findall(ins.text)}
    kept_text = " ".join(ins.text for ins in found if ins not in hits and not ins.text.upper().startswith("ARG "))
    still_used = set(_VAR.findall(kept_text))
    args = [ins for ins in found if ins.text.upper().startswith("ARG ")
            and ins.text[4:].strip().split("=", 1)[0] in used - still_used]
    edits: list[tuple[int, int, list[str]]] = [
        (ins.first, ins.last, ["# forkops build: the decryption library comes from the forkops_cryptlib stage.\n",
                               copy + "\n"]) for ins in hits]
    edits += [(ins.first, ins.last, []) for ins in args]
    if not hits:
        tail = "" if not lines or lines[-1].endswith("\n") else "\n"
        lines.append(tail + "\n# forkops build: the model decryption library (ReadBinaryProto dlopen()s it).\n"
                     + copy + "\n")
    stage_text = library_stage(m.group("image"), library, mode, compile_argv)
    edits.append((froms[0].first, froms[0].first - 1, [stage_text]))  # an insertion before it
    for first, last, new in sorted(edits, reverse=True):  # from the bottom: earlier indexes stay valid
        lines[first: last + 1] = new
    dropped = tuple(ins.text[4:].strip().split("=", 1)[0] for ins in args)
    return LibraryRewrite(path, "".join(lines), tuple(i.text for i in hits), dropped)
