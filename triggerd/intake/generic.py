"""Generic webhook parser: OpenShift's GenericWebHookEvent, sent as JSON or YAML.

First stage of the Generic webhook flow after the URL secret check: headers and raw body in,
one :class:`~triggerd.events.GenericTrigger` out. Every field is optional and an empty body
is a valid "just build" request. The revision comes from ``git`` or, post-receive style, from
the entries of ``git.refs`` (or a top-level ``refs``) when ``git.ref`` is absent: all of them
are kept, in order, and matching builds the first one the trigger accepts. Wrong types
are rejected with the field's path rather than ignored as OpenShift does. Pure: no I/O, only
:func:`yaml.safe_load` for YAML, and only :mod:`triggerd.errors` types are raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypedDict

import yaml

from triggerd.errors import MalformedPayload
from triggerd.events import Event, GenericRevision, GenericTrigger, Person
from triggerd.intake._payload import (
    Node,
    accept_media_type,
    decode_json,
    header,
    lower_keys,
    person,
    unique,
)

#: The Generic webhook has no event header: the URL alone says what it is.
EVENT_HEADER: Final[str | None] = None
DELIVERY_HEADERS: Final = ("X-Delivery-ID", "Idempotency-Key")
YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
CONTENT_TYPES: Final = ("application/json", *YAML_TYPES)


class RawNameValue(TypedDict, total=False):
    name: str
    value: str


class RawUser(TypedDict, total=False):
    name: str
    email: str


class RawGitRef(TypedDict, total=False):
    uri: str
    ref: str
    commit: str
    author: RawUser
    committer: RawUser
    message: str


class RawGit(RawGitRef, total=False):
    refs: list[RawGitRef]


class RawDockerStrategyOptions(TypedDict, total=False):
    buildArgs: list[RawNameValue]
    noCache: bool


class RawGenericWebHookEvent(TypedDict, total=False):
    """OpenShift's GenericWebHookEvent (build.openshift.io/v1), plus a top-level ``refs``."""

    type: str
    git: RawGit
    refs: list[RawGitRef]
    env: list[RawNameValue]
    dockerStrategyOptions: RawDockerStrategyOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class _Revision:
    uri: str | None
    ref: str | None
    commit: str | None
    author: Person | None
    committer: Person | None
    message: str | None


def delivery_id(headers: Mapping[str, str]) -> str | None:
    return header(lower_keys(headers), *DELIVERY_HEADERS)


def parse(headers: Mapping[str, str], body: bytes, content_type: str) -> Event:
    return parse_all(headers, body, content_type)[0]


def parse_all(headers: Mapping[str, str], body: bytes, content_type: str) -> tuple[Event, ...]:
    """Always exactly one :class:`GenericTrigger`."""
    delivery = delivery_id(headers)
    if not body.strip():
        return (_trigger(delivery, None, (), (), None),)
    media = accept_media_type(content_type, CONTENT_TYPES, who="Generic")
    document = _load_yaml(body) if media in YAML_TYPES else decode_json(body)
    if document is None:  # "null" or an empty YAML document: nothing asked for
        return (_trigger(delivery, None, (), (), None),)
    root = Node.root(document, what="body must be an object (a GenericWebHookEvent)")
    root.string("type")  # OpenShift ignores it too, but a non-string is still a mistake
    git = root.child("git")
    revision = _revision(git) if git is not None else None
    refs = [_revision(node) for node in (git.children("refs") if git is not None else [])]
    refs += [_revision(node) for node in root.children("refs")]
    candidates: tuple[_Revision, ...] = ()
    if (revision is None or revision.ref is None) and refs:
        candidates = tuple(_merge(entry, revision) for entry in refs)
        revision = candidates[0]
    env = _name_values(root.children("env"))
    options = root.child("dockerStrategyOptions")
    build_args = _name_values(options.children("buildArgs")) if options is not None else ()
    no_cache = options.boolean("noCache") if options is not None else None
    return (_trigger(delivery, revision, env, build_args, no_cache, candidates),)


def _load_yaml(body: bytes) -> object:
    try:
        return yaml.safe_load(body)
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1} column {exc.problem_mark.column + 1}"
        raise MalformedPayload(
            f"body is not valid YAML: {exc.problem or exc.context}{where}"
        ) from exc
    except yaml.YAMLError as exc:  # reader errors: bad encoding, control characters
        raise MalformedPayload(f"body is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise MalformedPayload("body is not valid YAML: it is nested too deeply") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp like 2024-13-45
        raise MalformedPayload(f"body is not valid YAML: {exc}") from exc


def _revision(node: Node) -> _Revision:
    return _Revision(
        uri=node.string("uri"),
        ref=node.string("ref"),
        commit=node.string("commit"),
        author=person(node.child("author"), "name"),
        committer=person(node.child("committer"), "name"),
        message=node.string("message"),
    )


def _merge(entry: _Revision, fallback: _Revision | None) -> _Revision:
    """A refs[] entry, with anything it leaves out taken from the enclosing ``git``."""
    if fallback is None:
        return entry
    return _Revision(
        uri=entry.uri or fallback.uri,
        ref=entry.ref,
        commit=entry.commit or fallback.commit,
        author=entry.author or fallback.author,
        committer=entry.committer or fallback.committer,
        message=entry.message or fallback.message,
    )


def _name_values(nodes: list[Node]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for node in nodes:
        name = node.require_string("name")
        if not name:
            raise MalformedPayload(f"{node.at('name')} must not be empty")
        if node.has("valueFrom"):
            raise MalformedPayload(f"{node.at('valueFrom')} is not supported; give a value")
        pairs.append((name, node.string("value") or ""))
    return tuple(pairs)


def _trigger(
    delivery: str | None,
    revision: _Revision | None,
    env: tuple[tuple[str, str], ...],
    build_args: tuple[tuple[str, str], ...],
    no_cache: bool | None,
    candidates: tuple[_Revision, ...] = (),
) -> GenericTrigger:
    return GenericTrigger(
        delivery_id=delivery,
        ref=revision.ref if revision else None,
        commit=revision.commit if revision else None,
        author=revision.author if revision else None,
        committer=revision.committer if revision else None,
        message=revision.message if revision else None,
        env=env,
        build_args=build_args,
        no_cache=no_cache,
        repository_urls=unique([revision.uri if revision else None]),
        refs=tuple(
            GenericRevision(
                ref=c.ref,
                commit=c.commit,
                author=c.author,
                committer=c.committer,
                message=c.message,
            )
            for c in candidates
        ),
    )
