"""BuildConfig: parse, validate and serialise (pure).

A BuildConfig exported from OpenShift (``oc get bc -o yaml``, with status, managedFields and
fields triggerd ignores) loads unchanged: the raw document is kept and only the fields the
server owns (uid, resourceVersion, creationTimestamp, status.lastVersion) are rewritten on
the way out. Invalid documents raise :class:`triggerd.errors.Invalid` listing every problem.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from triggerd.errors import Invalid
from triggerd.model import meta as metas
from triggerd.model import specs
from triggerd.model.fields import Doc, Fields

KIND = "BuildConfig"
DEFAULT_HISTORY_LIMIT = 5
PAUSED_ANNOTATION = "openshift.io/build-config.paused"
#: The registry repository a config's layer cache lives in ("none" turns it off).
CACHE_ANNOTATION = "triggerd.dev/cache-repository"
#: Asks for a privileged build pod (honoured only where the settings allow it). Only the
#: BuildConfig can ask: its Builds inherit it, a BuildRequest can neither set nor drop it.
PRIVILEGED_ANNOTATION = "triggerd.dev/privileged"
#: status.conditions type saying whether triggerd accepts a stored config (configs applied
#: with kubectl skip triggerd's checks; a False condition says what is wrong).
VALID_CONDITION = "Valid"


class RunPolicy(StrEnum):
    SERIAL = "Serial"
    SERIAL_LATEST_ONLY = "SerialLatestOnly"
    PARALLEL = "Parallel"


class TriggerType(StrEnum):
    GITHUB = "GitHub"
    GITLAB = "GitLab"
    BITBUCKET = "Bitbucket"
    GENERIC = "Generic"
    IMAGE_CHANGE = "ImageChange"
    CONFIG_CHANGE = "ConfigChange"


# The key of each webhook trigger's settings object, as OpenShift spells it.
WEBHOOK_KEYS: Mapping[TriggerType, str] = {
    TriggerType.GITHUB: "github",
    TriggerType.GITLAB: "gitlab",
    TriggerType.BITBUCKET: "bitbucket",
    TriggerType.GENERIC: "generic",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebHookTrigger:
    """A webhook trigger: OpenShift's fields, then triggerd's optional filters.

    The filters live beside ``secret`` in the same object (``github: {secret, branches}``);
    OpenShift's own fields keep their meaning. Globs know ``*`` (which also matches ``/``)
    and ``?``; brackets are literal.
    """

    secret: str | None = None
    secret_reference: str | None = None
    allow_env: bool = False
    #: branch name globs; empty: the BuildConfig's git ref (or the default branch)
    branches: tuple[str, ...] = ()
    #: tag name globs; empty: tag pushes start nothing
    tags: tuple[str, ...] = ()
    #: a push starts a build only when a changed file matches one of these (if any)...
    paths: tuple[str, ...] = ()
    #: ...and not every changed file matches one of these
    ignore_paths: tuple[str, ...] = ()
    #: commit author names/emails (globs) whose pushes start nothing (bot loops)
    ignore_authors: tuple[str, ...] = ()
    #: honour [skip ci] / [ci skip] in the head commit message
    skip_ci: bool = True
    #: Generic only: apply dockerStrategyOptions (buildArgs, noCache) from the payload
    allow_strategy_options: bool = False
    #: Generic only: header carrying an HMAC-SHA256 of the body keyed with the secret
    hmac_header: str | None = None
    #: Generic only: a second secret the caller must send as ``Authorization: Bearer``
    bearer_secret_reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """One entry of spec.triggers; ``raw`` keeps fields later stages read (filters, image)."""

    type: TriggerType
    webhook: WebHookTrigger | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildConfig:
    meta: metas.ObjectMeta
    spec: specs.CommonSpec
    run_policy: RunPolicy = RunPolicy.SERIAL
    triggers: tuple[Trigger, ...] = ()
    successful_builds_history_limit: int = DEFAULT_HISTORY_LIMIT
    failed_builds_history_limit: int = DEFAULT_HISTORY_LIMIT
    last_version: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def paused(self) -> bool:
        return self.meta.annotations.get(PAUSED_ANNOTATION, "").lower() == "true"

    def with_server_fields(
        self,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        creation_timestamp: Any = None,
        last_version: int | None = None,
    ) -> BuildConfig:
        """A copy with fields the server owns replaced (the rest is the user's)."""
        new_meta = replace(
            self.meta,
            uid=self.meta.uid if uid is None else uid,
            resource_version=self.meta.resource_version
            if resource_version is None
            else resource_version,
            creation_timestamp=creation_timestamp or self.meta.creation_timestamp,
        )
        return replace(
            self,
            meta=new_meta,
            last_version=self.last_version if last_version is None else last_version,
        )

    def to_dict(self) -> dict[str, Any]:
        doc = copy.deepcopy(dict(self.raw))
        doc["apiVersion"] = doc.get("apiVersion") or metas.API_VERSION
        doc["kind"] = KIND
        metadata = dict(doc.get("metadata") or {})
        metadata.update(self.meta.to_dict())
        doc["metadata"] = metadata
        status = dict(doc.get("status") or {})
        status["lastVersion"] = self.last_version
        doc["status"] = status
        return doc


def parse(doc: Any, *, default_namespace: str = metas.DEFAULT_NAMESPACE) -> BuildConfig:
    """Parse and validate a BuildConfig document; raise Invalid naming every bad field."""
    if not isinstance(doc, Mapping):
        raise Invalid(KIND, "", [_top_level_error(doc)])
    # Parse the stripped copy that is kept as ``raw``, so the typed view's spec.raw is the
    # same mapping as raw["spec"]: one copy of the document per config, not two.
    given, doc = doc, _strip_server_fields(doc)
    fields = Fields()
    metas.check_type_meta(doc, fields, KIND)
    # metadata.resourceVersion is the caller's precondition: read it before it was stripped.
    meta = metas.parse_meta(given, fields, default_namespace=default_namespace)
    spec_doc = fields.mapping(doc, "spec", "spec")
    if not spec_doc:
        fields.error("spec", "is required")
    spec = specs.parse_common_spec(spec_doc, fields)
    run_policy = _parse_run_policy(spec_doc, fields)
    triggers = tuple(_parse_triggers(fields.items(spec_doc, "triggers", "spec.triggers"), fields))
    success_limit = fields.integer(
        spec_doc, "successfulBuildsHistoryLimit", "spec.successfulBuildsHistoryLimit", minimum=0
    )
    failed_limit = fields.integer(
        spec_doc, "failedBuildsHistoryLimit", "spec.failedBuildsHistoryLimit", minimum=0
    )
    status = fields.mapping(doc, "status", "status")
    last_version = status.get("lastVersion", 0)
    if isinstance(last_version, bool) or not isinstance(last_version, int) or last_version < 0:
        fields.error("status.lastVersion", "must be a non-negative integer")
        last_version = 0
    if fields.errors:
        raise Invalid(KIND, meta.name, fields.errors)
    return BuildConfig(
        meta=meta,
        spec=spec,
        run_policy=run_policy,
        triggers=triggers,
        successful_builds_history_limit=(
            DEFAULT_HISTORY_LIMIT if success_limit is None else success_limit
        ),
        failed_builds_history_limit=DEFAULT_HISTORY_LIMIT if failed_limit is None else failed_limit,
        last_version=last_version,
        raw=doc,
    )


def _top_level_error(doc: object) -> Any:
    from triggerd.errors import FieldError

    return FieldError("<root>", f"a BuildConfig must be an object, not {type(doc).__name__}")


def _strip_server_fields(doc: Doc) -> dict[str, Any]:
    """Drop what the server regenerates, so a stored copy never carries stale versions."""
    raw = copy.deepcopy(dict(doc))
    metadata = raw.get("metadata")
    if isinstance(metadata, Mapping):  # anything else is reported by validation
        raw["metadata"] = {
            k: v
            for k, v in metadata.items()
            if k not in ("managedFields", "resourceVersion", "generation", "selfLink")
        }
    return raw


def _parse_run_policy(spec: Doc, fields: Fields) -> RunPolicy:
    text = fields.string(spec, "runPolicy", "spec.runPolicy")
    if not text:
        return RunPolicy.SERIAL
    try:
        return RunPolicy(text)
    except ValueError:
        fields.error(
            "spec.runPolicy",
            f"unsupported value {text!r}: expected one of Serial, SerialLatestOnly, Parallel",
        )
        return RunPolicy.SERIAL


def _parse_triggers(items: list[Any], fields: Fields) -> list[Trigger]:
    triggers: list[Trigger] = []
    for i, item in enumerate(items):
        path = f"spec.triggers[{i}]"
        if not isinstance(item, Mapping):
            fields.error(path, "must be an object")
            continue
        text = fields.string(item, "type", f"{path}.type", required=True)
        try:
            trigger_type = TriggerType(text)
        except ValueError:
            if text:
                fields.error(
                    f"{path}.type",
                    f"unsupported value {text!r}: expected one of "
                    + ", ".join(t.value for t in TriggerType),
                )
            continue
        webhook: WebHookTrigger | None = None
        key = WEBHOOK_KEYS.get(trigger_type)
        if key is not None:
            hook = fields.mapping(item, key, f"{path}.{key}")
            secret_ref = fields.mapping(hook, "secretReference", f"{path}.{key}.secretReference")
            hpath = f"{path}.{key}"
            bearer_ref = fields.mapping(
                hook, "bearerSecretReference", f"{hpath}.bearerSecretReference"
            )
            webhook = WebHookTrigger(
                secret=fields.optional_string(hook, "secret", f"{hpath}.secret"),
                secret_reference=fields.optional_string(
                    secret_ref, "name", f"{hpath}.secretReference.name"
                ),
                allow_env=fields.boolean(hook, "allowEnv", f"{hpath}.allowEnv"),
                branches=_globs(hook, "branches", fields, hpath),
                tags=_globs(hook, "tags", fields, hpath),
                paths=_globs(hook, "paths", fields, hpath),
                ignore_paths=_globs(hook, "ignorePaths", fields, hpath),
                ignore_authors=_globs(hook, "ignoreAuthors", fields, hpath),
                skip_ci=fields.boolean(hook, "skipCi", f"{hpath}.skipCi", default=True),
                allow_strategy_options=fields.boolean(
                    hook, "allowStrategyOptions", f"{hpath}.allowStrategyOptions"
                ),
                hmac_header=fields.optional_string(hook, "hmacHeader", f"{hpath}.hmacHeader"),
                bearer_secret_reference=fields.optional_string(
                    bearer_ref, "name", f"{hpath}.bearerSecretReference.name"
                ),
            )
            if not webhook.secret and not webhook.secret_reference:
                fields.error(f"{path}.{key}", "needs secret or secretReference")
        triggers.append(Trigger(type=trigger_type, webhook=webhook, raw=item))
    return triggers


def _globs(doc: Doc, key: str, fields: Fields, path: str) -> tuple[str, ...]:
    result: list[str] = []
    for i, item in enumerate(fields.items(doc, key, f"{path}.{key}")):
        if not isinstance(item, str) or not item:
            fields.error(f"{path}.{key}[{i}]", "must be a non-empty string (a glob pattern)")
        else:
            result.append(item)
    return tuple(result)
