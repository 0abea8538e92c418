"""BuildRequest and the making of a new Build from a BuildConfig (pure).

``instantiate`` is what OpenShift's build generator does: copy the BuildConfig's CommonSpec,
apply the request's overrides (revision, env, build args, noCache, from), name the build
``<config>-<number>``, stamp labels and annotations, and record why it started. ``clone``
is its ``Clone``: the new build copies an earlier build's spec instead of the config's.
Every override is validated like the BuildConfig itself, with field paths.

A build of a config with binary source needs an upload: :func:`refusal` says why a request
without one cannot start, and both makers refuse such a build (the engine asks first, so a
webhook or trigger can skip that config instead of failing a whole batch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from triggerd.errors import Conflict, FieldError, Invalid
from triggerd.model import buildconfigs, builds, specs
from triggerd.model import meta as metas
from triggerd.model.buildconfigs import BuildConfig
from triggerd.model.fields import Fields

KIND = "BuildRequest"
STRATEGY_KEYS = {
    specs.StrategyType.DOCKER: "dockerStrategy",
    specs.StrategyType.SOURCE: "sourceStrategy",
    specs.StrategyType.CUSTOM: "customStrategy",
}
#: BuildConfig annotations a Build carries over because its executor reads them. They are
#: the config's alone: a BuildRequest (any API caller, a webhook) can neither set nor clear
#: them — the privileged switch and where the layer cache is pushed (with the push secret)
#: are for whoever may change the BuildConfig.
INHERITED_ANNOTATIONS = frozenset(
    {buildconfigs.CACHE_ANNOTATION, buildconfigs.PRIVILEGED_ANNOTATION}
)
MANUAL_CAUSE = "Manually triggered"
#: Annotation namespaces of triggerd and of OpenShift's build machinery. triggerd reads
#: several of them to decide how and on what a build runs: the privileged switch and the
#: layer cache (the config's alone), the stored upload a binary build extracts, the images
#: an image change build recorded (lastTriggeredImageID), the number, config and clone
#: source, the queue order. A BuildRequest naming any key in them is refused, so no API
#: caller can set or override one — nor one added later.
RESERVED_ANNOTATION_PREFIXES = (
    "triggerd.dev/",
    "openshift.io/build.",
    "openshift.io/build-config.",
)
#: Reserved annotations a clone keeps from the build it copies: its input.
CLONED_ANNOTATIONS = frozenset({builds.BINARY_INPUT_ANNOTATION, builds.BINARY_AS_FILE_ANNOTATION})


class BinaryInputRequired(Conflict):
    """A build of a config with binary source, asked for without an upload: it could only
    fail later ("no upload"), so it is not created."""


class ConfigPaused(Conflict):
    """A build of a paused BuildConfig: OpenShift starts none, manual ones included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRequest:
    """What to start: overrides on top of the BuildConfig, and the causes."""

    revision: specs.SourceRevision | None = None
    env: tuple[specs.EnvVar, ...] = ()
    build_args: tuple[specs.EnvVar, ...] = ()
    no_cache: bool | None = None
    from_image: specs.ObjectReference | None = None
    triggered_by: tuple[Mapping[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def parse(doc: Any, config_name: str) -> BuildRequest:
    """Parse a BuildRequest body (an empty body is a plain manual start)."""
    if doc is None:
        return BuildRequest()
    fields = Fields()
    if not isinstance(doc, Mapping):
        fields.error("<root>", "a BuildRequest must be an object")
        raise Invalid(KIND, config_name, fields.errors)
    if doc.get("kind") not in (None, KIND):
        fields.error("kind", f"must be {KIND!r}")
    meta = fields.mapping(doc, "metadata", "metadata")
    name = meta.get("name")
    if name not in (None, "", config_name):
        fields.error("metadata.name", f"must name the BuildConfig {config_name!r}, not {name!r}")
    revision_doc = fields.mapping(doc, "revision", "revision")
    revision = specs.parse_revision(revision_doc, fields, "revision") if revision_doc else None
    if revision is not None and revision.commit:
        _check_commit(revision.commit, fields, "revision.git.commit")
    options = fields.mapping(doc, "dockerStrategyOptions", "dockerStrategyOptions")
    no_cache = options.get("noCache")
    if no_cache is not None and not isinstance(no_cache, bool):
        fields.error("dockerStrategyOptions.noCache", "must be true or false")
        no_cache = None
    causes = []
    for i, cause in enumerate(fields.items(doc, "triggeredBy", "triggeredBy")):
        if not isinstance(cause, Mapping):
            fields.error(f"triggeredBy[{i}]", "must be an object")
        else:
            causes.append(cause)
    request = BuildRequest(
        revision=revision,
        env=specs.parse_env(fields.items(doc, "env", "env"), fields, "env"),
        build_args=specs.parse_env(
            fields.items(options, "buildArgs", "dockerStrategyOptions.buildArgs"),
            fields,
            "dockerStrategyOptions.buildArgs",
        ),
        no_cache=no_cache,
        from_image=specs.parse_reference(fields.mapping(doc, "from", "from"), fields, "from"),
        triggered_by=tuple(causes),
        labels=fields.string_map(meta, "labels", "metadata.labels"),
        annotations=fields.string_map(meta, "annotations", "metadata.annotations"),
    )
    for key in request.annotations:
        if is_reserved_annotation(key):
            fields.error(
                f"metadata.annotations.{key}",
                "is set by triggerd (or from the BuildConfig), never by a BuildRequest",
            )
    if fields.errors:
        raise Invalid(KIND, config_name, fields.errors)
    return request


def is_reserved_annotation(key: str) -> bool:
    """Whether ``key`` is in a namespace only triggerd writes on Builds."""
    return key.startswith(RESERVED_ANNOTATION_PREFIXES)


def check_clone_request(request: BuildRequest, build_name: str) -> None:
    """A clone builds exactly what the earlier build built: a request may add env, build
    args and noCache (as OpenShift's Clone applies them), but not change the revision or
    the builder image; Invalid names the field instead of ignoring it."""
    fields = Fields()
    if request.revision is not None:
        fields.error("revision", "a clone builds the revision of the build it clones")
    if request.from_image is not None:
        fields.error("from", "a clone builds on the image of the build it clones")
    if fields.errors:
        raise Invalid(KIND, build_name, fields.errors)


def has_binary_source(source: specs.BuildSource) -> bool:
    """Whether builds with ``source`` take their input from an upload."""
    return source.binary is not None or source.type is specs.SourceType.BINARY


def missing_binary_input(
    config_name: str, source: specs.BuildSource, annotations: Mapping[str, str]
) -> str | None:
    """Why a build with ``source`` and ``annotations`` cannot run, when it has binary
    source and no upload; None when it can."""
    if not has_binary_source(source):
        return None
    if annotations.get(builds.BINARY_INPUT_ANNOTATION):
        return None
    return (
        f'cannot start a binary build without input: BuildConfig "{config_name}" has binary '
        "source (spec.source.binary); upload the input with instantiatebinary (triggerd "
        f"start-build {config_name} --from-dir DIR | --from-file FILE | --from-archive FILE | "
        "--from-repo DIR) or re-run an earlier build with builds/BUILD/clone (triggerd "
        "start-build --from-build BUILD)"
    )


def refusal(config: BuildConfig, request: BuildRequest) -> Conflict | None:
    """Why ``request`` cannot start a build of ``config``, as the error to raise (None: it
    can). A paused config starts nothing, as in OpenShift (``oc start-build`` included); a
    webhook, a ConfigChange or an ImageChange trigger never brings an upload, which a
    binary config needs (instantiatebinary brings one)."""
    if config.paused:
        return ConfigPaused(paused_message(config.name))
    missing = missing_binary_input(config.name, config.spec.source, request.annotations)
    return BinaryInputRequired(missing) if missing is not None else None


def paused_message(config_name: str) -> str:
    return (
        f'cannot start a build of BuildConfig "{config_name}": it is paused (annotation '
        f"{buildconfigs.PAUSED_ANNOTATION}); remove the annotation to start builds again"
    )


def _check_commit(commit: str, fields: Fields, path: str) -> None:
    if not all(c in "0123456789abcdefABCDEF" for c in commit) or not 4 <= len(commit) <= 64:
        fields.error(path, "must be a hexadecimal commit id")


def build_name(config_name: str, number: int) -> str:
    return f"{config_name}-{number}"


def instantiate(
    config: BuildConfig,
    request: BuildRequest,
    *,
    number: int,
    uid: str,
    created: datetime,
) -> builds.Build:
    """Make Build number ``number`` of ``config`` as ``request`` asks."""
    refused = refusal(config, request)
    if refused is not None:
        raise refused
    spec, errors = (
        _overridden_spec(config, request) if _has_overrides(request) else _plain_spec(config)
    )
    name = build_name(config.name, number)
    if errors:
        raise Invalid(builds.KIND, name, list(errors))
    if request.revision is not None:
        spec = replace(spec, revision=request.revision)
    annotations = {k: v for k, v in request.annotations.items() if k not in INHERITED_ANNOTATIONS}
    return _new_build(
        config,
        spec,
        labels={**config.meta.labels, **request.labels},
        annotations=annotations,
        causes=request.triggered_by,
        number=number,
        uid=uid,
        created=created,
    )


def clone(
    original: builds.Build,
    config: BuildConfig,
    request: BuildRequest,
    *,
    number: int,
    uid: str,
    created: datetime,
) -> builds.Build:
    """Make Build number ``number`` of ``config`` as a copy of ``original`` (OpenShift's
    generator.Clone): its spec (revision, source, strategy, output, env, build args,
    resources, hooks), its labels and annotations, its binary input; the request's env,
    build args and noCache on top (see :func:`check_clone_request`). It is a build of
    ``config`` as any other: named and numbered from it, labelled with its run policy, the
    privileged switch and layer cache as the config says now (they are the config's to
    give, not an old build's), and annotated with the build it was cloned from."""
    name = build_name(config.name, number)
    if _has_overrides(request):
        strategy = original.spec.strategy.type
        spec_doc = {k: copy.deepcopy(v) for k, v in original.spec.raw.items() if k != "revision"}
        spec, errors = _apply_overrides(spec_doc, strategy, request)
        if errors:
            raise Invalid(builds.KIND, name, list(errors))
        spec = replace(spec, revision=original.spec.revision)
    else:
        spec = original.spec  # immutable: the two builds may share it
    kept = {
        k: v
        for k, v in original.meta.annotations.items()
        if not is_reserved_annotation(k) or k in CLONED_ANNOTATIONS
    }
    if config.paused:
        raise ConfigPaused(paused_message(config.name))
    refused = missing_binary_input(config.name, spec.source, kept)
    if refused is not None:
        raise BinaryInputRequired(refused)
    requested = {k: v for k, v in request.annotations.items() if not is_reserved_annotation(k)}
    return _new_build(
        config,
        spec,
        labels={**original.meta.labels, **request.labels},
        annotations={**kept, **requested, builds.CLONE_ANNOTATION: original.name},
        causes=request.triggered_by,
        number=number,
        uid=uid,
        created=created,
    )


def _new_build(
    config: BuildConfig,
    spec: specs.CommonSpec,
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    causes: tuple[Mapping[str, Any], ...],
    number: int,
    uid: str,
    created: datetime,
) -> builds.Build:
    """A new Build of ``config``: what every build carries for its config (labels the
    scheduler and tools select on, the number, the config's own annotations) over what the
    caller gives."""
    name = build_name(config.name, number)
    meta = metas.ObjectMeta(
        name=name,
        namespace=config.namespace,
        uid=uid,
        creation_timestamp=created,
        labels={
            **labels,
            builds.CONFIG_LABEL: config.name,
            builds.CONFIG_LABEL_DEPRECATED: config.name,
            builds.START_POLICY_LABEL: config.run_policy.value,
        },
        annotations={
            **annotations,
            **{k: v for k, v in config.meta.annotations.items() if k in INHERITED_ANNOTATIONS},
            builds.CONFIG_ANNOTATION: config.name,
            builds.NUMBER_ANNOTATION: str(number),
        },
    )
    return builds.Build(
        meta=meta,
        spec=spec,
        triggered_by=causes or ({"message": MANUAL_CAUSE},),
        status=builds.BuildStatus(),
    )


def _has_overrides(request: BuildRequest) -> bool:
    return bool(
        request.env
        or request.from_image is not None
        or request.build_args
        or request.no_cache is not None
    )


def _build_spec_doc(config: BuildConfig) -> dict[str, Any]:
    doc = {
        k: copy.deepcopy(v) for k, v in config.spec.raw.items() if k not in specs.CONFIG_ONLY_FIELDS
    }
    doc.pop("revision", None)
    return doc


def _overridden_spec(
    config: BuildConfig, request: BuildRequest
) -> tuple[specs.CommonSpec, tuple[FieldError, ...]]:
    return _apply_overrides(_build_spec_doc(config), config.spec.strategy.type, request)


def _apply_overrides(
    spec_doc: dict[str, Any], strategy_type: specs.StrategyType, request: BuildRequest
) -> tuple[specs.CommonSpec, tuple[FieldError, ...]]:
    """``spec_doc`` (a copy, changed here) with the request's env, from, build args and
    noCache, parsed and validated."""
    strategy = dict(spec_doc.get("strategy") or {})
    # env and from apply to whichever strategy the spec uses; build args and noCache are
    # Docker's alone.
    key = STRATEGY_KEYS.get(strategy_type, "dockerStrategy")
    options = dict(strategy.get(key) or {})
    if request.env:
        options["env"] = _merge(options.get("env"), request.env)
    if request.from_image is not None:
        options["from"] = {"kind": request.from_image.kind.value, "name": request.from_image.name}
    if key == "dockerStrategy":
        if request.build_args:
            options["buildArgs"] = _merge(options.get("buildArgs"), request.build_args)
        if request.no_cache is not None:
            options["noCache"] = request.no_cache
    if options or key in strategy:
        strategy[key] = options
        spec_doc["strategy"] = strategy
    fields = Fields()
    spec = specs.parse_common_spec(spec_doc, fields)
    return spec, tuple(fields.errors)


#: Parsed build specs of recent config documents, by the identity of the config's spec
#: document (kept alive by the entry, so the identity cannot be reused while cached). A
#: webhook build without overrides copies its config's spec as is; parsing that spec again
#: for every build was a third of the cost of making one. Specs are immutable and their
#: documents are never mutated (Build.to_dict copies), so builds may share one.
_PLAIN_SPECS: dict[int, tuple[Mapping[str, Any], specs.CommonSpec, tuple[FieldError, ...]]] = {}
_PLAIN_SPECS_MAX = 1024


def _plain_spec(config: BuildConfig) -> tuple[specs.CommonSpec, tuple[FieldError, ...]]:
    raw = config.spec.raw
    cached = _PLAIN_SPECS.get(id(raw))
    if cached is not None and cached[0] is raw:
        return cached[1], cached[2]
    fields = Fields()
    spec = specs.parse_common_spec(_build_spec_doc(config), fields)
    if len(_PLAIN_SPECS) >= _PLAIN_SPECS_MAX:
        # Oldest first (dicts keep insertion order); a racing writer at worst drops more.
        for key in list(_PLAIN_SPECS)[: _PLAIN_SPECS_MAX // 4]:
            _PLAIN_SPECS.pop(key, None)
    _PLAIN_SPECS[id(raw)] = (raw, spec, tuple(fields.errors))
    return spec, tuple(fields.errors)


def _merge(existing: Any, overrides: tuple[specs.EnvVar, ...]) -> list[dict[str, Any]]:
    """Overrides replace entries of the same name and keep the original order otherwise."""
    merged: list[dict[str, Any]] = [dict(e) for e in existing or [] if isinstance(e, Mapping)]
    index = {e.get("name"): i for i, e in enumerate(merged)}
    for var in overrides:
        entry = {"name": var.name, "value": var.value}
        if var.name in index:
            merged[index[var.name]] = entry
        else:
            merged.append(entry)
    return merged
