"""Matching: which BuildConfigs a webhook event starts, and with what request (pure).

Repository URLs are normalised (scheme, credentials, default ports, ``.git``, host case,
scp-style ``git@host:org/repo``) so that the URL in a BuildConfig and the URLs in a payload
compare equal. :class:`RepoIndex` maps normalised URLs to configs, so routing an event costs
the same with 10,000 configs as with one. Each candidate trigger's filters then decide, and
every refusal carries a reason the webhook answer reports (triggerd is never silent).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from triggerd import events
from triggerd.model import specs
from triggerd.model.buildconfigs import BuildConfig, Trigger, TriggerType, WebHookTrigger
from triggerd.model.requests import BuildRequest

_SCP = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?P<path>(?!//)[^\s]+)$")
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
#: GitHub sends at most 20 commits in a push payload; beyond that file lists are partial.
_PAYLOAD_COMMIT_LIMIT = 20
SKIP_CI_MARKERS = ("[skip ci]", "[ci skip]", "[no ci]")

PROVIDER_TRIGGERS: Mapping[events.Provider, TriggerType] = {
    events.Provider.GITHUB: TriggerType.GITHUB,
    events.Provider.GITLAB: TriggerType.GITLAB,
    events.Provider.BITBUCKET: TriggerType.BITBUCKET,
    events.Provider.GENERIC: TriggerType.GENERIC,
}
#: OpenShift's spec.triggeredBy message and cause key per trigger type
CAUSES: Mapping[TriggerType, tuple[str, str]] = {
    TriggerType.GITHUB: ("GitHub WebHook", "githubWebHook"),
    TriggerType.GITLAB: ("GitLab WebHook", "gitlabWebHook"),
    TriggerType.BITBUCKET: ("Bitbucket WebHook", "bitbucketWebHook"),
    TriggerType.GENERIC: ("Generic WebHook", "genericWebHook"),
}


# Every delivery normalises the four URLs GitHub sends for one repository (clone, html, ssh,
# git) to route it; a busy organisation sends the same few URLs over and over, and urlsplit
# was 9 % of a delivery's time. The function is pure, so a bounded memo is exact.
@functools.lru_cache(maxsize=4096)
def normalize_repo_url(url: str) -> str | None:
    """``host[:port]/path`` without scheme, user, default port or ``.git``; None if no URL."""
    text = url.strip()
    if not text:
        return None
    if "://" not in text:
        scp = _SCP.match(text)
        if scp is None:
            return None
        host, port, path = scp.group("host"), None, scp.group("path")
    else:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return None
        if not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
        if port == _DEFAULT_PORTS.get(parts.scheme.lower()):
            port = None
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    if not path:
        return None
    netloc = host.lower() + (f":{port}" if port else "")
    return f"{netloc}/{path}"


class RepoIndex:
    """Normalised repository URL → the configs that build it.

    It keeps the parsed configs themselves, so routing a delivery reads no store: every
    config write goes through the engine (or, with a shared store, its watch), which puts
    the stored config here. Only the routing-relevant parts (spec, triggers, annotations)
    must be current; status.lastVersion may lag, and the store reads the config again when
    it numbers a build.
    """

    def __init__(self) -> None:
        self._by_url: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self._configs: dict[tuple[str, str], tuple[str, BuildConfig]] = {}

    def put(self, config: BuildConfig) -> None:
        key = (config.namespace, config.name)
        self.remove(*key)
        git = config.spec.source.git
        url = normalize_repo_url(git.uri) if git else None
        if url:
            self._by_url[url].add(key)
            self._configs[key] = (url, config)

    def remove(self, namespace: str, name: str) -> None:
        entry = self._configs.pop((namespace, name), None)
        if entry is not None:
            url = entry[0]
            self._by_url[url].discard((namespace, name))
            if not self._by_url[url]:
                del self._by_url[url]

    def lookup(self, urls: Iterable[str]) -> list[BuildConfig]:
        """The configs building any of ``urls``, ordered by (namespace, name)."""
        found: set[tuple[str, str]] = set()
        for url in urls:
            normalised = normalize_repo_url(url)
            if normalised:
                found |= self._by_url.get(normalised, set())
        return [self._configs[key][1] for key in sorted(found)]

    def __len__(self) -> int:
        return len(self._configs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    accepted: bool
    reason: str = ""


def webhook_triggers(config: BuildConfig, trigger_type: TriggerType) -> list[Trigger]:
    return [t for t in config.triggers if t.type is trigger_type and t.webhook is not None]


def evaluate_push(config: BuildConfig, hook: WebHookTrigger, push: events.GitPush) -> Verdict:
    """Does this push, through this trigger, start a build of ``config``?"""
    if config.paused:
        return Verdict(accepted=False, reason=f"buildconfig {config.name} is paused")
    if push.deleted or events.is_zero_sha(push.after):
        return Verdict(accepted=False, reason=f"{push.ref_kind.value} {push.ref_name} was deleted")
    ref_verdict = _match_ref(config, hook, push)
    if not ref_verdict.accepted:
        return ref_verdict
    head = push.head_commit
    if hook.skip_ci and head is not None:
        lowered = head.message.lower()
        marker = next((m for m in SKIP_CI_MARKERS if m in lowered), None)
        if marker:
            return Verdict(accepted=False, reason=f"head commit message contains {marker}")
    if hook.ignore_authors:
        people = [p for p in (head.author if head else None, push.pusher) if p is not None]
        for person in people:
            for pattern in hook.ignore_authors:
                if _glob(person.name, pattern) or _glob(person.email, pattern):
                    return Verdict(
                        accepted=False, reason=f"author {person.name} is in ignoreAuthors"
                    )
    return _match_paths(hook, push)


def _match_ref(config: BuildConfig, hook: WebHookTrigger, push: events.GitPush) -> Verdict:
    name = push.ref_name
    if push.ref_kind is events.RefKind.TAG:
        if any(_glob(name, p) for p in hook.tags):
            return Verdict(accepted=True)
        git_ref = config.spec.source.git.ref if config.spec.source.git else ""
        if git_ref in (name, f"refs/tags/{name}"):
            return Verdict(accepted=True)
        return Verdict(accepted=False, reason=f"tag {name} does not match the trigger's tags")
    if hook.branches:
        if any(_glob(name, p) for p in hook.branches):
            return Verdict(accepted=True)
        return Verdict(
            accepted=False,
            reason=f"branch {name} does not match branches {', '.join(hook.branches)}",
        )
    wanted = _config_ref(config)
    if not wanted:
        if not push.default_branch:
            # Never a guess such as "main" or "master": the config follows the repository's
            # default branch, and this payload (Bitbucket Data Center's, say) does not say
            # which branch that is.
            return Verdict(
                accepted=False,
                reason=f"branch {name}: the config names no ref and the payload does not say "
                "which branch is the default; set spec.source.git.ref or the trigger's branches",
            )
        wanted = push.default_branch
    if name == wanted:
        return Verdict(accepted=True)
    return Verdict(accepted=False, reason=f"branch {name} does not match the config's ref {wanted}")


def _config_ref(config: BuildConfig) -> str:
    """The config's ref as a short name ("" when it follows the default branch)."""
    git = config.spec.source.git
    return _short_ref(git.ref) if git and git.ref else ""


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericVerdict:
    accepted: bool
    reason: str = ""
    #: the revision to build: the payload's ``git`` or the ``refs[]`` entry that matched
    revision: events.GenericRevision | None = None


def evaluate_generic(
    config: BuildConfig, hook: WebHookTrigger, event: events.GenericTrigger
) -> GenericVerdict:
    """Does this Generic payload, through this trigger, start a build of ``config``?

    As OpenShift: no ref means "build the config's ref"; a ``git.ref`` must match the
    config's ref, and of post-receive ``refs[]`` the first matching entry is built. Beyond
    OpenShift, the trigger's ``branches``/``tags`` patterns apply, and so do ``skipCi`` and
    ``ignoreAuthors``; ``paths`` cannot, as the payload lists no changed files, so building
    is the safe answer there, as for partial push payloads. Unlike OpenShift, a config
    without a ref (it follows the default branch) and without patterns builds any ref
    that carries its commit, and refuses one without: a ref that only a pattern or an
    empty config ref accepts is built from its commit, since fetching it by name would
    build the config's ref (or the default branch) instead of the one asked for.
    """
    if config.paused:
        return GenericVerdict(accepted=False, reason=f"buildconfig {config.name} is paused")
    primary = _payload_revision(event)
    candidates = event.refs or ((primary,) if event.ref else ())
    if not candidates:
        chosen = primary
    else:
        reasons = []
        for candidate in candidates:
            reason = _generic_ref_refusal(config, hook, candidate)
            if reason is None:
                chosen = candidate
                break
            reasons.append(reason)
        else:
            if len(reasons) == 1:
                return GenericVerdict(accepted=False, reason=reasons[0])
            return GenericVerdict(
                accepted=False, reason="none of the refs matched: " + "; ".join(reasons)
            )
    if hook.skip_ci and chosen.message:
        lowered = chosen.message.lower()
        marker = next((m for m in SKIP_CI_MARKERS if m in lowered), None)
        if marker:
            return GenericVerdict(accepted=False, reason=f"commit message contains {marker}")
    for person in (p for p in (chosen.author, chosen.committer) if p is not None):
        if any(_glob(person.name, x) or _glob(person.email, x) for x in hook.ignore_authors):
            return GenericVerdict(
                accepted=False, reason=f"author {person.name} is in ignoreAuthors"
            )
    return GenericVerdict(accepted=True, revision=chosen)


def _payload_revision(event: events.GenericTrigger) -> events.GenericRevision:
    """The revision the payload's ``git`` names (or its first ``refs[]`` entry)."""
    return events.GenericRevision(
        ref=event.ref,
        commit=event.commit,
        author=event.author,
        committer=event.committer,
        message=event.message,
    )


def _generic_ref_refusal(
    config: BuildConfig, hook: WebHookTrigger, candidate: events.GenericRevision
) -> str | None:
    ref = candidate.ref or ""
    asked = _short_ref(ref)
    wanted = _config_ref(config)
    if wanted and asked == wanted:
        return None
    is_tag = ref.startswith("refs/tags/")
    patterns, field = (hook.tags, "tags") if is_tag else (hook.branches, "branches")
    if patterns or (not wanted and not hook.branches and not hook.tags):
        if patterns and not any(_glob(asked, p) for p in patterns):
            return f"ref {asked} does not match the trigger's {field} {', '.join(patterns)}"
        if not candidate.commit:
            # Only its commit says what to build: the build would otherwise fetch the
            # config's ref (or the default branch), not the one asked for.
            return f"ref {asked} carries no commit and is not the config's ref " + (
                wanted or "(the config follows the default branch)"
            )
        return None
    return f"ref {asked} does not match the config's ref {wanted or '(default branch)'}"


def _match_paths(hook: WebHookTrigger, push: events.GitPush) -> Verdict:
    if not hook.paths and not hook.ignore_paths:
        return Verdict(accepted=True)
    changed = events.changed_paths(push)
    if not changed or len(push.commits) >= _PAYLOAD_COMMIT_LIMIT:
        # The payload does not list every changed file: building is the safe answer.
        return Verdict(accepted=True)
    if hook.paths and not any(_path_matches(p, hook.paths) for p in changed):
        return Verdict(accepted=False, reason="no changed file matches the trigger's paths")
    if hook.ignore_paths and all(_path_matches(p, hook.ignore_paths) for p in changed):
        return Verdict(accepted=False, reason="every changed file matches ignorePaths")
    return Verdict(accepted=True)


def _glob(text: str, pattern: str) -> bool:
    """``*`` and ``?`` wildcards only: brackets are literal, so ``*[bot]`` means bot accounts."""
    escaped = "".join({"[": "[[]", "]": "[]]"}.get(c, c) for c in pattern)
    return fnmatch.fnmatchcase(text, escaped)


def _path_matches(path: str, patterns: Iterable[str]) -> bool:
    return any(_glob(path, p) or (p.endswith("/") and path.startswith(p)) for p in patterns)


def _user(person: events.Person | None) -> specs.SourceControlUser | None:
    if person is None:
        return None
    return specs.SourceControlUser(name=person.name, email=person.email)


def push_request(push: events.GitPush, trigger_type: TriggerType) -> BuildRequest:
    """Build exactly the pushed commit, and record why (OpenShift's cause shape)."""
    head = push.head_commit
    revision = specs.SourceRevision(
        commit=push.after,
        author=_user(head.author) if head else None,
        committer=_user(head.committer) if head else None,
        message=head.message if head else "",
    )
    return BuildRequest(revision=revision, triggered_by=(_cause(trigger_type, revision),))


def generic_request(
    event: events.GenericTrigger,
    hook: WebHookTrigger,
    chosen: events.GenericRevision | None = None,
) -> BuildRequest:
    """The request a Generic webhook asks for; env and strategy options only where allowed.

    ``chosen`` is the revision :func:`evaluate_generic` picked (default: the payload's git).
    """
    if chosen is None:
        chosen = _payload_revision(event)
    revision = None
    if chosen.commit or chosen.message or chosen.author:
        revision = specs.SourceRevision(
            commit=chosen.commit or "",
            author=_user(chosen.author),
            committer=_user(chosen.committer),
            message=chosen.message or "",
        )
    env = tuple(specs.EnvVar(name=k, value=v) for k, v in event.env) if hook.allow_env else ()
    allow = hook.allow_strategy_options
    return BuildRequest(
        revision=revision,
        env=env,
        build_args=tuple(specs.EnvVar(name=k, value=v) for k, v in event.build_args)
        if allow
        else (),
        no_cache=event.no_cache if allow else None,
        triggered_by=(_cause(TriggerType.GENERIC, revision),),
    )


def ignored_generic_options(event: events.GenericTrigger, hook: WebHookTrigger) -> list[str]:
    """What the payload asked for that the trigger does not allow (reported to the caller)."""
    ignored = []
    if event.env and not hook.allow_env:
        ignored.append("env (the trigger does not set allowEnv)")
    if (event.build_args or event.no_cache is not None) and not hook.allow_strategy_options:
        ignored.append("dockerStrategyOptions (the trigger does not set allowStrategyOptions)")
    return ignored


def _cause(trigger_type: TriggerType, revision: specs.SourceRevision | None) -> dict[str, Any]:
    message, key = CAUSES[trigger_type]
    # OpenShift records the secret as a placeholder, never the value.
    detail: dict[str, Any] = {"secret": "<secret>"}
    if revision is not None:
        detail["revision"] = revision.to_dict()
    return {"message": message, key: detail}
