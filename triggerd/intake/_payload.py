"""Reading helpers shared by the webhook parsers: headers, media types, bodies and typed fields.

Every provider module decodes its body and walks the resulting JSON through :class:`Node`,
which knows the dotted path of each value so a wrong type is reported as
``env[2].name must be a string``. This module sits under the parsers and above nothing:
it must never do I/O, never raise anything but :mod:`triggerd.errors` types for bad input,
and never put a header or body value longer than a few dozen characters into a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

from triggerd import jsoncodec
from triggerd.errors import MalformedPayload, UnsupportedEvent, UnsupportedMediaType
from triggerd.events import Commit, Person, RefKind

#: A form body names a handful of fields; more is an attack or a mistake, not a webhook.
_MAX_FORM_FIELDS = 64
_SHOWN_CHARS = 80
_COMMIT_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_RAW_AUTHOR = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<email>[^<>]*)>\s*$", re.DOTALL)
_BRANCH_PREFIX = "refs/heads/"
_TAG_PREFIX = "refs/tags/"

JSON_TYPES = ("application/json",)


def shown(value: str) -> str:
    """A caller-supplied string quoted for a message, clipped so a huge header stays small."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS] + "…")
    return repr(value)


class LoweredHeaders(dict[str, str]):
    """Headers whose names are already lowercased (what :func:`lower_keys` returns)."""


def lower_keys(headers: Mapping[str, str]) -> LoweredHeaders:
    """HTTP header names are case-insensitive; the parsers look them up lowercased.

    Headers lowered once (a :class:`LoweredHeaders`) come back as they are, so a caller
    that lowers a delivery's headers once saves each parser doing it again."""
    if isinstance(headers, LoweredHeaders):
        return headers
    return LoweredHeaders({str(name).lower(): value for name, value in headers.items()})


def header(headers: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` present with a non-blank value (``headers`` already lowercased)."""
    for name in names:
        value = headers.get(name.lower())
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def check_supported(event: str, supported: tuple[str, ...], *, who: str) -> None:
    """Refuse an event type this provider's parser does not handle, naming it."""
    if event not in supported:
        raise UnsupportedEvent(
            f"{who} event {shown(event)} is not supported; supported: {', '.join(supported)}"
        )


def require_event(
    lowered: Mapping[str, str], name: str, supported: tuple[str, ...], *, who: str
) -> str:
    """The event header's value: present (400 when missing) and supported (400 naming it)."""
    event = header(lowered, name)
    if event is None:
        raise MalformedPayload(f"header {name} is missing")
    check_supported(event, supported, who=who)
    return event


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


def accept_media_type(content_type: str, accepted: tuple[str, ...], *, who: str) -> str:
    """The media type if ``accepted`` lists it; a missing Content-Type counts as the first."""
    kind = media_type(content_type)
    if not kind:
        # Scripts posting with curl often send no Content-Type at all; JSON is what they mean.
        return accepted[0]
    if kind not in accepted:
        raise UnsupportedMediaType(
            f"{who} webhooks must be sent as {' or '.join(accepted)}, not {shown(kind)}"
        )
    return kind


def decode_json(body: bytes | str, *, what: str = "body") -> object:
    """Decoded JSON, or MalformedPayload saying where the text stopped making sense."""
    try:
        return jsoncodec.loads_payload(body)
    except json.JSONDecodeError as exc:
        raise MalformedPayload(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"{what} is not valid JSON: it is not UTF-8 text") from exc
    except RecursionError as exc:
        raise MalformedPayload(f"{what} is not valid JSON: it is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise MalformedPayload(f"{what} is not valid JSON: {exc}") from exc


def form_field(body: bytes, field: str) -> str:
    """The single value of ``field`` in an application/x-www-form-urlencoded body."""
    try:
        fields = parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as exc:  # UnicodeDecodeError included
        raise MalformedPayload(f"form body could not be decoded: {exc}") from exc
    values = fields.get(field)
    if not values:
        raise MalformedPayload(f"form body has no {field} field")
    if len(values) > 1:
        raise MalformedPayload(f"form body has {len(values)} {field} fields; expected one")
    return values[0]


def describe(value: object) -> str:
    """How a JSON (or YAML) value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


class Node:
    """One decoded JSON object plus the path that led to it, for typed reads.

    Absent and ``null`` are the same to every optional read: providers use both for
    "not applicable". Required reads fail with ``field PATH is missing``.
    """

    __slots__ = ("_data", "path")

    def __init__(self, data: Mapping[object, object], path: str = "") -> None:
        self._data = data
        self.path = path

    @classmethod
    def root(cls, value: object, *, what: str = "body must be a JSON object") -> Node:
        if not isinstance(value, Mapping):
            raise MalformedPayload(f"{what}, not {describe(value)}")
        return cls(value)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def same_content(self, other: Node) -> bool:
        """Whether both hold equal JSON (a comparison in C, far cheaper than a parse)."""
        return self._data == other._data

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def _missing(self, key: str) -> MalformedPayload:
        return MalformedPayload(f"field {self.at(key)} is missing")

    def _wrong(self, key: str, expected: str, value: object) -> MalformedPayload:
        return MalformedPayload(f"{self.at(key)} must be {expected}, not {describe(value)}")

    def string(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def require_string(self, key: str) -> str:
        value = self.string(key)
        if value is None:
            raise self._missing(key)
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def child(self, key: str) -> Node | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object", value)
        return Node(value, self.at(key))

    def require_child(self, key: str) -> Node:
        node = self.child(key)
        if node is None:
            raise self._missing(key)
        return node

    def _items(self, key: str) -> list[object]:
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        return value

    def children(self, key: str) -> list[Node]:
        """A list of objects; each element must be an object."""
        nodes = []
        for index, item in enumerate(self._items(key)):
            path = f"{self.at(key)}[{index}]"
            if not isinstance(item, Mapping):
                raise MalformedPayload(f"{path} must be an object, not {describe(item)}")
            nodes.append(Node(item, path))
        return nodes

    def strings(self, key: str) -> tuple[str, ...]:
        values = []
        for index, item in enumerate(self._items(key)):
            if not isinstance(item, str):
                raise MalformedPayload(
                    f"{self.at(key)}[{index}] must be a string, not {describe(item)}"
                )
            values.append(item)
        return tuple(values)


def unique(values: Iterable[str | None]) -> tuple[str, ...]:
    """Non-blank values in first-seen order, each once."""
    seen: dict[str, None] = {}
    for value in values:
        if value and value.strip():
            seen.setdefault(value.strip(), None)
    return tuple(seen)


def commit_id(node: Node, key: str) -> str:
    """A required full commit id (SHA-1 or SHA-256), lowercased."""
    value = node.require_string(key)
    if not _COMMIT_ID.fullmatch(value):
        raise MalformedPayload(f"{node.at(key)} must be a commit id (40 or 64 hex digits)")
    return value.lower()


def person(node: Node | None, *name_keys: str, email_key: str = "email") -> Person | None:
    """A Person from the first non-blank of ``name_keys`` and ``email_key``; None if neither."""
    if node is None:
        return None
    name = next((v for v in (node.string(k) for k in name_keys) if v), "")
    email = node.string(email_key) or ""
    if not name and not email:
        return None
    return Person(name=name, email=email)


def raw_person(raw: str) -> Person | None:
    """Git's ``Name <email>`` form (Bitbucket Cloud's ``author.raw``)."""
    match = _RAW_AUTHOR.match(raw)
    if match is None:
        return Person(name=raw.strip(), email="") if raw.strip() else None
    return Person(name=match.group("name"), email=match.group("email").strip())


def git_style_commit(node: Node) -> Commit:
    """A commit in the GitHub/GitLab/Gitea shape: id, message, author, committer, file lists."""
    return Commit(
        id=node.require_string("id"),
        message=node.string("message") or "",
        author=person(node.child("author"), "name", "username"),
        committer=person(node.child("committer"), "name", "username"),
        added=node.strings("added"),
        modified=node.strings("modified"),
        removed=node.strings("removed"),
    )


def split_ref(node: Node, key: str, *, who: str) -> tuple[str, RefKind, str]:
    """The full ref at ``node[key]``, its kind and short name (see :func:`classify_ref`)."""
    return classify_ref(node.require_string(key), node.at(key), who=who)


def classify_ref(ref: str, path: str, *, who: str) -> tuple[str, RefKind, str]:
    """The full ref, its kind and short name; other ref namespaces are not builds."""
    for prefix, kind in ((_BRANCH_PREFIX, RefKind.BRANCH), (_TAG_PREFIX, RefKind.TAG)):
        if ref.startswith(prefix):
            name = ref[len(prefix) :]
            if not name:
                raise MalformedPayload(f"{path} {shown(ref)} names no branch or tag")
            return ref, kind, name
    raise UnsupportedEvent(
        f"{who} push to {shown(ref)} is not supported; only branches (refs/heads/) "
        "and tags (refs/tags/) are"
    )


def find_commit(commits: Iterable[Commit], commit: str) -> Commit | None:
    return next((c for c in commits if c.id.lower() == commit.lower()), None)
