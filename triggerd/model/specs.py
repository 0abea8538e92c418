"""The spec shared by BuildConfig and Build: source, strategy, output, revision (pure).

OpenShift calls this ``CommonSpec``. The typed view is parsed from the raw mapping, and the
raw mapping stays the canonical form, so fields triggerd does not act on (yet) survive a
load/store round trip unchanged. Every check reports its field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
class BuildSource:
    type: SourceType
    git: GitSource | None = None
    dockerfile: str | None = None
    context_dir: str = ""
    source_secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerStrategy:
    from_image: ObjectReference | None = None
    dockerfile_path: str = DEFAULT_DOCKERFILE
    build_args: tuple[EnvVar, ...] = ()
    env: tuple[EnvVar, ...] = ()
    no_cache: bool = False
    force_pull: bool = False
    pull_secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildStrategy:
    type: StrategyType
    docker: DockerStrategy | None = None


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
class CommonSpec:
    """Typed view of a spec; ``raw`` is the canonical document it was parsed from."""

    source: BuildSource
    strategy: BuildStrategy
    output: BuildOutput
    revision: SourceRevision | None = None
    completion_deadline_seconds: int = DEFAULT_COMPLETION_DEADLINE_SECONDS
    node_selector: Mapping[str, str] = field(default_factory=dict)
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
        raw=spec,
    )


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
    if not doc:
        return None
    kind_text = fields.string(doc, "kind", f"{path}.kind", required=True)
    name = fields.string(doc, "name", f"{path}.name", required=True)
    namespace = fields.optional_string(doc, "namespace", f"{path}.namespace")
    if not kind_text or not name:
        return None
    if kind_text != ReferenceKind.DOCKER_IMAGE:
        known = {k.value for k in ReferenceKind}
        if kind_text in known:
            fields.error(
                f"{path}.kind", f"{kind_text} references are not supported yet; use DockerImage"
            )
        else:
            fields.error(f"{path}.kind", f"unsupported value {kind_text!r}: expected DockerImage")
        return None
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
    if doc.get("binary") is not None:
        fields.error(f"{path}.binary", "binary builds are not supported yet")
    for unsupported in ("images", "secrets", "configMaps"):
        if doc.get(unsupported):
            fields.error(f"{path}.{unsupported}", "is not supported yet")
    declared = fields.string(doc, "type", f"{path}.type")
    if git:
        source_type = SourceType.GIT
    elif dockerfile:
        source_type = SourceType.DOCKERFILE
    else:
        source_type = SourceType.NONE
        fields.error(path, "needs git or dockerfile")
    if declared and declared not in {t.value for t in SourceType}:
        fields.error(f"{path}.type", f"unsupported value {declared!r}: expected Git or Dockerfile")
    context_dir = fields.relative_path(
        fields.string(doc, "contextDir", f"{path}.contextDir"), f"{path}.contextDir", "repository"
    )
    secret = fields.mapping(doc, "sourceSecret", f"{path}.sourceSecret")
    return BuildSource(
        type=source_type,
        git=git,
        dockerfile=dockerfile or None,
        context_dir=context_dir,
        source_secret=fields.optional_string(secret, "name", f"{path}.sourceSecret.name"),
    )


def _parse_strategy(doc: Doc, fields: Fields, path: str) -> BuildStrategy:
    declared = fields.string(doc, "type", f"{path}.type")
    docker_doc = fields.mapping(doc, "dockerStrategy", f"{path}.dockerStrategy")
    if not declared:
        declared = StrategyType.DOCKER.value if "dockerStrategy" in doc or not doc else ""
        if not declared:
            fields.error(f"{path}.type", "is required")
            return BuildStrategy(type=StrategyType.DOCKER)
    if declared != StrategyType.DOCKER:
        if declared in {t.value for t in StrategyType}:
            fields.error(
                f"{path}.type", f"the {declared} strategy is not supported yet; use Docker"
            )
        else:
            fields.error(
                f"{path}.type",
                f"unsupported value {declared!r}: expected one of Docker, Source, Custom",
            )
        return BuildStrategy(type=StrategyType.DOCKER)
    dpath = f"{path}.dockerStrategy"
    dockerfile_path = fields.relative_path(
        fields.string(docker_doc, "dockerfilePath", f"{dpath}.dockerfilePath"),
        f"{dpath}.dockerfilePath",
        "context",
    )
    pull_secret = fields.mapping(docker_doc, "pullSecret", f"{dpath}.pullSecret")
    if docker_doc.get("volumes"):
        fields.error(f"{dpath}.volumes", "is not supported yet")
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
    )
    return BuildStrategy(type=StrategyType.DOCKER, docker=docker)


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
