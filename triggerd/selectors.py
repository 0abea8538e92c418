"""Kubernetes label selectors (``a=b,c!=d,e in (x,y),!f``): parse and match (pure).

The web layer hands the ``labelSelector`` query parameter here and turns the result into
:class:`triggerd.store.base.BuildQuery` fields (the field names are the same); the CLI and
in-memory filters use :meth:`Selector.matches`. Requirements on one key are combined the way
Kubernetes combines them (all must hold), so ``a=x,a=y`` matches nothing. Errors are
:class:`triggerd.errors.BadRequest` naming the offending term. This module never does I/O
and never imports the web or store layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from triggerd.errors import BadRequest

# A label key is an optional DNS-subdomain prefix and "/" then a name of at most 63
# characters; values are at most 63 characters and may be empty.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_KEY = rf"(?:{_PREFIX}/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"

_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_EXISTS = re.compile(r"^(?P<not>!?)\s*(?P<key>[^\s!=(),]+)$")
_EQUALITY = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)$")
_SET = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """The parsed requirements, in the shape of BuildQuery's label fields.

    ``labels`` holds keys with exactly one allowed value, ``label_in`` keys with any other
    number of allowed values (an empty set: nothing can match), ``label_not_in`` values a
    key must not have (absence is fine, as in Kubernetes).
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    label_present: frozenset[str] = frozenset()
    label_absent: frozenset[str] = frozenset()
    label_in: Mapping[str, frozenset[str]] = field(default_factory=dict)
    label_not_in: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.labels
            or self.label_present
            or self.label_absent
            or self.label_in
            or self.label_not_in
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels satisfies every requirement."""
        for key, value in self.labels.items():
            if labels.get(key) != value:
                return False
        for key, allowed in self.label_in.items():
            if key not in labels or labels[key] not in allowed:
                return False
        for key, forbidden in self.label_not_in.items():
            if key in labels and labels[key] in forbidden:
                return False
        if any(key not in labels for key in self.label_present):
            return False
        return not any(key in labels for key in self.label_absent)


def parse(text: str | None) -> Selector:
    """Parse a selector; an empty or missing one selects everything."""
    if text is None or not text.strip():
        return Selector()
    allowed: dict[str, set[str]] = {}  # positive requirements: =, ==, in
    forbidden: dict[str, set[str]] = {}  # negative requirements: !=, notin
    present: set[str] = set()
    absent: set[str] = set()
    for term in _split_terms(text):
        stripped = term.strip()
        if not stripped:
            raise BadRequest(f"labelSelector {text!r}: empty requirement (stray comma?)")
        if match := _SET.match(stripped):
            key = _check_key(match["key"], stripped)
            values = [v.strip() for v in match["values"].split(",")]
            if not any(values):
                raise BadRequest(
                    f"labelSelector term {stripped!r}: {match['op']} needs at least one value"
                )
            checked = {_check_value(v, stripped) for v in values}
            target = allowed if match["op"] == "in" else forbidden
            _restrict(target, key, checked, intersect=match["op"] == "in")
        elif match := _EQUALITY.match(stripped):
            key = _check_key(match["key"], stripped)
            value = _check_value(match["value"], stripped)
            if match["op"] == "!=":
                _restrict(forbidden, key, {value}, intersect=False)
            else:
                _restrict(allowed, key, {value}, intersect=True)
        elif match := _EXISTS.match(stripped):
            key = _check_key(match["key"], stripped)
            (absent if match["not"] else present).add(key)
        else:
            raise BadRequest(
                f"labelSelector term {stripped!r} is not a requirement such as a=b, a!=b, "
                "a, !a, a in (x,y) or a notin (x)"
            )
    return Selector(
        labels={k: next(iter(v)) for k, v in allowed.items() if len(v) == 1},
        label_in={k: frozenset(v) for k, v in allowed.items() if len(v) != 1},
        label_not_in={k: frozenset(v) for k, v in forbidden.items()},
        label_present=frozenset(present),
        label_absent=frozenset(absent),
    )


def _split_terms(text: str) -> list[str]:
    """Split at commas outside parentheses (``a in (x,y),b`` is two terms)."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
            if depth > 1:
                raise BadRequest(f"labelSelector {text!r}: nested parentheses")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest(f"labelSelector {text!r}: ')' without '('")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise BadRequest(f"labelSelector {text!r}: '(' without ')'")
    terms.append("".join(current))
    return terms


def _restrict(target: dict[str, set[str]], key: str, values: set[str], *, intersect: bool) -> None:
    if key not in target:
        target[key] = set(values)
    elif intersect:
        target[key] &= values  # every positive requirement must hold
    else:
        target[key] |= values  # any forbidden value excludes


def _check_key(key: str, term: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not _KEY_RE.match(key) or len(prefix) > 253 or len(name) > 63:
        raise BadRequest(
            f"labelSelector term {term!r}: {key!r} is not a valid label key "
            "(an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.')"
        )
    return key


def _check_value(value: str, term: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise BadRequest(
            f"labelSelector term {term!r}: {value!r} is not a valid label value "
            "(at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
        )
    return value
