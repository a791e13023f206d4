"""The docker commands of a build: for each variant the devel image, then the serving image
(and ``docker push`` of the serving image with ``--push``; never of the devel image, which holds
the staged sources).

Invariants: no argument carries key material — secrets are passed as ``--secret id=..,src=PATH``
(a path below the 0700 staging folder), Bazel options are refused when they hold the key, and a
remote cache URL with credentials is refused (build args end up in the devel image's history).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from forkops.build.roles import Fork
from forkops.errors import BadInput
from forkops.playbook import BuildSpec
from forkops.version import Version

if TYPE_CHECKING:
    from forkops.build.stage import Secret
    from forkops.keyfile import KeyMaterial

StepKind = Literal["devel", "serving", "push"]
BAZEL_OPTIONS_ARG = "TF_SERVING_BAZEL_OPTIONS"  # what the Serving devel Dockerfiles pass to bazel build

@dataclass(frozen=True)
class BuildOptions:
    version: Version
    variants: tuple[str, ...] = ("cpu",)
    registry: str | None = None
    builder: str | None = None
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    bazel_options: tuple[str, ...] = ()  # into TF_SERVING_BAZEL_OPTIONS of the devel build
    remote_cache: str | None = None  # Bazel --remote_cache=URL (the common case of bazel_options)
    push: bool = False  # push the serving images (never the devel image: it holds the sources)

    @property
    def buildkit(self) -> bool:
        """BuildKit through ``docker buildx build`` when a builder or a cache is asked for."""
        return bool(self.builder or self.cache_from or self.cache_to)

    @property
    def all_bazel_options(self) -> tuple[str, ...]:
        cache = (f"--remote_cache={self.remote_cache}",) if self.remote_cache else ()
        return (*cache, *self.bazel_options)


def check_options(options: BuildOptions, material: KeyMaterial) -> None:
    """BadInput for options forkops will not pass: a Bazel option with a space (the Dockerfile
    word-splits TF_SERVING_BAZEL_OPTIONS) or holding the key, a remote cache URL with
    credentials or without a scheme, ``--push`` without ``--registry``."""
    from forkops.secrets import Matcher

    if options.remote_cache is not None:
        url = urllib.parse.urlsplit(options.remote_cache)
        if not url.scheme or not url.netloc:
            raise BadInput(f"--remote-cache {options.remote_cache!r}: expected a URL such as grpc://cache:9092 "
                           "or https://cache.example.com")
        if url.username or url.password:
            raise BadInput("--remote-cache: a URL with credentials would be recorded in the devel image's "
                           "history (it is a build arg)",
                           hint="use --bazel-option=--credential_helper=... or a cache on a trusted network")
    for opt in options.bazel_options:
        if not opt.startswith("-") or any(c.isspace() for c in opt):
            raise BadInput(f"--bazel-option {opt!r}: one Bazel option per --bazel-option, starting with - and "
                           "without spaces (the Dockerfile splits TF_SERVING_BAZEL_OPTIONS on spaces)")
    if Matcher(material).find(" ".join(options.all_bazel_options).encode()):
        raise BadInput(f"--bazel-option: holds key material (key {material.key_fingerprint}); build args are "
                       "recorded in the image history, forkops never passes the key in one")
    if options.push and not options.registry:
        raise BadInput("--push needs --registry (forkops will not push to Docker Hub's library namespace)")


@dataclass(frozen=True)
class BuildStep:
    variant: str  # "cpu" | "gpu"
    kind: StepKind
    tag: str
    args: tuple[str, ...]  # docker arguments (without the leading "docker")
    env: tuple[tuple[str, str], ...] = ()  # extra environment (DOCKER_BUILDKIT=1 for secrets)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.variant}"

    @property
    def is_build(self) -> bool:
        return self.kind != "push"


def image_repo(spec: BuildSpec, registry: str | None) -> str:
    return f"{registry.rstrip('/')}/{spec.image}" if registry else spec.image


def tags(spec: BuildSpec, options: BuildOptions, variant: str) -> tuple[str, str]:
    """(devel tag, serving tag): ``<registry>/tensorflow-serving:X.Y.Z-devel[-gpu]``, ``:X.Y.Z[-gpu]``."""
    repo = image_repo(spec, options.registry)
    suffix = "-gpu" if variant == "gpu" else ""
    return f"{repo}:{options.version}-devel{suffix}", f"{repo}:{options.version}{suffix}"


def commands(spec: BuildSpec, options: BuildOptions, context: Path, serving: Fork,
             secrets: Sequence[Secret] = ()) -> list[BuildStep]:
    """The docker commands, in order: for each variant, the devel image, the serving image (with
    ``secrets`` mounted; BuildKit), and with ``options.push`` a ``docker push`` of it."""
    steps = []
    labels = ("--build-arg", f"TF_SERVING_VERSION_GIT_BRANCH={serving.branch}",
              "--build-arg", f"TF_SERVING_VERSION_GIT_COMMIT={serving.commit}")
    bazel = options.all_bazel_options
    bazel_args = ("--build-arg", f"{BAZEL_OPTIONS_ARG}={' '.join(bazel)}") if bazel else ()
    secret_args = tuple(a for s in secrets for a in ("--secret", f"id={s.id},src={s.src}"))
    # `docker build` needs BuildKit for --secret and RUN --mount; buildx always is.
    serving_env = (("DOCKER_BUILDKIT", "1"),) if secrets and not options.buildkit else ()
    for variant in options.variants:
        devel_tag, serving_tag = tags(spec, options, variant)
        gpu = variant == "gpu"
        devel_df = context / spec.dockerfile_dir / (spec.devel_gpu if gpu else spec.devel)
        serving_df = context / spec.dockerfile_dir / (spec.serving_gpu if gpu else spec.serving)
        # The build cache pays off for the long devel build (Bazel); the serving image only
        # copies the binary out of it, and sharing one cache ref between both would clobber it.
        devel = (*_front(options, with_cache=True), "--file", str(devel_df), "--tag", devel_tag, *labels,
                 *bazel_args, str(context))
        serving_args = (*_front(options, with_cache=False), "--file", str(serving_df), "--tag", serving_tag,
                        "--build-arg", f"TF_SERVING_BUILD_IMAGE={devel_tag}", *labels, *secret_args, str(context))
        steps.append(BuildStep(variant, "devel", devel_tag, devel))
        steps.append(BuildStep(variant, "serving", serving_tag, serving_args, serving_env))
        if options.push:
            steps.append(BuildStep(variant, "push", serving_tag, ("push", serving_tag)))
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


