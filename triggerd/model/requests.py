"""BuildRequest and the making of a new Build from a BuildConfig (pure).

``instantiate`` is what OpenShift's build generator does: copy the BuildConfig's CommonSpec,
apply the request's overrides (revision, env, build args, noCache, from), name the build
``<config>-<number>``, stamp labels and annotations, and record why it started. Every
override is validated like the BuildConfig itself, with field paths.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from triggerd.errors import FieldError, Invalid
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
    if fields.errors:
        raise Invalid(KIND, config_name, fields.errors)
    return request


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
    overrides = bool(
        request.env
        or request.from_image is not None
        or request.build_args
        or request.no_cache is not None
    )
    spec, errors = _overridden_spec(config, request) if overrides else _plain_spec(config)
    name = build_name(config.name, number)
    if errors:
        raise Invalid(builds.KIND, name, list(errors))
    if request.revision is not None:
        spec = replace(spec, revision=request.revision)
    labels = {
        **config.meta.labels,
        **request.labels,
        builds.CONFIG_LABEL: config.name,
        builds.CONFIG_LABEL_DEPRECATED: config.name,
        builds.START_POLICY_LABEL: config.run_policy.value,
    }
    annotations = {
        **{k: v for k, v in request.annotations.items() if k not in INHERITED_ANNOTATIONS},
        **{k: v for k, v in config.meta.annotations.items() if k in INHERITED_ANNOTATIONS},
        builds.CONFIG_ANNOTATION: config.name,
        builds.NUMBER_ANNOTATION: str(number),
    }
    meta = metas.ObjectMeta(
        name=name,
        namespace=config.namespace,
        uid=uid,
        creation_timestamp=created,
        labels=labels,
        annotations=annotations,
    )
    causes = request.triggered_by or ({"message": MANUAL_CAUSE},)
    return builds.Build(meta=meta, spec=spec, triggered_by=causes, status=builds.BuildStatus())


def _build_spec_doc(config: BuildConfig) -> dict[str, Any]:
    doc = {
        k: copy.deepcopy(v) for k, v in config.spec.raw.items() if k not in specs.CONFIG_ONLY_FIELDS
    }
    doc.pop("revision", None)
    return doc


def _overridden_spec(
    config: BuildConfig, request: BuildRequest
) -> tuple[specs.CommonSpec, tuple[FieldError, ...]]:
    spec_doc = _build_spec_doc(config)
    strategy = dict(spec_doc.get("strategy") or {})
    # env and from apply to whichever strategy the config uses; build args and noCache are
    # Docker's alone.
    key = STRATEGY_KEYS.get(config.spec.strategy.type, "dockerStrategy")
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
