"""The provider table in triggerd.intake, and the purity rules every intake module keeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import triggerd.events
import triggerd.intake
from triggerd import intake
from triggerd.events import GenericTrigger, GitPush, Ping, Provider
from triggerd.intake import bitbucket, generic, github, gitlab

from .payloads import raw

FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "subprocess",
    "sqlite3",
    "kubernetes_asyncio",
    "socket",
    "requests",
}


def test_every_provider_has_a_parser() -> None:
    assert set(intake.PARSERS) == set(Provider)
    for provider, parser in intake.PARSERS.items():
        assert parser.provider is provider


def test_event_headers() -> None:
    assert github.EVENT_HEADER == "X-GitHub-Event"
    assert gitlab.EVENT_HEADER == "X-Gitlab-Event"
    assert bitbucket.EVENT_HEADER == "X-Event-Key"
    assert generic.EVENT_HEADER is None
    assert intake.PARSERS[Provider.GITLAB].event_header == gitlab.EVENT_HEADER


@pytest.mark.parametrize(
    ("provider", "headers", "name", "kind"),
    [
        (
            Provider.GITHUB,
            {"X-GitHub-Event": "push", "X-GitHub-Delivery": "a"},
            "github/push-tag-created.json",
            GitPush,
        ),
        (
            Provider.GITHUB,
            {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "a"},
            "github/ping-repository.json",
            Ping,
        ),
        (
            Provider.GITLAB,
            {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "a"},
            "gitlab/push-hook.json",
            GitPush,
        ),
        (
            Provider.BITBUCKET,
            {"X-Event-Key": "repo:push", "X-Request-UUID": "a"},
            "bitbucket/cloud-repo-push.json",
            GitPush,
        ),
        (Provider.GENERIC, {"X-Delivery-ID": "a"}, "generic/openshift-docs.json", GenericTrigger),
    ],
)
def test_dispatch(provider: Provider, headers: dict[str, str], name: str, kind: type) -> None:
    body = raw(name)
    event = intake.parse(provider, headers, body, "application/json")
    assert isinstance(event, kind)
    assert intake.parse_all(provider, headers, body, "application/json") == (event,)
    assert intake.delivery_id(provider, headers) == "a"
    assert event.delivery_id == "a"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


PURE_MODULES = [
    Path(triggerd.events.__file__),
    *sorted(Path(triggerd.intake.__file__).parent.glob("*.py")),
]


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_intake_modules_do_no_io(path: Path) -> None:
    assert not _imports(path) & FORBIDDEN


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_every_module_opens_with_a_docstring(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and len(doc) > 80
