"""Repository URL normalisation, the repo index, trigger filters and build requests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.factories import buildconfig, buildconfig_doc
from triggerd import events, matching
from triggerd.model import buildconfigs
from triggerd.model.buildconfigs import TriggerType

SHA = "1" * 40


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/Org/app.git",
        "https://GITHUB.com/Org/app",
        "https://github.com:443/Org/app.git/",
        "git@github.com:Org/app.git",
        "ssh://git@github.com/Org/app.git",
        "ssh://git@github.com:22/Org/app",
        "git://github.com/Org/app.git",
        "https://user:token@github.com/Org/app.git",
    ],
)
def test_url_forms_normalise_to_one(url: str) -> None:
    assert matching.normalize_repo_url(url) == "github.com/Org/app"


@pytest.mark.parametrize("url", ["", "not a url", "https://", "https://host/"])
def test_non_urls(url: str) -> None:
    assert matching.normalize_repo_url(url) is None


def test_non_default_port_is_kept() -> None:
    assert matching.normalize_repo_url("git://127.0.0.1:9999/x.git") == "127.0.0.1:9999/x"


def test_index_routes_and_forgets() -> None:
    index = matching.RepoIndex()
    a = buildconfig("a", uri="https://github.com/org/app.git")
    b = buildconfig("b", uri="git@github.com:org/app.git")
    c = buildconfig("c", uri="https://github.com/org/other.git")
    for config in (a, b, c):
        index.put(config)
    assert index.lookup(["https://github.com/org/app"]) == [a, b]
    moved = buildconfig("b", uri="https://github.com/org/moved.git")
    index.put(moved)
    assert index.lookup(["https://github.com/org/app"]) == [a]
    assert index.lookup(["https://github.com/org/moved"]) == [moved]
    index.remove("default", "a")
    assert index.lookup(["https://github.com/org/app"]) == []
    assert len(index) == 2


def push(
    ref: str = "refs/heads/main",
    *,
    message: str = "change",
    files: tuple[str, ...] = ("src/app.py",),
    author: str = "Dev",
    deleted: bool = False,
    default_branch: str | None = "main",
    commits: int = 1,
) -> events.GitPush:
    kind = events.RefKind.TAG if ref.startswith("refs/tags/") else events.RefKind.BRANCH
    person = events.Person(name=author, email=f"{author.lower()}@example.com")
    commit = events.Commit(
        id=SHA,
        message=message,
        author=person,
        committer=person,
        added=(),
        modified=files,
        removed=(),
    )
    return events.GitPush(
        provider=events.Provider.GITHUB,
        delivery_id="d",
        repository_urls=("https://x/y",),
        ref=ref,
        ref_kind=kind,
        ref_name=ref.split("/", 2)[2],
        before=None,
        after="0" * 40 if deleted else SHA,
        deleted=deleted,
        created=False,
        default_branch=default_branch,
        head_commit=commit,
        commits=(commit,) * commits,
        pusher=person,
    )


def config_with(ref: str = "main", **hook: Any) -> tuple[buildconfigs.BuildConfig, Any]:
    doc = buildconfig_doc(ref=ref, triggers=[{"type": "GitHub", "github": {"secret": "s", **hook}}])
    config = buildconfigs.parse(doc)
    trigger = matching.webhook_triggers(config, TriggerType.GITHUB)[0]
    assert trigger.webhook is not None
    return config, trigger.webhook


CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool, str]] = [
    ("exact ref", {}, {}, True, ""),
    ("other branch", {}, {"ref": "refs/heads/dev"}, False, "does not match the config's ref"),
    ("branch glob", {"branches": ["release/*"]}, {"ref": "refs/heads/release/1.2"}, True, ""),
    ("branch glob miss", {"branches": ["release/*"]}, {}, False, "does not match branches"),
    ("tag without tags filter", {}, {"ref": "refs/tags/v1"}, False, "tag v1"),
    ("tag glob", {"tags": ["v*"]}, {"ref": "refs/tags/v1.0"}, True, ""),
    ("deletion", {}, {"deleted": True}, False, "deleted"),
    ("skip ci", {}, {"message": "docs [skip ci]"}, False, "[skip ci]"),
    ("ci skip", {}, {"message": "[CI SKIP] x"}, False, "[ci skip]"),
    ("skip ci disabled", {"skipCi": False}, {"message": "[skip ci]"}, True, ""),
    (
        "ignored author",
        {"ignoreAuthors": ["*[bot]"]},
        {"author": "renovate[bot]"},
        False,
        "ignoreAuthors",
    ),
    ("paths hit", {"paths": ["src/*"]}, {}, True, ""),
    ("paths miss", {"paths": ["docs/*"]}, {}, False, "paths"),
    (
        "ignore paths all",
        {"ignorePaths": ["*.md"]},
        {"files": ("README.md",)},
        False,
        "ignorePaths",
    ),
    ("ignore paths some", {"ignorePaths": ["*.md"]}, {"files": ("README.md", "a.py")}, True, ""),
    ("paths with truncated payload", {"paths": ["docs/*"]}, {"commits": 20}, True, ""),
]


@pytest.mark.parametrize(
    ("hook", "event", "accepted", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_filters(hook: dict[str, Any], event: dict[str, Any], accepted: bool, reason: str) -> None:
    config, webhook = config_with(**hook)
    verdict = matching.evaluate_push(config, webhook, push(**event))
    assert verdict.accepted is accepted
    assert reason in verdict.reason


def test_empty_ref_uses_payload_default_branch() -> None:
    config, webhook = config_with(ref="")
    assert matching.evaluate_push(
        config, webhook, push("refs/heads/trunk", default_branch="trunk")
    ).accepted
    assert not matching.evaluate_push(
        config, webhook, push("refs/heads/master", default_branch="trunk")
    ).accepted


def test_paused_config_starts_nothing() -> None:
    config, webhook = config_with()
    paused = replace(
        config, meta=replace(config.meta, annotations={buildconfigs.PAUSED_ANNOTATION: "true"})
    )
    verdict = matching.evaluate_push(paused, webhook, push())
    assert not verdict.accepted and "paused" in verdict.reason


def test_push_request_builds_the_pushed_commit_and_hides_the_secret() -> None:
    request = matching.push_request(push(), TriggerType.GITHUB)
    assert request.revision is not None and request.revision.commit == SHA
    cause = request.triggered_by[0]
    assert cause["message"] == "GitHub WebHook"
    assert cause["githubWebHook"]["secret"] == "<secret>"
    assert cause["githubWebHook"]["revision"]["git"]["commit"] == SHA


def test_generic_options_only_when_allowed() -> None:
    event = events.GenericTrigger(
        delivery_id=None,
        ref=None,
        commit=None,
        author=None,
        committer=None,
        message=None,
        env=(("A", "1"),),
        build_args=(("B", "2"),),
        no_cache=True,
        repository_urls=(),
    )
    closed = buildconfigs.WebHookTrigger(secret="s")
    request = matching.generic_request(event, closed)
    assert request.env == () and request.build_args == () and request.no_cache is None
    assert len(matching.ignored_generic_options(event, closed)) == 2
    open_ = buildconfigs.WebHookTrigger(secret="s", allow_env=True, allow_strategy_options=True)
    request = matching.generic_request(event, open_)
    assert [(e.name, e.value) for e in request.env] == [("A", "1")]
    assert [(e.name, e.value) for e in request.build_args] == [("B", "2")]
    assert request.no_cache is True
    assert matching.ignored_generic_options(event, open_) == []


def test_no_ref_and_no_default_branch_in_the_payload_is_never_a_guess() -> None:
    config, webhook = config_with(ref="")
    for branch in ("main", "master"):
        verdict = matching.evaluate_push(
            config, webhook, push(f"refs/heads/{branch}", default_branch=None)
        )
        assert not verdict.accepted
        assert "does not say which branch is the default" in verdict.reason


def generic_with(ref: str = "main", **hook: Any) -> tuple[buildconfigs.BuildConfig, Any]:
    doc = buildconfig_doc(
        ref=ref, triggers=[{"type": "Generic", "generic": {"secret": "s", **hook}}]
    )
    config = buildconfigs.parse(doc)
    trigger = matching.webhook_triggers(config, TriggerType.GENERIC)[0]
    assert trigger.webhook is not None
    return config, trigger.webhook


def generic_event(
    ref: str | None = None,
    commit: str | None = None,
    *,
    refs: tuple[tuple[str, str | None], ...] = (),
    message: str | None = None,
    author: str | None = None,
) -> events.GenericTrigger:
    person = events.Person(name=author, email="") if author else None
    entries = tuple(
        events.GenericRevision(ref=r, commit=c, author=person, committer=None, message=message)
        for r, c in refs
    )
    first = entries[0] if entries else None
    return events.GenericTrigger(
        delivery_id=None,
        ref=first.ref if first else ref,
        commit=first.commit if first else commit,
        author=person,
        committer=None,
        message=message,
        env=(),
        build_args=(),
        no_cache=None,
        repository_urls=(),
        refs=entries,
    )


GENERIC_CASES: list[tuple[str, str, dict[str, Any], events.GenericTrigger, str | None, str]] = [
    # (id, config ref, trigger fields, event, commit built or None when refused, reason)
    ("no ref builds the config's ref", "main", {}, generic_event(), "", ""),
    ("same ref", "main", {}, generic_event("refs/heads/main", SHA), SHA, ""),
    ("other ref", "main", {}, generic_event("dev", SHA), None, "does not match the config's ref"),
    (
        "post-receive: the first matching entry is built, not the first entry",
        "main",
        {},
        generic_event(refs=(("refs/heads/feature", "2" * 40), ("refs/heads/main", SHA))),
        SHA,
        "",
    ),
    (
        "post-receive: no entry matches",
        "main",
        {},
        generic_event(refs=(("refs/heads/a", SHA), ("refs/heads/b", SHA))),
        None,
        "none of the refs matched",
    ),
    (
        "branch pattern with its commit",
        "main",
        {"branches": ["release/*"]},
        generic_event("refs/heads/release/2", SHA),
        SHA,
        "",
    ),
    (
        "branch pattern without a commit would build the wrong ref",
        "main",
        {"branches": ["release/*"]},
        generic_event("release/2"),
        None,
        "carries no commit",
    ),
    (
        "branch pattern miss",
        "main",
        {"branches": ["release/*"]},
        generic_event("dev", SHA),
        None,
        "does not match the trigger's branches",
    ),
    ("tag pattern", "main", {"tags": ["v*"]}, generic_event("refs/tags/v1", SHA), SHA, ""),
    (
        "config without ref: a ref with its commit builds that commit",
        "",
        {},
        generic_event("feature", SHA),
        SHA,
        "",
    ),
    (
        "config without ref: a bare ref is not guessed to be the default branch",
        "",
        {},
        generic_event("master"),
        None,
        "follows the default branch",
    ),
    (
        "skip ci",
        "main",
        {},
        generic_event(refs=(("main", SHA),), message="docs [skip ci]"),
        None,
        "[skip ci]",
    ),
    (
        "ignored author",
        "main",
        {"ignoreAuthors": ["*[bot]"]},
        generic_event(refs=(("main", SHA),), author="renovate[bot]"),
        None,
        "ignoreAuthors",
    ),
]


@pytest.mark.parametrize(
    ("ref", "hook", "event", "built", "reason"),
    [c[1:] for c in GENERIC_CASES],
    ids=[c[0] for c in GENERIC_CASES],
)
def test_generic_refs_and_filters(
    ref: str,
    hook: dict[str, Any],
    event: events.GenericTrigger,
    built: str | None,
    reason: str,
) -> None:
    config, webhook = generic_with(ref, **hook)
    verdict = matching.evaluate_generic(config, webhook, event)
    assert verdict.accepted is (built is not None), verdict.reason
    assert reason in verdict.reason
    if built is not None:
        request = matching.generic_request(event, webhook, verdict.revision)
        commit = request.revision.commit if request.revision is not None else ""
        assert commit == built
