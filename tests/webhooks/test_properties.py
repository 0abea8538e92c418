"""Property: whatever bytes and headers reach a webhook route, the answer is a 2xx or a 4xx
Status, never a 5xx, and a refused delivery stores nothing.

The server runs on its own event loop in a thread (one per module, so hypothesis examples do
not each pay for a start); examples are sent with blocking ``http.client`` from the test.
Bodies mix garbage with real fixtures and mutations of them; signatures are sometimes right
for the bytes sent, so the accepting paths are exercised too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.factories import buildconfig_doc
from tests.intake.payloads import raw
from tests.webhooks.conftest import (
    CLOUD_URI,
    GITLAB_URI,
    SECRET,
    SERVER_URI,
    make_hooks_app,
    trigger,
)
from triggerd.engine import Engine
from triggerd.intake import signatures
from triggerd.store.base import BuildQuery

FIXTURES = [
    "github/push-many-commits.json",
    "github/push-tag-created.json",
    "github/push-branch-deleted.json",
    "github/ping-repository.json",
    "gitlab/push-hook.json",
    "gitlab/tag-push-hook.json",
    "bitbucket/cloud-repo-push.json",
    "bitbucket/server-repo-refs-changed.json",
    "generic/openshift-docs.json",
    "generic/with-strategy-options.yaml",
]
PER_CONFIG = "/apis/{group}/v1/namespaces/default/buildconfigs/{name}/webhooks/{secret}/{provider}"


@dataclass
class Live:
    port: int
    loop: asyncio.AbstractEventLoop
    engine: Engine

    def run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=30)

    def build_count(self) -> int:
        page = self.run(self.engine.store.list_builds(BuildQuery()))
        return len(page.builds)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path: Path = tmp_path_factory.mktemp("webhook-properties")
    loop = asyncio.new_event_loop()
    ready: Future[tuple[web.AppRunner, int, Engine]] = Future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            app, engine, _executor = make_hooks_app(tmp_path)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            await _configs(engine)
            port = runner.addresses[0][1]
            ready.set_result((runner, port, engine))
        except BaseException as e:
            ready.set_exception(e)
            raise
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    _runner, port, engine = ready.result(timeout=30)
    yield Live(port=port, loop=loop, engine=engine)
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=30)
    loop.close()


async def _configs(engine: Engine) -> None:
    github = buildconfig_doc("github", ref="main")
    github["spec"]["triggers"] = [trigger("GitHub", branches=["*"], tags=["*"])]
    gitlab = buildconfig_doc("gitlab", uri=GITLAB_URI, ref="master")
    gitlab["spec"]["triggers"] = [trigger("GitLab", tags=["*"])]
    cloud = buildconfig_doc("cloud", uri=CLOUD_URI, ref="name-of-branch")
    cloud["spec"]["triggers"] = [trigger("Bitbucket")]
    server = buildconfig_doc("server", uri=SERVER_URI, ref="master")
    server["spec"]["triggers"] = [trigger("Bitbucket")]
    generic = buildconfig_doc("generic")
    generic["spec"]["triggers"] = [trigger("Generic", allowEnv=True)]
    for doc in (github, gitlab, cloud, server, generic):
        await engine.create_buildconfig(doc)


def _routes() -> list[str]:
    routes = ["/hooks/github", "/hooks/gitlab", "/hooks/bitbucket"]
    for group in ("build.openshift.io", "triggerd.dev"):
        for name, provider in [
            ("github", "github"),
            ("gitlab", "gitlab"),
            ("cloud", "bitbucket"),
            ("generic", "generic"),
            ("github", "generic"),  # a config without a trigger of that type
        ]:
            for secret in (SECRET, "wrong"):
                routes.append(
                    PER_CONFIG.format(group=group, name=name, secret=secret, provider=provider)
                )
    return routes


_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def _mutated_fixture(draw: st.DrawFn, fixture: str | None = None) -> bytes:
    """A real payload with one field replaced by something else, or deleted."""
    if fixture is None:
        fixture = draw(st.sampled_from([f for f in FIXTURES if f.endswith(".json")]))
    body = raw(fixture)
    doc = json.loads(body)
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(_json_values)
        break
    return json.dumps(doc).encode()


_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=600),
    st.sampled_from(FIXTURES).map(raw),
    _mutated_fixture(),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(FIXTURES).map(raw).map(lambda b: urlencode({"payload": b.decode()}).encode()),
)
_event_headers = st.dictionaries(
    st.sampled_from(["X-GitHub-Event", "X-Gitlab-Event", "X-Event-Key", "X-Gitea-Event"]),
    st.sampled_from(
        [
            "push",
            "ping",
            "Push Hook",
            "Tag Push Hook",
            "System Hook",
            "repo:push",
            "repo:refs_changed",
            "diagnostics:ping",
            "issues",
        ]
    )
    | _header_text,
    max_size=3,
)
_content_types = (
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "application/yaml",
            "text/plain",
            "",
        ]
    )
    | _header_text
)
_signature_kinds = st.sampled_from(["right", "wrong", "sha1", "garbage", "none"])


# Deliveries that make sense as a whole (the right event header for the route and a payload
# of that provider, possibly mutated), so accepting and skipping paths are reached as well.
_COHERENT = [
    ("/hooks/github", {"X-GitHub-Event": "push"}, "github/push-many-commits.json"),
    ("/hooks/github", {"X-GitHub-Event": "push"}, "github/push-branch-deleted.json"),
    ("/hooks/github", {"X-GitHub-Event": "ping"}, "github/ping-repository.json"),
    ("/hooks/gitlab", {"X-Gitlab-Event": "Push Hook"}, "gitlab/push-hook.json"),
    ("/hooks/bitbucket", {"X-Event-Key": "repo:push"}, "bitbucket/cloud-repo-push.json"),
    (
        "/hooks/bitbucket",
        {"X-Event-Key": "repo:refs_changed"},
        "bitbucket/server-repo-refs-changed.json",
    ),
    (
        PER_CONFIG.format(group="triggerd.dev", name="github", secret=SECRET, provider="github"),
        {"X-GitHub-Event": "push"},
        "github/push-tag-created.json",
    ),
    (
        PER_CONFIG.format(
            group="build.openshift.io", name="generic", secret=SECRET, provider="generic"
        ),
        {"Content-Type": "application/yaml"},
        "generic/with-strategy-options.yaml",
    ),
]


@st.composite
def _coherent(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    route, headers, fixture = draw(st.sampled_from(_COHERENT))
    body = raw(fixture)
    if fixture.endswith(".json") and draw(st.booleans()):
        body = draw(_mutated_fixture(fixture))
    return route, dict(headers), body


_cases = st.one_of(
    st.tuples(st.sampled_from(_routes()), _event_headers, _bodies),
    _coherent(),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    case=_cases,
    content_type=_content_types,
    signature=_signature_kinds,
    token=st.sampled_from([None, SECRET, "wrong"]),
    delivery=st.none() | _header_text,
    query_secret=st.sampled_from([None, SECRET, "wrong"]),
    extra=st.dictionaries(
        st.sampled_from(
            ["Authorization", "X-Hub-Signature", "X-Gitea-Signature", "Idempotency-Key"]
        ),
        _header_text,
        max_size=2,
    ),
)
def test_never_5xx_and_nothing_stored_on_refusal(
    live: Live,
    case: tuple[str, dict[str, str], bytes],
    content_type: str | None,
    signature: str,
    token: str | None,
    delivery: str | None,
    query_secret: str | None,
    extra: dict[str, str],
) -> None:
    route, events, body = case
    headers = dict(extra)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(events)
    if signature == "right":
        headers["X-Hub-Signature-256"] = signatures.sign_github(body, SECRET)
        headers.setdefault("X-Hub-Signature", signatures.sign_github(body, SECRET))
    elif signature == "wrong":
        headers["X-Hub-Signature-256"] = signatures.sign_github(body, "wrong")
    elif signature == "sha1":
        headers["X-Hub-Signature"] = "sha1=" + "0" * 40
    elif signature == "garbage":
        headers["X-Hub-Signature-256"] = "sha256=zz"
    if token is not None:
        headers["X-Gitlab-Token"] = token
        headers["X-Hub-Signature"] = signatures.sign_github(body, token)
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
        headers["X-Request-UUID"] = delivery
    path = route + (f"?{urlencode({'secret': query_secret})}" if query_secret else "")

    before = live.build_count()
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        status = response.status
        answer = json.loads(response.read())
    finally:
        connection.close()
    after = live.build_count()
    event(f"status {status}")

    assert status < 500, answer
    assert status in (200, 201, 400, 401, 413, 415), answer
    if status == 201:
        assert after - before == len(answer["triggered"]) > 0
    else:
        assert after == before, answer
        if status >= 400:
            assert answer["kind"] == "Status" and answer["code"] == status
