"""GitHub webhook parser, also for Gitea, Gogs and Forgejo, which send GitHub's push shape.

First stage of the webhook flow after signature checking: headers and raw body in, one
neutral :mod:`triggerd.events` value out (a :class:`~triggerd.events.GitPush` for ``push``,
a :class:`~triggerd.events.Ping` for ``ping``). It is pure: no I/O, no clock, no knowledge
of BuildConfigs, and it raises only :mod:`triggerd.errors` types, whatever the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypedDict

from triggerd.errors import MalformedPayload
from triggerd.events import Event, GitPush, Ping, Provider, is_zero_sha
from triggerd.intake._payload import (
    Node,
    accept_media_type,
    check_supported,
    commit_id,
    decode_json,
    find_commit,
    form_field,
    git_style_commit,
    header,
    lower_keys,
    person,
    split_ref,
    unique,
)

EVENT_HEADER: Final = "X-GitHub-Event"
#: Gitea, Forgejo and Gogs name the event in their own header, alongside or instead of GitHub's.
EVENT_HEADERS: Final = ("X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event")
DELIVERY_HEADERS: Final = (
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-Gogs-Delivery",
)
SUPPORTED_EVENTS: Final = ("push", "ping")
FORM: Final = "application/x-www-form-urlencoded"
CONTENT_TYPES: Final = ("application/json", FORM)
_DIALECTS: Final = {
    "x-github-event": "GitHub",
    "x-gitea-event": "Gitea",
    "x-forgejo-event": "Forgejo",
    "x-gogs-event": "Gogs",
}
_REPOSITORY_URL_FIELDS: Final = ("html_url", "clone_url", "ssh_url", "git_url")


class RawPerson(TypedDict, total=False):
    name: str
    email: str
    username: str


class RawCommit(TypedDict, total=False):
    id: str
    message: str
    author: RawPerson
    committer: RawPerson
    added: list[str]
    modified: list[str]
    removed: list[str]


class RawRepository(TypedDict, total=False):
    html_url: str
    clone_url: str
    ssh_url: str
    git_url: str
    default_branch: str


class RawPush(TypedDict, total=False):
    """The fields of a push delivery this parser reads (GitHub sends many more)."""

    ref: str
    before: str
    after: str
    created: bool
    deleted: bool
    commits: list[RawCommit]
    head_commit: RawCommit | None
    repository: RawRepository
    pusher: RawPerson


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The delivery's unique id (``X-GitHub-Delivery`` or the Gitea family's equivalent)."""
    return header(lower_keys(headers), *DELIVERY_HEADERS)


def _event(headers: Mapping[str, str]) -> tuple[str, str]:
    for name in EVENT_HEADERS:
        value = header(headers, name)
        if value is not None:
            return value, _DIALECTS[name.lower()]
    raise MalformedPayload(f"header {EVENT_HEADER} is missing")


def parse(headers: Mapping[str, str], body: bytes, content_type: str) -> Event:
    """The delivery as one event (GitHub deliveries always carry exactly one)."""
    return parse_all(headers, body, content_type)[0]


def parse_all(headers: Mapping[str, str], body: bytes, content_type: str) -> tuple[Event, ...]:
    """The delivery's events: one :class:`GitPush` or one :class:`Ping`."""
    lowered = lower_keys(headers)
    event, who = _event(lowered)
    check_supported(event.lower(), SUPPORTED_EVENTS, who=who)
    media = accept_media_type(content_type, CONTENT_TYPES, who=who)
    text: bytes | str = form_field(body, "payload") if media == FORM else body
    root = Node.root(decode_json(text, what="payload" if media == FORM else "body"))
    delivery = header(lowered, *DELIVERY_HEADERS)
    if event.lower() == "ping":
        repository = root.child("repository")
        urls = _repository_urls(repository) if repository is not None else ()
        return (Ping(provider=Provider.GITHUB, delivery_id=delivery, repository_urls=urls),)
    return (_push(root, delivery, who),)


def _repository_urls(repository: Node) -> tuple[str, ...]:
    return unique(repository.string(field) for field in _REPOSITORY_URL_FIELDS)


def _push(root: Node, delivery: str | None, who: str) -> GitPush:
    ref, kind, name = split_ref(root, "ref", who=who)
    after = commit_id(root, "after")
    before = root.string("before")
    repository = root.require_child("repository")
    urls = _repository_urls(repository)
    if not urls:
        raise MalformedPayload(
            "field repository.clone_url is missing (and so are html_url, ssh_url and git_url)"
        )
    commit_nodes = root.children("commits")
    commits = tuple(git_style_commit(node) for node in commit_nodes)
    head_node = root.child("head_commit")
    if head_node is None:
        head = find_commit(commits, after)
    elif commit_nodes and head_node.same_content(commit_nodes[-1]):
        # GitHub's head_commit repeats the last of commits[]: parse it once.
        head = commits[-1]
    else:
        head = git_style_commit(head_node)
    deleted = root.boolean("deleted")
    created = root.boolean("created")
    return GitPush(
        provider=Provider.GITHUB,
        delivery_id=delivery,
        repository_urls=urls,
        ref=ref,
        ref_kind=kind,
        ref_name=name,
        before=before,
        after=after,
        # Gitea and Gogs send no created/deleted flags; the zero id says the same thing.
        deleted=is_zero_sha(after) if deleted is None else deleted,
        created=is_zero_sha(before) if created is None else created,
        default_branch=repository.string("default_branch") or repository.string("master_branch"),
        head_commit=head,
        commits=commits,
        pusher=person(root.child("pusher"), "name", "full_name", "login", "username"),
    )
