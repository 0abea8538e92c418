"""The neutral event types and their helpers."""

from __future__ import annotations

import dataclasses

import pytest

from triggerd.events import (
    ZERO_SHA,
    Commit,
    GitPush,
    Person,
    Provider,
    RefKind,
    changed_paths,
    is_zero_sha,
)


def _commit(
    cid: str,
    added: tuple[str, ...] = (),
    modified: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
) -> Commit:
    return Commit(
        id=cid,
        message="m",
        author=None,
        committer=None,
        added=added,
        modified=modified,
        removed=removed,
    )


def _push(*commits: Commit, head: Commit | None = None) -> GitPush:
    return GitPush(
        provider=Provider.GITHUB,
        delivery_id=None,
        repository_urls=("https://example.com/a/b.git",),
        ref="refs/heads/main",
        ref_kind=RefKind.BRANCH,
        ref_name="main",
        before=None,
        after="a" * 40,
        deleted=False,
        created=False,
        default_branch=None,
        head_commit=head,
        commits=commits,
        pusher=None,
    )


def test_changed_paths_unions_every_list_of_every_commit() -> None:
    push = _push(
        _commit("1", added=("a.txt",), modified=("b.txt",)),
        _commit("2", modified=("b.txt", "c/d.py"), removed=("old.md",)),
    )
    assert changed_paths(push) == frozenset({"a.txt", "b.txt", "c/d.py", "old.md"})


def test_changed_paths_of_a_push_without_commits_is_empty() -> None:
    # head_commit is not one of commits[] here (a tag push): only commits[] count
    head = _commit("9", added=("x",))
    assert changed_paths(_push(head=head)) == frozenset()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ZERO_SHA, True),
        ("0" * 64, True),
        ("", False),
        (None, False),
        ("0" * 39 + "1", False),
        ("6113728f27ae82c7b1a177c8d03f9e96e0adf246", False),
    ],
)
def test_is_zero_sha(value: str | None, expected: bool) -> None:
    assert is_zero_sha(value) is expected


def test_events_are_frozen_and_keyword_only() -> None:
    person = Person(name="a", email="b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        person.name = "c"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Person("a", "b")  # type: ignore[call-arg]


def test_enums_are_their_wire_form() -> None:
    assert Provider("bitbucket") is Provider.BITBUCKET
    assert str(RefKind.TAG) == "tag"
