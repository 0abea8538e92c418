"""Bitbucket webhook parser: Cloud ``repo:push`` and Data Center/Server ``repo:refs_changed``.

First stage of the webhook flow after signature checking: headers and raw body in, one
:class:`~triggerd.events.GitPush` per ref the push changed (a single Bitbucket push can move
several branches and tags at once), or a :class:`~triggerd.events.Ping` for Data Center's
``diagnostics:ping``. A change with no ``old`` side is a creation, one with no ``new`` side a
deletion. Data Center payloads never name the server's host, so their repository also
travels as a host-less ``/<project key>/<slug>`` entry (:func:`path_candidates`). Pure: no
I/O, no clock, and only :mod:`triggerd.errors` types are raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, TypedDict

from triggerd.errors import MalformedPayload, UnsupportedEvent
from triggerd.events import (
    ZERO_SHA,
    Commit,
    Event,
    GitPush,
    Person,
    Ping,
    Provider,
    RefKind,
    is_zero_sha,
)
from triggerd.intake._payload import (
    JSON_TYPES,
    Node,
    accept_media_type,
    classify_ref,
    commit_id,
    decode_json,
    find_commit,
    header,
    lower_keys,
    person,
    raw_person,
    require_event,
    shown,
    unique,
)

EVENT_HEADER: Final = "X-Event-Key"
#: Cloud names a delivery X-Request-UUID, Data Center X-Request-Id.
DELIVERY_HEADERS: Final = ("X-Request-UUID", "X-Request-Id")
CLOUD_PUSH: Final = "repo:push"
SERVER_PUSH: Final = "repo:refs_changed"
SERVER_PING: Final = "diagnostics:ping"
SUPPORTED_EVENTS: Final = (CLOUD_PUSH, SERVER_PUSH, SERVER_PING)
#: Bitbucket Cloud lives on one host; its payloads give a repository's full name, not URLs.
CLOUD_HOST: Final = "bitbucket.org"
_CLOUD_REF_KINDS: Final = {"branch": RefKind.BRANCH, "tag": RefKind.TAG}
_PREFIXES: Final = {RefKind.BRANCH: "refs/heads/", RefKind.TAG: "refs/tags/"}


class RawCloudRef(TypedDict, total=False):
    type: str
    name: str
    target: dict[str, object]


class RawCloudChange(TypedDict, total=False):
    """One element of Cloud's ``push.changes``."""

    new: RawCloudRef | None
    old: RawCloudRef | None
    created: bool
    closed: bool
    forced: bool
    commits: list[dict[str, object]]


class RawServerChange(TypedDict, total=False):
    """One element of Data Center's ``changes``."""

    refId: str
    fromHash: str
    toHash: str
    type: str


def path_candidates(urls: Iterable[str]) -> tuple[str, ...]:
    """The host-less repository paths among an event's ``repository_urls``.

    A Data Center push names its repository only as ``/<project key>/<slug>`` (see
    :func:`_server_repository_path`); such an entry is no URL, so exact URL matching never
    sees it, and the caller matches it as a case-insensitive suffix of BuildConfig URIs
    instead (``…/PROJ/repo`` and ``…/scm/PROJ/repo`` alike).
    """
    return tuple(url for url in urls if url.startswith("/"))


def path_matches(candidate: str, normalized_uri: str) -> bool:
    """Does a host-less ``/<key>/<slug>`` name the repository of ``normalized_uri``?

    ``normalized_uri`` is :func:`triggerd.matching.normalize_repo_url` output
    (``host[:port]/path``); the comparison ignores case, as Bitbucket does for keys and slugs.
    """
    return ("/" + normalized_uri).lower().endswith(candidate.lower())


def delivery_id(headers: Mapping[str, str]) -> str | None:
    return header(lower_keys(headers), *DELIVERY_HEADERS)


def parse(headers: Mapping[str, str], body: bytes, content_type: str) -> Event:
    """The first ref the push changed (use :func:`parse_all` to see every one)."""
    return parse_all(headers, body, content_type)[0]


def parse_all(headers: Mapping[str, str], body: bytes, content_type: str) -> tuple[Event, ...]:
    """One event per changed ref, in payload order; never empty."""
    lowered = lower_keys(headers)
    event = require_event(lowered, EVENT_HEADER, SUPPORTED_EVENTS, who="Bitbucket")
    delivery = header(lowered, *DELIVERY_HEADERS)
    if event == SERVER_PING:
        # Data Center's "Test connection" body says nothing about any repository.
        return (Ping(provider=Provider.BITBUCKET, delivery_id=delivery, repository_urls=()),)
    accept_media_type(content_type, JSON_TYPES, who="Bitbucket")
    root = Node.root(decode_json(body))
    if event == CLOUD_PUSH:
        return _cloud(root, delivery)
    return _server(root, delivery)


def _hrefs(links: Node | None, key: str) -> list[str | None]:
    """``links.KEY.href`` (Cloud: one object) or ``links.KEY[].href`` (Data Center: a list)."""
    if links is None or not links.has(key):
        return []
    if isinstance(links.raw(key), list):
        return [node.string("href") for node in links.children(key)]
    node = links.child(key)
    return [node.string("href")] if node is not None else []


# -- Bitbucket Cloud ---------------------------------------------------------------------


def _cloud(root: Node, delivery: str | None) -> tuple[Event, ...]:
    repository = root.require_child("repository")
    full_name = repository.string("full_name")
    links = repository.child("links")
    urls = unique(
        [
            *_hrefs(links, "html"),
            *_hrefs(links, "clone"),
            f"https://{CLOUD_HOST}/{full_name}.git" if full_name else None,
            f"git@{CLOUD_HOST}:{full_name}.git" if full_name else None,
        ]
    )
    if not urls:
        raise MalformedPayload("field repository.full_name is missing (and so is links.html)")
    mainbranch = repository.child("mainbranch")
    default_branch = mainbranch.string("name") if mainbranch is not None else None
    pusher = _cloud_account(root.child("actor"))
    changes = root.require_child("push").children("changes")
    if not changes:
        raise MalformedPayload("field push.changes is empty: the push names no branch or tag")
    return tuple(
        _cloud_change(change, delivery, urls, default_branch, pusher) for change in changes
    )


def _cloud_account(node: Node | None) -> Person | None:
    # Cloud never discloses an account's email address.
    return person(node, "display_name", "nickname", "username")


def _cloud_author(node: Node | None) -> Person | None:
    if node is None:
        return None
    raw = node.string("raw")
    if raw:
        return raw_person(raw)
    return _cloud_account(node.child("user"))


def _cloud_commit(node: Node, key: str = "hash") -> Commit:
    return Commit(
        id=commit_id(node, key),
        message=node.string("message") or "",
        author=_cloud_author(node.child("author")),
        committer=None,
        # Cloud lists no files per commit; path filters see an empty change set.
        added=(),
        modified=(),
        removed=(),
    )


def _cloud_change(
    change: Node,
    delivery: str | None,
    urls: tuple[str, ...],
    default_branch: str | None,
    pusher: Person | None,
) -> GitPush:
    new = change.child("new")
    old = change.child("old")
    side = new if new is not None else old
    if side is None:
        raise MalformedPayload(f"{change.path} has neither new nor old")
    ref_type = side.require_string("type")
    kind = _CLOUD_REF_KINDS.get(ref_type)
    if kind is None:
        raise UnsupportedEvent(
            f"Bitbucket push of a {shown(ref_type)} is not supported; only branch and tag are"
        )
    name = side.require_string("name")
    if not name:
        raise MalformedPayload(f"{side.at('name')} is empty")
    commits = tuple(_cloud_commit(node) for node in change.children("commits"))
    head: Commit | None = None
    if new is not None:
        target = new.require_child("target")
        after = commit_id(target, "hash")
        head = find_commit(commits, after) or _cloud_commit(target)
    else:
        after = ZERO_SHA
    before: str | None = None
    if old is not None:
        old_target = old.child("target")
        before = old_target.string("hash") if old_target is not None else None
    return GitPush(
        provider=Provider.BITBUCKET,
        delivery_id=delivery,
        repository_urls=urls,
        ref=_PREFIXES[kind] + name,
        ref_kind=kind,
        ref_name=name,
        before=before,
        after=after,
        deleted=new is None or bool(change.boolean("closed")),
        created=old is None or bool(change.boolean("created")),
        default_branch=default_branch,
        head_commit=head,
        commits=commits,
        pusher=pusher,
    )


# -- Bitbucket Data Center / Server ------------------------------------------------------


def _server(root: Node, delivery: str | None) -> tuple[Event, ...]:
    repository = root.require_child("repository")
    links = repository.child("links")
    # The documented payload carries no links at all, and never the server's host name: the
    # project key and slug are all it names for sure, so they travel as a host-less path.
    urls = unique(
        [*_hrefs(links, "clone"), *_hrefs(links, "self"), _server_repository_path(repository)]
    )
    pusher = person(root.child("actor"), "displayName", "name", email_key="emailAddress")
    changes = root.children("changes")
    if not changes:
        raise MalformedPayload("field changes is empty: the push names no branch or tag")
    return tuple(_server_change(change, delivery, urls, pusher) for change in changes)


def _server_repository_path(repository: Node) -> str | None:
    """``/<project key>/<slug>`` when the payload names both, else None."""
    project = repository.child("project")
    key = project.string("key") if project is not None else None
    slug = repository.string("slug")
    if not key or not slug or "/" in key or "/" in slug:
        return None
    return f"/{key}/{slug}"


def _server_change(
    change: Node, delivery: str | None, urls: tuple[str, ...], pusher: Person | None
) -> GitPush:
    if change.has("refId"):
        ref, kind, name = classify_ref(
            change.require_string("refId"), change.at("refId"), who="Bitbucket"
        )
    else:
        ref_node = change.require_child("ref")
        ref, kind, name = classify_ref(
            ref_node.require_string("id"), ref_node.at("id"), who="Bitbucket"
        )
    after = commit_id(change, "toHash")
    before = change.string("fromHash")
    change_type = (change.string("type") or "").upper()
    return GitPush(
        provider=Provider.BITBUCKET,
        delivery_id=delivery,
        repository_urls=urls,
        ref=ref,
        ref_kind=kind,
        ref_name=name,
        before=before,
        after=after,
        deleted=change_type == "DELETE" or is_zero_sha(after),
        created=change_type == "ADD" or is_zero_sha(before),
        default_branch=None,
        head_commit=None,
        commits=(),
        pusher=pusher,
    )
