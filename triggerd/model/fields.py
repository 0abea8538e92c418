"""Reading untyped API documents field by field, collecting every error with its path.

Validation in triggerd reports all problems of an object at once, each addressed by its
field path (``spec.strategy.dockerStrategy.dockerfilePath``), as Kubernetes does in a 422
``Status``. This reader is the one place that knows how to pull typed values out of a
decoded JSON/YAML mapping without raising on the first mistake. Pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from triggerd.errors import FieldError

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Doc = Mapping[str, Any]


class Fields:
    """Typed getters over a document that record, rather than raise, what is wrong."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, doc: Doc, key: str, path: str) -> Doc:
        value = doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be an object, not {_kind(value)}")
            return {}
        return value

    def items(self, doc: Doc, key: str, path: str) -> list[Any]:
        value = doc.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {_kind(value)}")
            return []
        return value

    def string(self, doc: Doc, key: str, path: str, *, required: bool = False) -> str:
        value = doc.get(key)
        if value is None or value == "":
            if required:
                self.error(path, "is required")
            return ""
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {_kind(value)}")
            return ""
        return value

    def optional_string(self, doc: Doc, key: str, path: str) -> str | None:
        return self.string(doc, key, path) or None

    def boolean(self, doc: Doc, key: str, path: str, *, default: bool = False) -> bool:
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {_kind(value)}")
            return default
        return value

    def integer(self, doc: Doc, key: str, path: str, *, minimum: int | None = None) -> int | None:
        value = doc.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, not {_kind(value)}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}, not {value}")
            return None
        return value

    def string_map(self, doc: Doc, key: str, path: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for k, v in self.mapping(doc, key, path).items():
            if not isinstance(v, str):
                self.error(f"{path}.{k}", f"must be a string, not {_kind(v)}")
            else:
                result[str(k)] = v
        return result

    def relative_path(self, value: str, path: str, what: str) -> str:
        """Check that ``value`` stays inside its root (no absolute path, no ``..``)."""
        if not value:
            return value
        if value.startswith("/") or "\\" in value or "\x00" in value:
            self.error(path, f"must be a relative path inside the {what}")
            return value
        if any(part == ".." for part in value.split("/")):
            self.error(path, f"must be a relative path inside the {what} (no '..')")
            return value
        normalised = posixpath.normpath(value)
        return "" if normalised == "." else normalised

    def dns_subdomain(self, value: str, path: str) -> None:
        if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
            self.error(
                path,
                "must be a lowercase RFC 1123 subdomain (letters, digits, '-' and '.'; "
                "at most 253 characters)",
            )

    def dns_label(self, value: str, path: str) -> None:
        if len(value) > 63 or not _DNS_LABEL.match(value):
            self.error(path, "must be a lowercase RFC 1123 label (letters, digits and '-')")


def _kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    return "null" if value is None else type(value).__name__
