"""GitLab webhook parser: Push Hook, Tag Push Hook, and System Hook push/tag_push events.

First stage of the webhook flow after the token check: headers and raw body in, one
:class:`~triggerd.events.GitPush` out. The commit to build is ``checkout_sha`` (for an
annotated tag ``after`` is the tag object, and ``commits[]`` is capped and unordered for
merges), falling back to ``after`` only when ``checkout_sha`` is absent or null. Pure: no
I/O, no clock, and only :mod:`triggerd.errors` types are raised, whatever the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypedDict

from triggerd.errors import MalformedPayload, UnsupportedEvent
from triggerd.events import Event, GitPush, Person, Provider, is_zero_sha
from triggerd.intake._payload import (
    JSON_TYPES,
    Node,
    accept_media_type,
    commit_id,
    decode_json,
    find_commit,
    git_style_commit,
    header,
    lower_keys,
    require_event,
    shown,
    split_ref,
    unique,
)

EVENT_HEADER: Final = "X-Gitlab-Event"
#: X-Gitlab-Event-UUID names one delivery; newer GitLab also sends Idempotency-Key.
DELIVERY_HEADERS: Final = ("X-Gitlab-Event-UUID", "Idempotency-Key")
PUSH_HOOK: Final = "Push Hook"
TAG_PUSH_HOOK: Final = "Tag Push Hook"
SYSTEM_HOOK: Final = "System Hook"
SUPPORTED_EVENTS: Final = (PUSH_HOOK, TAG_PUSH_HOOK, SYSTEM_HOOK)
#: the object kinds a System Hook may carry that are pushes
SYSTEM_PUSH_KINDS: Final = ("push", "tag_push")
_PROJECT_URL_FIELDS: Final = ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url")
_REPOSITORY_URL_FIELDS: Final = ("git_http_url", "git_ssh_url", "url", "homepage")


class RawProject(TypedDict, total=False):
    git_http_url: str
    git_ssh_url: str
    web_url: str
    default_branch: str


class RawPushHook(TypedDict, total=False):
    """The fields of a Push Hook / Tag Push Hook body this parser reads."""

    object_kind: str
    event_name: str
    ref: str
    before: str
    after: str
    checkout_sha: str | None
    user_name: str
    user_username: str
    user_email: str
    project: RawProject
    commits: list[dict[str, object]]


def delivery_id(headers: Mapping[str, str]) -> str | None:
    return header(lower_keys(headers), *DELIVERY_HEADERS)


def parse(headers: Mapping[str, str], body: bytes, content_type: str) -> Event:
    """The delivery as one event (a GitLab push hook names exactly one ref)."""
    return parse_all(headers, body, content_type)[0]


def parse_all(headers: Mapping[str, str], body: bytes, content_type: str) -> tuple[Event, ...]:
    lowered = lower_keys(headers)
    event = require_event(lowered, EVENT_HEADER, SUPPORTED_EVENTS, who="GitLab")
    accept_media_type(content_type, JSON_TYPES, who="GitLab")
    root = Node.root(decode_json(body))
    if event == SYSTEM_HOOK:
        # System hooks carry every instance event; only pushes are builds.
        kind = root.string("object_kind") or root.string("event_name")
        if kind is None:
            raise MalformedPayload("field object_kind is missing (and so is event_name)")
        if kind not in SYSTEM_PUSH_KINDS:
            raise UnsupportedEvent(
                f"GitLab system hook event {shown(kind)} is not supported; supported: "
                + ", ".join(SYSTEM_PUSH_KINDS)
            )
    return (_push(root, header(lowered, *DELIVERY_HEADERS)),)


def _push(root: Node, delivery: str | None) -> GitPush:
    ref, kind, name = split_ref(root, "ref", who="GitLab")
    # Deletions send checkout_sha null and after all zeros: then after is the answer.
    after = commit_id(root, "checkout_sha" if root.has("checkout_sha") else "after")
    before = root.string("before")
    project = root.child("project")
    repository = root.child("repository")
    if project is None and repository is None:
        raise MalformedPayload("field project is missing (and so is repository)")
    urls = unique(
        [project.string(f) for f in _PROJECT_URL_FIELDS if project is not None]
        + [repository.string(f) for f in _REPOSITORY_URL_FIELDS if repository is not None]
    )
    if not urls:
        raise MalformedPayload("field project.git_http_url is missing (the push names no URL)")
    commits = tuple(git_style_commit(node) for node in root.children("commits"))
    pusher_name = root.string("user_name") or root.string("user_username") or ""
    pusher_email = root.string("user_email") or ""
    pusher = Person(name=pusher_name, email=pusher_email) if pusher_name or pusher_email else None
    return GitPush(
        provider=Provider.GITLAB,
        delivery_id=delivery,
        repository_urls=urls,
        ref=ref,
        ref_kind=kind,
        ref_name=name,
        before=before,
        after=after,
        deleted=is_zero_sha(after),
        created=is_zero_sha(before),
        default_branch=project.string("default_branch") if project is not None else None,
        head_commit=find_commit(commits, after),
        commits=commits,
        pusher=pusher,
    )
