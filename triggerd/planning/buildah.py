"""Render a Docker-strategy Build into a :class:`~triggerd.planning.plan.Plan` for buildah (pure).

One renderer, two executors: the local executor runs the plan on the host and the
Kubernetes executor ships it in a Job; both get the same git and buildah argv. The build's
workspace (every relative plan path is inside it) is laid out as::

    source/            the git checkout (or an empty context for inline Dockerfiles)
    tmp/               TMPDIR for buildah, removed with the workspace
    outputs/digest     written by ``buildah push --digestfile``
    registries.conf    insecure registries and the short-name search list for this build
    Dockerfile         the build's Dockerfile with OpenShift's edits (FROM, ENV, LABEL)

Everything a step needs that is not in the Build comes in through :class:`PlanContext`
(storage options, insecure registries, the paths of credential files the executor
resolved). This module never reads files or secrets and never decides policy beyond the
build's own spec.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from triggerd.errors import PermanentError
from triggerd.images import references
from triggerd.model.builds import Build, Reason, StageName
from triggerd.model.specs import DockerStrategy, SourceType
from triggerd.planning import dockerfile
from triggerd.planning.plan import (
    REVISION_FORMAT,
    Action,
    Arg,
    Capture,
    Captured,
    CheckInside,
    Command,
    EditDockerfile,
    InWorkspace,
    MakeDirectory,
    OutputName,
    Plan,
    ReadOutput,
    Step,
    WriteFile,
    strip_credentials,
)

SOURCE_DIR = "source"
TMP_DIR = "tmp"
OUTPUTS_DIR = "outputs"
DIGEST_FILE = f"{OUTPUTS_DIR}/digest"
REGISTRIES_CONF = "registries.conf"
#: The Dockerfile buildah reads: the build's own, edited (outside the context).
EDITED_DOCKERFILE = "Dockerfile"
#: Where unqualified names (``FROM busybox``) resolve, as on OpenShift and Docker.
DEFAULT_SEARCH_REGISTRIES = ("docker.io",)

_LABEL_PREFIX = "io.openshift.build."


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanContext:
    """What the executor knows that the Build does not; plain data, no secrets inside.

    Credential fields are paths of files the executor put in place: absolute, or relative
    to the workspace. ``root``/``runroot`` must be absolute (commands run in the workspace).
    """

    storage_driver: str = "vfs"
    root: str | None = None
    runroot: str | None = None
    isolation: str = "chroot"
    insecure_registries: frozenset[str] = frozenset()
    search_registries: tuple[str, ...] = DEFAULT_SEARCH_REGISTRIES
    push_auth_file: str | None = None
    pull_auth_file: str | None = None
    git_ssh_key_file: str | None = None  # absolute: ssh runs in the checkout, not the workspace
    push_retries: int = 3
    labels: Mapping[str, str] = field(default_factory=dict)  # lowest precedence


class Unplannable(PermanentError):
    """The Build cannot be turned into a plan; ``reason`` is what the build fails with."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def render(build: Build, ctx: PlanContext) -> Plan:
    """The plan that builds ``build`` (and pushes it when it has an output)."""
    spec = build.spec
    source = spec.source
    docker = spec.strategy.docker or DockerStrategy()
    context_dir = (
        posixpath.join(SOURCE_DIR, source.context_dir) if source.context_dir else SOURCE_DIR
    )
    dockerfile_path = posixpath.join(context_dir, docker.dockerfile_path)
    image = _output_image(build)
    from_image = _from_image(docker)
    env = tuple((e.name, e.value) for e in docker.env)
    image_labels = labels(build, ctx)
    try:
        for name, value in env:
            dockerfile.check_env(name, value)
        for name, label in image_labels.items():
            # Captured values (commit, author, subject) are one line by construction.
            dockerfile.check_label(name, label if isinstance(label, str) else "")
    except dockerfile.DockerfileError as e:
        raise Unplannable(Reason.DOCKER_BUILD_FAILED, str(e)) from e

    steps: list[Step] = []

    def add(stage: StageName, reason: Reason, action: Action) -> None:
        steps.append(Step(stage=stage, reason=reason, action=action))

    fetch, generic = StageName.FETCH_INPUTS, Reason.GENERIC_BUILD_FAILED
    add(fetch, generic, MakeDirectory(path=TMP_DIR))
    add(fetch, generic, MakeDirectory(path=OUTPUTS_DIR))
    add(fetch, generic, WriteFile(path=REGISTRIES_CONF, content=registries_conf(ctx)))
    if source.type is SourceType.GIT and source.git is not None:
        for command in git_commands(build, ctx):
            add(fetch, Reason.FETCH_SOURCE_FAILED, command)
    else:
        add(fetch, Reason.FETCH_SOURCE_FAILED, MakeDirectory(path=context_dir))
    if source.dockerfile is not None:
        # OpenShift writes an inline Dockerfile over the one at dockerfilePath.
        add(
            fetch,
            Reason.FETCH_SOURCE_FAILED,
            WriteFile(path=dockerfile_path, content=source.dockerfile),
        )

    if from_image is not None:
        add(StageName.PULL_IMAGES, Reason.PULL_BUILDER_IMAGE_FAILED, _pull(ctx, docker, from_image))

    build_stage, build_failed = StageName.BUILD, Reason.DOCKER_BUILD_FAILED
    add(
        build_stage,
        build_failed,
        CheckInside(root=SOURCE_DIR, paths=(context_dir, dockerfile_path)),
    )
    add(
        build_stage,
        build_failed,
        EditDockerfile(
            path=dockerfile_path,
            output=EDITED_DOCKERFILE,
            from_image=from_image,
            env=env,
            labels=tuple(image_labels.items()),
        ),
    )
    add(build_stage, build_failed, _build(ctx, docker, context_dir=context_dir, image=image))

    if image:
        push = StageName.PUSH_IMAGE
        add(push, Reason.PUSH_IMAGE_TO_REGISTRY_FAILED, _push(ctx, image))
        add(
            push,
            Reason.PUSH_IMAGE_TO_REGISTRY_FAILED,
            ReadOutput(path=DIGEST_FILE, output=OutputName.DIGEST),
        )
    return Plan(steps=tuple(steps), image=image, deadline_seconds=spec.completion_deadline_seconds)


def git_commands(build: Build, ctx: PlanContext) -> list[Command]:
    """Shallow fetch of exactly the revision to build, then capture what it is.

    ``--`` keeps a URI or ref from being read as an option (validation already refuses
    ones starting with '-').
    """
    git_source = build.spec.source.git
    assert git_source is not None
    revision = build.spec.revision
    # A Build started for a known commit (webhook, `start-build --commit`) builds that
    # commit even if the branch moved on since.
    target = (revision.commit if revision and revision.commit else "") or git_source.ref or "HEAD"
    checkout = InWorkspace(path=SOURCE_DIR)
    env: dict[str, Arg] = {"GIT_TERMINAL_PROMPT": "0"}
    if ctx.git_ssh_key_file:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {shlex.quote(ctx.git_ssh_key_file)} -o IdentitiesOnly=yes "
            "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        )
    return [
        Command(
            argv=("git", "-c", "init.defaultBranch=main", "init", "--quiet", "--", checkout),
            env=env,
        ),
        # Fetch from the URL itself rather than a configured remote: a URL with credentials
        # would otherwise be saved in .git/config, inside the build context a Dockerfile may
        # COPY (git keeps only the anonymised URL in FETCH_HEAD).
        Command(
            argv=("git", "-C", checkout, "fetch", "--depth=1", "--no-tags", "--",
                  git_source.uri, target),
            env=env,
        ),
        Command(
            argv=(
                "git", "-C", checkout, "-c", "advice.detachedHead=false",
                "checkout", "--quiet", "--detach", "FETCH_HEAD",
            ),
            env=env,
        ),
        Command(
            argv=("git", "-C", checkout, "log", "-1", f"--format={REVISION_FORMAT}", "HEAD"),
            env=env,
            capture=Capture.REVISION,
        ),
    ]  # fmt: skip


def registries_conf(ctx: PlanContext) -> str:
    """containers-registries.conf(5) for this build: where short names resolve and which
    registries are plain HTTP, so a Dockerfile's own FROM lines can use them too."""
    lines = [
        "# Written by triggerd for one build.",
        "unqualified-search-registries = "
        + "["
        + ", ".join(json.dumps(r) for r in ctx.search_registries)
        + "]",
    ]
    for host in sorted(ctx.insecure_registries):
        lines += ["", "[[registry]]", f"location = {json.dumps(host)}", "insecure = true"]
    return "\n".join(lines) + "\n"


def buildah_globals(ctx: PlanContext) -> list[Arg]:
    argv: list[Arg] = ["buildah", "--storage-driver", ctx.storage_driver]
    if ctx.root:
        argv += ["--root", ctx.root]
    if ctx.runroot:
        argv += ["--runroot", ctx.runroot]
    return argv


def buildah_env() -> dict[str, Arg]:
    return {
        "CONTAINERS_REGISTRIES_CONF": InWorkspace(path=REGISTRIES_CONF),
        "TMPDIR": InWorkspace(path=TMP_DIR),
    }


def labels(build: Build, ctx: PlanContext) -> dict[str, Arg]:
    """Image labels in increasing precedence: the server's, OpenShift's build labels, the
    BuildConfig's output.imageLabels. Commit values come from the fetched revision."""
    result: dict[str, Arg] = dict(ctx.labels)
    source = build.spec.source
    result[_LABEL_PREFIX + "name"] = build.name
    result[_LABEL_PREFIX + "namespace"] = build.namespace
    if source.git is not None:
        for key, output in (
            ("commit.author", OutputName.AUTHOR),
            ("commit.date", OutputName.DATE),
            ("commit.id", OutputName.COMMIT),
            ("commit.message", OutputName.MESSAGE),
        ):
            result[_LABEL_PREFIX + key] = Captured(output=output)
        if source.git.ref:
            result[_LABEL_PREFIX + "commit.ref"] = source.git.ref
        location = strip_credentials(source.git.uri)
        result[_LABEL_PREFIX + "source-location"] = location
        result["org.opencontainers.image.source"] = location
        result["org.opencontainers.image.revision"] = Captured(output=OutputName.COMMIT)
    if source.context_dir:
        result[_LABEL_PREFIX + "source-context-dir"] = source.context_dir
    for label in build.spec.output.image_labels:
        result[label.name] = label.value
    return result


def _build(ctx: PlanContext, docker: DockerStrategy, *, context_dir: str, image: str) -> Command:
    argv = buildah_globals(ctx)
    argv += ["build", "--isolation", ctx.isolation]
    # Docker format keeps HEALTHCHECK, SHELL and ONBUILD, which OCI images drop.
    argv += ["--format", "docker"]
    argv += ["--no-cache"] if docker.no_cache else ["--layers"]
    # A failed RUN would otherwise leave its working container (a full rootfs copy with
    # vfs) in the shared storage.
    argv += ["--force-rm"]
    argv += ["--pull=always" if docker.force_pull else "--pull=missing"]
    if ctx.pull_auth_file:
        argv += ["--authfile", _file_arg(ctx.pull_auth_file)]
    argv += ["--file", InWorkspace(path=EDITED_DOCKERFILE)]
    for arg in docker.build_args:
        argv += ["--build-arg", f"{arg.name}={arg.value}"]
    if image:
        argv += ["--tag", image]
    argv.append(InWorkspace(path=context_dir))
    return Command(argv=tuple(argv), env=buildah_env())


def _pull(ctx: PlanContext, docker: DockerStrategy, image: str) -> Command:
    argv = buildah_globals(ctx)
    argv += ["pull", "--policy", "always" if docker.force_pull else "missing"]
    if ctx.pull_auth_file:
        argv += ["--authfile", _file_arg(ctx.pull_auth_file)]
    if references.parse(image).registry in ctx.insecure_registries:
        argv.append("--tls-verify=false")
    argv.append(image)
    return Command(argv=tuple(argv), env=buildah_env())


def _push(ctx: PlanContext, image: str) -> Command:
    argv = buildah_globals(ctx)
    argv += ["push", "--retry", str(ctx.push_retries)]
    argv += ["--digestfile", InWorkspace(path=DIGEST_FILE)]
    if ctx.push_auth_file:
        argv += ["--authfile", _file_arg(ctx.push_auth_file)]
    if references.parse(image).registry in ctx.insecure_registries:
        argv.append("--tls-verify=false")
    argv += [image, f"docker://{image}"]
    return Command(argv=tuple(argv), env=buildah_env())


def _file_arg(path: str) -> Arg:
    return path if path.startswith("/") else InWorkspace(path=path)


def _output_image(build: Build) -> str:
    to = build.spec.output.to
    if to is None:
        return ""
    try:
        ref = references.parse(to.name)
    except ValueError as e:
        raise Unplannable(Reason.INVALID_OUTPUT_REFERENCE, f"spec.output.to.name: {e}") from e
    if ref.digest:
        raise Unplannable(
            Reason.INVALID_OUTPUT_REFERENCE,
            f"spec.output.to.name {to.name!r} must name a tag, not a digest",
        )
    # Fully qualified: buildah would tag a short name as localhost/NAME.
    return str(ref)


def _from_image(docker: DockerStrategy) -> str | None:
    if docker.from_image is None:
        return None
    try:
        ref = references.parse(docker.from_image.name)
    except ValueError as e:
        raise Unplannable(
            Reason.PULL_BUILDER_IMAGE_FAILED, f"spec.strategy.dockerStrategy.from.name: {e}"
        ) from e
    # A pinned digest wins; name:tag@digest is not accepted by every containers/image version.
    return str(ref.with_digest(ref.digest)) if ref.digest else str(ref)
