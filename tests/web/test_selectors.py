"""The label selector parser: every operator, how requirements combine, and its errors."""

from __future__ import annotations

import pytest

from triggerd import selectors
from triggerd.errors import BadRequest

S = selectors.Selector


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", S()),
        ("   ", S()),
        ("a=b", S(labels={"a": "b"})),
        ("a==b", S(labels={"a": "b"})),
        (" a = b ", S(labels={"a": "b"})),
        ("a=", S(labels={"a": ""})),
        ("a!=b", S(label_not_in={"a": frozenset({"b"})})),
        ("a", S(label_present=frozenset({"a"}))),
        ("!a", S(label_absent=frozenset({"a"}))),
        ("! a", S(label_absent=frozenset({"a"}))),
        ("a in (x,y)", S(label_in={"a": frozenset({"x", "y"})})),
        ("a in ( x , y )", S(label_in={"a": frozenset({"x", "y"})})),
        ("a in (x)", S(labels={"a": "x"})),
        ("a notin (x)", S(label_not_in={"a": frozenset({"x"})})),
        ("a notin (x,y),a!=z", S(label_not_in={"a": frozenset({"x", "y", "z"})})),
        ("a in (x,y),a=x", S(labels={"a": "x"})),
        ("a=x,a=y", S(label_in={"a": frozenset()})),  # both must hold: nothing matches
        (
            "openshift.io/build-config.name=app,tier in (web),!skip",
            S(
                labels={"openshift.io/build-config.name": "app", "tier": "web"},
                label_absent=frozenset({"skip"}),
            ),
        ),
        ("app.kubernetes.io/part-of=x_y.z-1", S(labels={"app.kubernetes.io/part-of": "x_y.z-1"})),
    ],
)
def test_parse(text: str, expected: selectors.Selector) -> None:
    assert selectors.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("a=b,,c", "empty requirement"),
        (",", "empty requirement"),
        ("a in (x", "'(' without ')'"),
        ("a in x)", "')' without '('"),
        ("a in ((x))", "nested"),
        ("a in ()", "'a in ()'"),
        ("a notin ()", "'a notin ()'"),
        ("-a=b", "'-a'"),
        ("a=b c", "'a=b c'"),
        ("a=-b", "'-b'"),
        ("a=" + "v" * 64, "not a valid label value"),
        ("k" * 64, "not a valid label key"),
        ("Bad_Prefix/a=b", "'Bad_Prefix/a'"),
        ("a<b", "'a<b'"),
        ("a in (x,y) b", "'a in (x,y) b'"),
    ],
)
def test_errors_name_the_bad_term(text: str, names: str) -> None:
    with pytest.raises(BadRequest) as info:
        selectors.parse(text)
    assert names in str(info.value)


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a!=b", {}, True),  # as in Kubernetes: absence satisfies !=
        ("a!=b", {"a": "b"}, False),
        ("a notin (x)", {}, True),
        ("a notin (x)", {"a": "x"}, False),
        ("a in (x,y)", {"a": "y"}, True),
        ("a in (x,y)", {}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": ""}, False),
        ("a=x,a=y", {"a": "x"}, False),
        ("a,b=c", {"a": "1", "b": "c"}, True),
    ],
)
def test_matches(text: str, labels: dict[str, str], matches: bool) -> None:
    assert selectors.parse(text).matches(labels) is matches
