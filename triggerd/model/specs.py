"""The spec shared by BuildConfig and Build: source, strategy, output, revision (pure).

OpenShift calls this ``CommonSpec``. The typed view is parsed from the raw mapping, and the
raw mapping stays the canonical form, so fields triggerd does not act on (yet) survive a
load/store round trip unchanged. Every check reports its field path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from triggerd.images import references
from triggerd.model.fields import Doc, Fields

DEFAULT_DOCKERFILE = "Dockerfile"
#: OpenShift's default build deadline is unlimited in the API but one week in practice; a
#: build that hangs must not hold a slot forever.
DEFAULT_COMPLETION_DEADLINE_SECONDS = 7 * 24 * 3600


class SourceType(StrEnum):
    GIT = "Git"
    DOCKERFILE = "Dockerfile"
    BINARY = "Binary"
    NONE = "None"


class StrategyType(StrEnum):
    DOCKER = "Docker"
    SOURCE = "Source"
    CUSTOM = "Custom"
    JENKINS_PIPELINE = "JenkinsPipeline"


class ReferenceKind(StrEnum):
    DOCKER_IMAGE = "DockerImage"
    IMAGE_STREAM_TAG = "ImageStreamTag"
    IMAGE_STREAM_IMAGE = "ImageStreamImage"


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectReference:
    kind: ReferenceKind
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvVar:
    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GitSource:
    uri: str
    ref: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BinarySource:
    """``source.binary``: the context is uploaded when the build starts."""

    as_file: str = ""  # the upload is this one file, not an archive


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextInput:
    """``source.secrets[]`` / ``source.configMaps[]``: a named set of files placed at
    ``destination_dir`` (relative to the context) for the build."""

    name: str
    destination_dir: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePath:
    source_path: str  # absolute, inside the image
    destination_dir: str = ""  # relative to the context


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSource:
    """``source.images[]``: paths copied out of another image into the context."""

    from_image: ObjectReference
    paths: tuple[ImagePath, ...] = ()
    pull_secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildSource:
    type: SourceType
    git: GitSource | None = None
    binary: BinarySource | None = None
    dockerfile: str | None = None
    context_dir: str = ""
    source_secret: str | None = None
    secrets: tuple[ContextInput, ...] = ()
    config_maps: tuple[ContextInput, ...] = ()
    images: tuple[ImageSource, ...] = ()


class VolumeSourceType(StrEnum):
    SECRET = "Secret"  # noqa: S105 (a wire value, not a password)
    CONFIG_MAP = "ConfigMap"


class ImageOptimizationPolicy(StrEnum):
    NONE = "None"
    SKIP_LAYERS = "SkipLayers"
    SKIP_LAYERS_AND_WARN = "SkipLayersAndWarn"


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildVolume:
    """``dockerStrategy.volumes[]``: a secret or config map mounted read-only into every
    RUN step at each destination path (never part of the image)."""

    name: str
    source_type: VolumeSourceType
    source_name: str
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerStrategy:
    from_image: ObjectReference | None = None
    dockerfile_path: str = DEFAULT_DOCKERFILE
    build_args: tuple[EnvVar, ...] = ()
    env: tuple[EnvVar, ...] = ()
    no_cache: bool = False
    force_pull: bool = False
    pull_secret: str | None = None
    volumes: tuple[BuildVolume, ...] = ()
    image_optimization_policy: ImageOptimizationPolicy = ImageOptimizationPolicy.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStrategy:
    """``sourceStrategy``: source-to-image with ``from`` as the builder image."""

    from_image: ObjectReference
    scripts: str = ""  # a URL: image:///path, http(s)://..., or "" for the usual lookup
    env: tuple[EnvVar, ...] = ()
    incremental: bool = False
    force_pull: bool = False
    pull_secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretMount:
    """``customStrategy.secrets[]``: a named secret mounted read-only at ``mount_path``."""

    name: str
    mount_path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomStrategy:
    """``customStrategy``: run ``from`` with the build described in its environment."""

    from_image: ObjectReference
    env: tuple[EnvVar, ...] = ()
    expose_docker_socket: bool = False
    force_pull: bool = False
    pull_secret: str | None = None
    secrets: tuple[SecretMount, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildStrategy:
    type: StrategyType
    docker: DockerStrategy | None = None
    source: SourceStrategy | None = None
    custom: CustomStrategy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PostCommit:
    """``spec.postCommit``: a command run in a container of the built image before the push.

    OpenShift's forms: ``script`` (run by ``/bin/sh``, ``args`` become its positional
    parameters), ``command`` (+ ``args``) replacing the entrypoint, or ``args`` alone
    appended to the image's entrypoint.
    """

    script: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.script or self.command or self.args)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageLabel:
    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOutput:
    to: ObjectReference | None = None
    push_secret: str | None = None
    image_labels: tuple[ImageLabel, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceControlUser:
    name: str = ""
    email: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("name", self.name), ("email", self.email)) if v}


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRevision:
    commit: str = ""
    author: SourceControlUser | None = None
    committer: SourceControlUser | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        git: dict[str, Any] = {}
        if self.commit:
            git["commit"] = self.commit
        if self.author:
            git["author"] = self.author.to_dict()
        if self.committer:
            git["committer"] = self.committer.to_dict()
        if self.message:
            git["message"] = self.message
        return {"type": "Git", "git": git}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceRequirements:
    """``spec.resources`` (Kubernetes' ResourceRequirements): resource name → quantity, as
    given (``"500m"``, ``"2Gi"``; a YAML number is kept as its text)."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonSpec:
    """Typed view of a spec; ``raw`` is the canonical document it was parsed from."""

    source: BuildSource
    strategy: BuildStrategy
    output: BuildOutput
    revision: SourceRevision | None = None
    completion_deadline_seconds: int = DEFAULT_COMPLETION_DEADLINE_SECONDS
    node_selector: Mapping[str, str] = field(default_factory=dict)
    post_commit: PostCommit = field(default_factory=PostCommit)
    #: for the build container (the Kubernetes executor; the host executor has no such cap)
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    raw: Mapping[str, Any] = field(default_factory=dict)


# Fields of a BuildConfig spec that are not part of the CommonSpec a Build inherits.
CONFIG_ONLY_FIELDS = frozenset(
    {"triggers", "runPolicy", "successfulBuildsHistoryLimit", "failedBuildsHistoryLimit"}
)


def parse_common_spec(spec: Doc, fields: Fields, path: str = "spec") -> CommonSpec:
    source = _parse_source(
        fields.mapping(spec, "source", f"{path}.source"), fields, f"{path}.source"
    )
    strategy = _parse_strategy(
        fields.mapping(spec, "strategy", f"{path}.strategy"), fields, f"{path}.strategy"
    )
    output = _parse_output(
        fields.mapping(spec, "output", f"{path}.output"), fields, f"{path}.output"
    )
    revision_doc = spec.get("revision")
    revision = (
        parse_revision(
            fields.mapping(spec, "revision", f"{path}.revision"), fields, f"{path}.revision"
        )
        if revision_doc
        else None
    )
    deadline = fields.integer(
        spec, "completionDeadlineSeconds", f"{path}.completionDeadlineSeconds", minimum=1
    )
    return CommonSpec(
        source=source,
        strategy=strategy,
        output=output,
        revision=revision,
        completion_deadline_seconds=deadline or DEFAULT_COMPLETION_DEADLINE_SECONDS,
        node_selector=fields.string_map(spec, "nodeSelector", f"{path}.nodeSelector"),
        post_commit=_parse_post_commit(
            fields.mapping(spec, "postCommit", f"{path}.postCommit"), fields, f"{path}.postCommit"
        ),
        resources=_parse_resources(
            fields.mapping(spec, "resources", f"{path}.resources"), fields, f"{path}.resources"
        ),
        raw=spec,
    )


# Quantities (Kubernetes resource.Quantity) ---------------------------------------------------

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
_SUFFIXES: Mapping[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{
        unit: Decimal(1024) ** (i + 1)
        for i, unit in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))
    },
}
#: A resource name: a qualified name (``cpu``, ``hugepages-2Mi``, ``example.com/gpu``).
_RESOURCE_NAME = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity (``"500m"`` is 0.5, ``"1Gi"`` 1073741824);
    ValueError when ``text`` is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity (such as 500m, 2, 1.5Gi, 100M)")
    suffix = match.group("suffix") or ""
    try:
        number = Decimal(match.group("number"))
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
        return number * _SUFFIXES[suffix]
    except (InvalidOperation, ValueError, OverflowError) as e:
        raise ValueError(f"{text!r} is not a quantity") from e


def _parse_resources(doc: Doc, fields: Fields, path: str) -> ResourceRequirements:
    parsed: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, Decimal]] = {}
    for key in doc:
        if key == "claims":
            fields.error(f"{path}.claims", "resource claims are not supported for builds")
        elif key not in ("requests", "limits"):
            fields.error(f"{path}.{key}", "unknown field: expected requests or limits")
    for part in ("requests", "limits"):
        parsed[part], values[part] = {}, {}
        for name, raw in fields.mapping(doc, part, f"{path}.{part}").items():
            where = f"{path}.{part}.{name}"
            if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
                fields.error(where, "must be a resource name such as cpu or memory")
                continue
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                fields.error(where, "must be a quantity such as 500m or 2Gi")
                continue
            text = str(raw)
            try:
                value = parse_quantity(text)
            except ValueError as e:
                fields.error(where, str(e))
                continue
            if value < 0:
                fields.error(where, "must not be negative")
                continue
            parsed[part][name], values[part][name] = text, value
    for name, request in values["requests"].items():
        limit = values["limits"].get(name)
        if limit is not None and request > limit:
            fields.error(
                f"{path}.requests.{name}",
                f"must be less than or equal to the {name} limit {parsed['limits'][name]}",
            )
    return ResourceRequirements(requests=parsed["requests"], limits=parsed["limits"])


def parse_revision(doc: Doc, fields: Fields, path: str) -> SourceRevision:
    git = fields.mapping(doc, "git", f"{path}.git")
    return SourceRevision(
        commit=fields.string(git, "commit", f"{path}.git.commit"),
        author=_parse_user(git, "author", fields, f"{path}.git.author"),
        committer=_parse_user(git, "committer", fields, f"{path}.git.committer"),
        message=fields.string(git, "message", f"{path}.git.message"),
    )


def parse_env(items: list[Any], fields: Fields, path: str) -> tuple[EnvVar, ...]:
    result: list[EnvVar] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            fields.error(item_path, "must be an object with name and value")
            continue
        name = fields.string(item, "name", f"{item_path}.name", required=True)
        if "valueFrom" in item:
            fields.error(f"{item_path}.valueFrom", "is not supported; give the value directly")
        value = item.get("value", "")
        if not isinstance(value, str):
            fields.error(f"{item_path}.value", "must be a string")
            continue
        if name:
            result.append(EnvVar(name=name, value=value))
    return tuple(result)


def parse_reference(doc: Doc, fields: Fields, path: str) -> ObjectReference | None:
    """A ``{kind, name, namespace}`` image reference: DockerImage or ImageStreamTag.

    DockerImage names are checked (and Docker Hub short names accepted) by
    :mod:`triggerd.images.references`; ImageStreamTag names must be ``<stream>:<tag>``.
    ImageStreamImage is refused with a message saying what to use instead.
    """
    if not doc:
        return None
    kind_text = fields.string(doc, "kind", f"{path}.kind", required=True)
    name = fields.string(doc, "name", f"{path}.name", required=True)
    namespace = fields.optional_string(doc, "namespace", f"{path}.namespace")
    # The kind is judged whether or not the name is there, so a reference with both wrong
    # is refused with both errors at once rather than one per attempt.
    if kind_text and kind_text not in (ReferenceKind.DOCKER_IMAGE, ReferenceKind.IMAGE_STREAM_TAG):
        if kind_text == ReferenceKind.IMAGE_STREAM_IMAGE:
            fields.error(
                f"{path}.kind",
                "ImageStreamImage references are not supported; use ImageStreamTag or a "
                "DockerImage pinned by digest",
            )
        else:
            fields.error(
                f"{path}.kind",
                f"unsupported value {kind_text!r}: expected DockerImage or ImageStreamTag",
            )
        return None
    if not kind_text or not name:
        return None
    if kind_text == ReferenceKind.IMAGE_STREAM_TAG:
        stream, sep, tag = name.partition(":")
        if not sep or not stream or not tag or ":" in tag:
            fields.error(f"{path}.name", f"must be <imagestream>:<tag>, not {name!r}")
            return None
        try:
            references.parse(f"{stream}:{tag}")
        except ValueError as e:
            fields.error(f"{path}.name", str(e))
            return None
        return ObjectReference(kind=ReferenceKind.IMAGE_STREAM_TAG, name=name, namespace=namespace)
    try:
        references.parse(name)
    except ValueError as e:
        fields.error(f"{path}.name", str(e))
        return None
    return ObjectReference(kind=ReferenceKind.DOCKER_IMAGE, name=name, namespace=namespace)


def _parse_user(doc: Doc, key: str, fields: Fields, path: str) -> SourceControlUser | None:
    user = fields.mapping(doc, key, path)
    if not user:
        return None
    return SourceControlUser(
        name=fields.string(user, "name", f"{path}.name"),
        email=fields.string(user, "email", f"{path}.email"),
    )


def _parse_source(doc: Doc, fields: Fields, path: str) -> BuildSource:
    git_doc = fields.mapping(doc, "git", f"{path}.git")
    git: GitSource | None = None
    if git_doc:
        uri = fields.string(git_doc, "uri", f"{path}.git.uri", required=True)
        ref = fields.string(git_doc, "ref", f"{path}.git.ref")
        if ref.startswith("-"):
            fields.error(f"{path}.git.ref", "must not start with '-'")
        if uri.startswith("-"):
            fields.error(f"{path}.git.uri", "must not start with '-'")
        git = GitSource(uri=uri, ref=ref)
    dockerfile = doc.get("dockerfile")
    if dockerfile is not None and not isinstance(dockerfile, str):
        fields.error(f"{path}.dockerfile", "must be a string")
        dockerfile = None
    binary: BinarySource | None = None
    if doc.get("binary") is not None:
        binary_doc = fields.mapping(doc, "binary", f"{path}.binary")
        as_file = fields.string(binary_doc, "asFile", f"{path}.binary.asFile")
        if as_file and ("/" in as_file or as_file in (".", "..")):
            fields.error(f"{path}.binary.asFile", "must be a plain file name")
        binary = BinarySource(as_file=as_file)
        if git:
            fields.error(f"{path}.binary", "cannot be combined with git")
    images = _parse_image_sources(doc, fields, path)
    secrets = _parse_context_inputs(doc, "secrets", "secret", fields, path)
    config_maps = _parse_context_inputs(doc, "configMaps", "configMap", fields, path)
    declared = fields.string(doc, "type", f"{path}.type")
    if git:
        source_type = SourceType.GIT
    elif binary is not None:
        source_type = SourceType.BINARY
    elif dockerfile:
        source_type = SourceType.DOCKERFILE
    else:
        source_type = SourceType.NONE
        fields.error(path, "needs git, binary or dockerfile")
    if declared and declared not in {t.value for t in SourceType}:
        fields.error(
            f"{path}.type", f"unsupported value {declared!r}: expected Git, Binary or Dockerfile"
        )
    context_dir = fields.relative_path(
        fields.string(doc, "contextDir", f"{path}.contextDir"), f"{path}.contextDir", "repository"
    )
    secret = fields.mapping(doc, "sourceSecret", f"{path}.sourceSecret")
    return BuildSource(
        type=source_type,
        git=git,
        binary=binary,
        dockerfile=dockerfile or None,
        context_dir=context_dir,
        source_secret=fields.optional_string(secret, "name", f"{path}.sourceSecret.name"),
        secrets=secrets,
        config_maps=config_maps,
        images=images,
    )


def _parse_image_sources(doc: Doc, fields: Fields, path: str) -> tuple[ImageSource, ...]:
    result: list[ImageSource] = []
    for i, item in enumerate(fields.items(doc, "images", f"{path}.images")):
        ipath = f"{path}.images[{i}]"
        if not isinstance(item, Mapping):
            fields.error(ipath, "must be an object with from and paths")
            continue
        from_doc = fields.mapping(item, "from", f"{ipath}.from")
        # A missing from does not stop the paths being checked: every error at once.
        reference: ObjectReference | None = None
        if from_doc:
            reference = parse_reference(from_doc, fields, f"{ipath}.from")
        else:
            fields.error(f"{ipath}.from", "is required")
        paths: list[ImagePath] = []
        for j, entry in enumerate(fields.items(item, "paths", f"{ipath}.paths")):
            ppath = f"{ipath}.paths[{j}]"
            if not isinstance(entry, Mapping):
                fields.error(ppath, "must be an object with sourcePath and destinationDir")
                continue
            source_path = fields.string(entry, "sourcePath", f"{ppath}.sourcePath", required=True)
            source_ok = bool(source_path)
            if source_path and not source_path.startswith("/"):
                fields.error(f"{ppath}.sourcePath", "must be an absolute path in the image")
                source_ok = False
            elif any(part == ".." for part in source_path.split("/")):
                fields.error(f"{ppath}.sourcePath", "must not contain '..'")
                source_ok = False
            destination = fields.relative_path(
                fields.string(entry, "destinationDir", f"{ppath}.destinationDir"),
                f"{ppath}.destinationDir",
                "context",
            )
            if source_ok:
                paths.append(ImagePath(source_path=source_path, destination_dir=destination))
        if not paths:
            fields.error(f"{ipath}.paths", "needs at least one path")
        pull_secret = fields.mapping(item, "pullSecret", f"{ipath}.pullSecret")
        if reference is not None and paths:
            result.append(
                ImageSource(
                    from_image=reference,
                    paths=tuple(paths),
                    pull_secret=fields.optional_string(
                        pull_secret, "name", f"{ipath}.pullSecret.name"
                    ),
                )
            )
    return tuple(result)


def _parse_context_inputs(
    doc: Doc, key: str, ref_key: str, fields: Fields, path: str
) -> tuple[ContextInput, ...]:
    result: list[ContextInput] = []
    for i, item in enumerate(fields.items(doc, key, f"{path}.{key}")):
        ipath = f"{path}.{key}[{i}]"
        if not isinstance(item, Mapping):
            fields.error(ipath, f"must be an object with {ref_key} and destinationDir")
            continue
        ref = fields.mapping(item, ref_key, f"{ipath}.{ref_key}")
        name = fields.string(ref, "name", f"{ipath}.{ref_key}.name", required=True)
        name_ok = bool(name)
        if name and ("/" in name or name.startswith(".")):
            fields.error(f"{ipath}.{ref_key}.name", "must be a plain name")
            name_ok = False
        destination = fields.relative_path(
            fields.string(item, "destinationDir", f"{ipath}.destinationDir"),
            f"{ipath}.destinationDir",
            "context",
        )
        if name_ok:
            result.append(ContextInput(name=name, destination_dir=destination))
    return tuple(result)


def _parse_strategy(doc: Doc, fields: Fields, path: str) -> BuildStrategy:
    declared = fields.string(doc, "type", f"{path}.type")
    if not declared:
        if "sourceStrategy" in doc:
            declared = StrategyType.SOURCE.value
        elif "customStrategy" in doc:
            declared = StrategyType.CUSTOM.value
        elif "dockerStrategy" in doc or not doc:
            declared = StrategyType.DOCKER.value
        else:
            fields.error(f"{path}.type", "is required")
            return BuildStrategy(type=StrategyType.DOCKER)
    if declared == StrategyType.CUSTOM:
        custom = _parse_custom_strategy(doc, fields, f"{path}.customStrategy")
        if custom is None:
            return BuildStrategy(type=StrategyType.DOCKER)
        return BuildStrategy(type=StrategyType.CUSTOM, custom=custom)
    if declared == StrategyType.SOURCE:
        source = _parse_source_strategy(doc, fields, f"{path}.sourceStrategy")
        if source is None:
            return BuildStrategy(type=StrategyType.DOCKER)
        return BuildStrategy(type=StrategyType.SOURCE, source=source)
    if declared != StrategyType.DOCKER:
        if declared in {t.value for t in StrategyType}:
            fields.error(
                f"{path}.type",
                f"the {declared} strategy is not supported; use Docker, Source or Custom",
            )
        else:
            fields.error(
                f"{path}.type",
                f"unsupported value {declared!r}: expected one of Docker, Source, Custom",
            )
        return BuildStrategy(type=StrategyType.DOCKER)
    docker_doc = fields.mapping(doc, "dockerStrategy", f"{path}.dockerStrategy")
    dpath = f"{path}.dockerStrategy"
    dockerfile_path = fields.relative_path(
        fields.string(docker_doc, "dockerfilePath", f"{dpath}.dockerfilePath"),
        f"{dpath}.dockerfilePath",
        "context",
    )
    pull_secret = fields.mapping(docker_doc, "pullSecret", f"{dpath}.pullSecret")
    volumes = _parse_volumes(docker_doc, fields, f"{dpath}.volumes")
    policy_text = fields.string(
        docker_doc, "imageOptimizationPolicy", f"{dpath}.imageOptimizationPolicy"
    )
    policy = ImageOptimizationPolicy.NONE
    if policy_text:
        try:
            policy = ImageOptimizationPolicy(policy_text)
        except ValueError:
            fields.error(
                f"{dpath}.imageOptimizationPolicy",
                f"unsupported value {policy_text!r}: expected None, SkipLayers or "
                "SkipLayersAndWarn",
            )
    docker = DockerStrategy(
        from_image=parse_reference(
            fields.mapping(docker_doc, "from", f"{dpath}.from"), fields, f"{dpath}.from"
        ),
        dockerfile_path=dockerfile_path or DEFAULT_DOCKERFILE,
        build_args=parse_env(
            fields.items(docker_doc, "buildArgs", f"{dpath}.buildArgs"),
            fields,
            f"{dpath}.buildArgs",
        ),
        env=parse_env(fields.items(docker_doc, "env", f"{dpath}.env"), fields, f"{dpath}.env"),
        no_cache=fields.boolean(docker_doc, "noCache", f"{dpath}.noCache"),
        force_pull=fields.boolean(docker_doc, "forcePull", f"{dpath}.forcePull"),
        pull_secret=fields.optional_string(pull_secret, "name", f"{dpath}.pullSecret.name"),
        volumes=volumes,
        image_optimization_policy=policy,
    )
    return BuildStrategy(type=StrategyType.DOCKER, docker=docker)


def _parse_volumes(doc: Doc, fields: Fields, path: str) -> tuple[BuildVolume, ...]:
    result: list[BuildVolume] = []
    seen_destinations: set[str] = set()
    for i, item in enumerate(fields.items(doc, "volumes", path)):
        vpath = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            fields.error(vpath, "must be an object with name, source and mounts")
            continue
        name = fields.string(item, "name", f"{vpath}.name", required=True)
        source = fields.mapping(item, "source", f"{vpath}.source")
        source_type = fields.string(source, "type", f"{vpath}.source.type", required=True)
        source_name = ""
        # A bad source does not stop the mounts being checked: every error at once.
        source_ok = True
        if source_type == VolumeSourceType.SECRET:
            secret = fields.mapping(source, "secret", f"{vpath}.source.secret")
            source_name = fields.string(
                secret, "secretName", f"{vpath}.source.secret.secretName", required=True
            )
        elif source_type == VolumeSourceType.CONFIG_MAP:
            config_map = fields.mapping(source, "configMap", f"{vpath}.source.configMap")
            source_name = fields.string(
                config_map, "name", f"{vpath}.source.configMap.name", required=True
            )
        elif source_type:
            fields.error(
                f"{vpath}.source.type",
                f"unsupported value {source_type!r}: expected Secret or ConfigMap "
                "(CSI volumes need a cluster)",
            )
            source_ok = False
        if source_name and ("/" in source_name or source_name.startswith(".")):
            fields.error(f"{vpath}.source", "the secret or config map name must be a plain name")
            source_ok = False
        destinations: list[str] = []
        for j, mount in enumerate(fields.items(item, "mounts", f"{vpath}.mounts")):
            mpath = f"{vpath}.mounts[{j}].destinationPath"
            if not isinstance(mount, Mapping):
                fields.error(f"{vpath}.mounts[{j}]", "must be an object with destinationPath")
                continue
            destination = fields.string(mount, "destinationPath", mpath, required=True)
            if not destination:
                continue
            if not destination.startswith("/") or ":" in destination or ".." in destination:
                fields.error(mpath, "must be an absolute path without ':' or '..'")
            elif destination in seen_destinations:
                fields.error(mpath, f"{destination} is mounted twice")
            else:
                seen_destinations.add(destination)
                destinations.append(destination)
        if not destinations:
            fields.error(f"{vpath}.mounts", "needs at least one destinationPath")
        if name and source_ok and source_name and destinations:
            result.append(
                BuildVolume(
                    name=name,
                    source_type=VolumeSourceType(source_type),
                    source_name=source_name,
                    destinations=tuple(destinations),
                )
            )
    return tuple(result)


#: URL schemes sourceStrategy.scripts may use: inside the builder image, or downloaded.
SCRIPTS_URL_SCHEMES = ("image://", "http://", "https://")


def _parse_source_strategy(doc: Doc, fields: Fields, spath: str) -> SourceStrategy | None:
    source_doc = fields.mapping(doc, "sourceStrategy", spath)
    if not source_doc:
        fields.error(spath, "is required for the Source strategy")
        return None
    from_doc = fields.mapping(source_doc, "from", f"{spath}.from")
    # A missing builder image does not stop the other fields being checked.
    from_image: ObjectReference | None = None
    if from_doc:
        from_image = parse_reference(from_doc, fields, f"{spath}.from")
    else:
        fields.error(f"{spath}.from", "is required: the builder image")
    scripts = fields.string(source_doc, "scripts", f"{spath}.scripts")
    if scripts and not scripts.startswith(SCRIPTS_URL_SCHEMES):
        fields.error(
            f"{spath}.scripts",
            f"unsupported URL {scripts!r}: expected image:///PATH, http:// or https://",
        )
    if scripts.startswith("image://") and not scripts.startswith("image:///"):
        fields.error(f"{spath}.scripts", "an image:// URL needs an absolute path (image:///...)")
    pull_secret = fields.mapping(source_doc, "pullSecret", f"{spath}.pullSecret")
    incremental = source_doc.get("incremental")
    if incremental is not None and not isinstance(incremental, bool):
        fields.error(f"{spath}.incremental", "must be a boolean")
    env = parse_env(fields.items(source_doc, "env", f"{spath}.env"), fields, f"{spath}.env")
    if from_image is None:
        return None
    return SourceStrategy(
        from_image=from_image,
        scripts=scripts.rstrip("/"),
        env=env,
        incremental=incremental is True,
        force_pull=fields.boolean(source_doc, "forcePull", f"{spath}.forcePull"),
        pull_secret=fields.optional_string(pull_secret, "name", f"{spath}.pullSecret.name"),
    )


def _parse_custom_strategy(doc: Doc, fields: Fields, cpath: str) -> CustomStrategy | None:
    custom_doc = fields.mapping(doc, "customStrategy", cpath)
    from_doc = fields.mapping(custom_doc, "from", f"{cpath}.from")
    # A missing builder image does not stop the other fields being checked.
    from_image: ObjectReference | None = None
    if from_doc:
        from_image = parse_reference(from_doc, fields, f"{cpath}.from")
    else:
        fields.error(f"{cpath}.from", "is required: the custom builder image")
    pull_secret = fields.mapping(custom_doc, "pullSecret", f"{cpath}.pullSecret")
    env = parse_env(fields.items(custom_doc, "env", f"{cpath}.env"), fields, f"{cpath}.env")
    mounts: list[SecretMount] = []
    for i, item in enumerate(fields.items(custom_doc, "secrets", f"{cpath}.secrets")):
        ipath = f"{cpath}.secrets[{i}]"
        if not isinstance(item, Mapping):
            fields.error(ipath, "must be an object with secretSource and mountPath")
            continue
        source = fields.mapping(item, "secretSource", f"{ipath}.secretSource")
        name = fields.string(source, "name", f"{ipath}.secretSource.name", required=True)
        mount_path = fields.string(item, "mountPath", f"{ipath}.mountPath", required=True)
        if mount_path and (not mount_path.startswith("/") or ":" in mount_path):
            fields.error(f"{ipath}.mountPath", "must be an absolute path without ':'")
        elif name and mount_path:
            mounts.append(SecretMount(name=name, mount_path=mount_path))
    if from_image is None:
        return None
    return CustomStrategy(
        from_image=from_image,
        env=env,
        expose_docker_socket=fields.boolean(
            custom_doc, "exposeDockerSocket", f"{cpath}.exposeDockerSocket"
        ),
        force_pull=fields.boolean(custom_doc, "forcePull", f"{cpath}.forcePull"),
        pull_secret=fields.optional_string(pull_secret, "name", f"{cpath}.pullSecret.name"),
        secrets=tuple(mounts),
    )


def _parse_post_commit(doc: Doc, fields: Fields, path: str) -> PostCommit:
    script = fields.string(doc, "script", f"{path}.script")
    command = _string_list(doc, "command", fields, f"{path}.command")
    args = _string_list(doc, "args", fields, f"{path}.args")
    if script and command:
        fields.error(path, "give script or command, not both")
    return PostCommit(script=script, command=command, args=args)


def _string_list(doc: Doc, key: str, fields: Fields, path: str) -> tuple[str, ...]:
    result: list[str] = []
    for i, item in enumerate(fields.items(doc, key, path)):
        if not isinstance(item, str):
            fields.error(f"{path}[{i}]", "must be a string")
        else:
            result.append(item)
    return tuple(result)


def _parse_output(doc: Doc, fields: Fields, path: str) -> BuildOutput:
    to = parse_reference(fields.mapping(doc, "to", f"{path}.to"), fields, f"{path}.to")
    push_secret = fields.mapping(doc, "pushSecret", f"{path}.pushSecret")
    labels: list[ImageLabel] = []
    for i, item in enumerate(fields.items(doc, "imageLabels", f"{path}.imageLabels")):
        ipath = f"{path}.imageLabels[{i}]"
        if not isinstance(item, Mapping):
            fields.error(ipath, "must be an object with name and value")
            continue
        name = fields.string(item, "name", f"{ipath}.name", required=True)
        value = fields.string(item, "value", f"{ipath}.value")
        if name:
            labels.append(ImageLabel(name=name, value=value))
    return BuildOutput(
        to=to,
        push_secret=fields.optional_string(push_secret, "name", f"{path}.pushSecret.name"),
        image_labels=tuple(labels),
    )
