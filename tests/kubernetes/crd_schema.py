"""What the API server does with a custom resource, for the tests: structural-schema checks,
validation, and pruning (no Kubernetes here to ask).

:func:`structural_problems` checks a CRD's ``openAPIV3Schema`` the way apiextensions v1
requires (every node typed, ``anyOf`` only for int-or-string, list-map keys required, the
root ``metadata`` left to Kubernetes) and refuses any keyword outside :data:`KEYWORDS`, so
:func:`problems` never ignores a constraint the schema states. :func:`problems` walks an
object next to the schema and reports what the API server would refuse (types, enums,
``required``, ``minimum``, formats, patterns, duplicate list-map keys) and what it would
silently drop: a field the schema does not declare (pruning) and a ``null`` where the node
is not ``nullable``. Values are first made JSON-like, as kubectl sends them.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

#: every schema keyword the checker understands (anything else fails the structural check)
KEYWORDS = frozenset(
    {
        "type", "format", "description", "properties", "required", "items",
        "additionalProperties", "enum", "minimum", "nullable", "anyOf", "pattern",
        "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    }
)  # fmt: skip
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def crd_schema(crd: Mapping[str, Any], version: str = "v1") -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(version)


# Structural schemas ---------------------------------------------------------------------------


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    _structural(schema, "<root>", found, root=True)
    return found


def _structural(
    node: Mapping[str, Any], path: str, found: list[str], *, root: bool = False
) -> None:
    unknown = set(node) - KEYWORDS
    if unknown:
        found.append(f"{path}: keywords the checker does not know: {sorted(unknown)}")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "anyOf" in node and (not int_or_string or node["anyOf"] != INT_OR_STRING):
        found.append(f"{path}: anyOf is only used for int-or-string here")
    preserve_only = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not int_or_string and not preserve_only:
        found.append(f"{path}: no type (not structural)")
    if int_or_string and "type" in node:
        found.append(f"{path}: int-or-string must not have a type")
    kind = node.get("type")
    if kind is not None and kind not in TYPES:
        found.append(f"{path}: unknown type {kind!r}")
    if "properties" in node and "additionalProperties" in node:
        found.append(f"{path}: properties and additionalProperties together")
    if ("properties" in node or "additionalProperties" in node) and kind != "object":
        found.append(f"{path}: properties on a non-object")
    if kind == "array" and "items" not in node:
        found.append(f"{path}: array without items")
    for name in node.get("required", []):
        if name not in (node.get("properties") or {}):
            found.append(f"{path}: required {name!r} is not a property")
    if node.get("x-kubernetes-list-type") == "map":
        items = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys", []):
            if key not in items.get("required", []):
                found.append(f"{path}: list-map key {key!r} must be required in the items")
    for name, child in (node.get("properties") or {}).items():
        if root and name == "metadata":
            if child != {"type": "object"}:
                found.append(f"{path}.metadata: only `type: object` is allowed at the root")
            continue
        _structural(child, f"{path}.{name}", found)
    if isinstance(node.get("additionalProperties"), Mapping):
        _structural(node["additionalProperties"], f"{path}.*", found)
    if "items" in node:
        _structural(node["items"], f"{path}[]", found)


def preserved_paths(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Where the schema keeps unknown fields (nothing is checked below those nodes)."""
    found = [path or "<root>"] if schema.get("x-kubernetes-preserve-unknown-fields") else []
    for name, child in (schema.get("properties") or {}).items():
        found += preserved_paths(child, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        found += preserved_paths(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        found += preserved_paths(schema["items"], f"{path}[]")
    return found


# Validation and pruning -----------------------------------------------------------------------


def jsonlike(value: Any) -> Any:
    """What kubectl sends for a YAML value: timestamps become RFC 3339 strings."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonlike(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonlike(v) for v in value]
    return value


def problems(doc: Any, schema: Mapping[str, Any]) -> list[str]:
    """Everything the API server would refuse or drop in ``doc`` (empty: stored as is)."""
    found: list[str] = []
    _check(jsonlike(doc), schema, "", found, root=True)
    return found


def _check(value: Any, node: Mapping[str, Any], path: str, found: list[str], *, root: bool = False
           ) -> None:  # fmt: skip
    where = path or "<root>"
    if value is None:
        if not node.get("nullable"):
            found.append(f"{where}: null would be dropped (not nullable)")
        return
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            found.append(f"{where}: must be an integer or a string")
            return
    elif "type" not in node and node.get("x-kubernetes-preserve-unknown-fields"):
        return  # any value, kept as is
    elif not _has_type(value, node.get("type")):
        found.append(f"{where}: must be {node.get('type')}, not {type(value).__name__}")
        return
    if "enum" in node and value not in node["enum"]:
        found.append(f"{where}: {value!r} is not one of {node['enum']}")
    if "minimum" in node and isinstance(value, int | float) and value < node["minimum"]:
        found.append(f"{where}: {value} is below the minimum {node['minimum']}")
    _check_format(value, node, where, found)
    if isinstance(value, dict):
        _check_object(value, node, path, found, root=root)
    elif isinstance(value, list):
        _check_array(value, node, path, found)


def _has_type(value: Any, kind: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return False


def _check_format(value: Any, node: Mapping[str, Any], where: str, found: list[str]) -> None:
    fmt = node.get("format")
    if fmt in _INT_RANGES and isinstance(value, int):
        low, high = _INT_RANGES[fmt]
        if not low <= value <= high:
            found.append(f"{where}: {value} does not fit {fmt}")
    if fmt == "date-time" and isinstance(value, str) and not _RFC3339.match(value):
        found.append(f"{where}: {value!r} is not an RFC 3339 date-time")
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        found.append(f"{where}: {value!r} does not match {node['pattern']}")


def _check_object(value: dict[str, Any], node: Mapping[str, Any], path: str, found: list[str],
                  *, root: bool) -> None:  # fmt: skip
    properties = node.get("properties") or {}
    for name in node.get("required", []):
        if name not in value:
            found.append(f"{path or '<root>'}: {name} is required")
    for key, item in value.items():
        child_path = f"{path}.{key}"
        if root and key == "metadata":
            continue  # ObjectMeta: the API server's own schema, not the CRD's
        if key in properties:
            _check(item, properties[key], child_path, found)
        elif isinstance(node.get("additionalProperties"), Mapping):
            _check(item, node["additionalProperties"], child_path, found)
        elif not node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{child_path}: not in the schema, would be pruned")


def _check_array(value: list[Any], node: Mapping[str, Any], path: str, found: list[str]) -> None:
    for i, item in enumerate(value):
        _check(item, node["items"], f"{path}[{i}]", found)
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen: set[tuple[Any, ...]] = set()
        for item in value:
            if isinstance(item, dict):
                key = tuple(repr(item.get(k)) for k in keys)
                if key in seen:
                    found.append(
                        f"{path}: duplicate entries for {dict(zip(keys, key, strict=True))}"
                    )
                seen.add(key)
