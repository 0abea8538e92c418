"""Tests of tests/support/registry.py against the real ``docker-registry`` binary.

Covers the plain session registry, restart with the same port and storage, htpasswd auth,
push notifications delivered to an aiohttp server of the test, and a token-auth config
that the registry accepts (it answers with a Bearer challenge; issuing tokens is not
part of the test support).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.buildah import BUSYBOX_LOCAL_NAME, BuildahEnv, build_busybox_base
from tests.support.processes import ProcessDied, async_wait_for, http_status
from tests.support.registry import (
    MANIFEST_ACCEPT,
    OCI_MANIFEST,
    NotificationEndpoint,
    Registry,
    RegistryFactory,
    TokenAuth,
)

pytestmark = pytest.mark.e2e

AiohttpServer = Any  # pytest-aiohttp's aiohttp_server fixture: async (app) -> TestServer


def test_session_registry_is_up_and_empty_repos_read_as_missing(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert http_status(f"{registry.url}/v2/") == 200
    assert registry.head_digest("no/such-repo", "latest") is None
    assert registry.tags("no/such-repo") == []
    assert registry.manifest("no/such-repo", "latest") is None


def test_all_four_manifest_types_are_accepted() -> None:
    assert MANIFEST_ACCEPT.split(", ") == [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]


def test_pushed_digest_matches_head_and_survives_restart(
    registry_factory: RegistryFactory, buildah_env: BuildahEnv
) -> None:
    reg = registry_factory()
    build_busybox_base(buildah_env)
    pushed = buildah_env.push(BUSYBOX_LOCAL_NAME, reg.ref("team/app", "v1"))
    assert pushed.startswith("sha256:")
    assert reg.head_digest("team/app", "v1") == pushed
    # Without the Accept header distribution does not serve an OCI manifest at all.
    assert reg.request("HEAD", "/v2/team/app/manifests/v1").status == 404
    manifest = reg.manifest("team/app", "v1")
    assert manifest is not None
    assert manifest.digest == pushed
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.json()["schemaVersion"] == 2
    assert reg.tags("team/app") == ["v1"]
    assert "team/app" in reg.catalog()

    port = reg.port
    reg.restart()
    assert reg.port == port
    assert reg.head_digest("team/app", "v1") == pushed

    reg.delete_manifest("team/app", pushed)
    assert reg.head_digest("team/app", "v1") is None


def test_start_moves_to_another_port_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        reg = Registry(tmp_path / "moved")
        reg.port = taken  # as if another program grabbed the port free_port() gave us
        with reg:
            assert reg.port != taken
            assert reg.tags("x") == []
        fixed = Registry(tmp_path / "fixed", port=taken)
        with pytest.raises(ProcessDied, match="address already in use"):
            fixed.start()
        fixed.stop()


def test_stop_frees_the_port(registry_factory: RegistryFactory) -> None:
    reg = registry_factory()
    assert reg.running
    reg.stop()
    assert not reg.running
    assert http_status(f"{reg.url}/v2/") is None


def test_htpasswd_auth(registry_factory: RegistryFactory, buildah_env: BuildahEnv) -> None:
    reg = registry_factory(htpasswd={"alice": "wonderland", "bob": "builder"})
    assert reg.auth == ("alice", "wonderland")
    assert reg.htpasswd_path.read_text().startswith("alice:$2y$")
    anonymous = reg.request("GET", "/v2/", auth=None)
    assert anonymous.status == 401
    assert anonymous.headers["Www-Authenticate"].startswith("Basic realm=")
    assert reg.request("GET", "/v2/").status == 200
    assert reg.request("GET", "/v2/", auth=("bob", "builder")).status == 200
    assert reg.request("GET", "/v2/", auth=("bob", "wrong")).status == 401

    build_busybox_base(buildah_env)
    with pytest.raises(RuntimeError, match=r"authentication required|unauthorized"):
        buildah_env.push(BUSYBOX_LOCAL_NAME, reg.ref("private/app"))
    pushed = buildah_env.push(BUSYBOX_LOCAL_NAME, reg.ref("private/app"), creds=("bob", "builder"))
    assert reg.head_digest("private/app", "latest") == pushed


async def test_push_notifications_reach_a_local_server(
    registry_factory: RegistryFactory,
    buildah_env: BuildahEnv,
    aiohttp_server: AiohttpServer,
) -> None:
    received: list[dict[str, Any]] = []
    headers_seen: list[str] = []

    async def events(request: web.Request) -> web.Response:
        headers_seen.append(request.headers.get("Authorization", ""))
        received.extend(json.loads(await request.read())["events"])
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/registry-events", events)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    reg = registry_factory(
        notifications=[
            NotificationEndpoint(
                name="triggerd",
                url=f"http://127.0.0.1:{server.port}/registry-events",
                headers={"Authorization": ["Bearer notify-secret"]},
                timeout="1s",
                backoff="100ms",
            )
        ]
    )
    await asyncio.to_thread(build_busybox_base, buildah_env)
    # In a thread: a blocking push would stop this loop from serving the notification.
    pushed = await asyncio.to_thread(
        buildah_env.push, BUSYBOX_LOCAL_NAME, reg.ref("notify/app", "v7")
    )

    def manifest_push() -> dict[str, Any] | None:
        return next(
            (e for e in received if e["action"] == "push" and e["target"].get("tag") == "v7"),
            None,
        )

    event = await async_wait_for(manifest_push, timeout=20, what="push event for notify/app:v7")
    assert event["target"]["repository"] == "notify/app"
    assert event["target"]["digest"] == pushed
    assert event["target"]["mediaType"] == OCI_MANIFEST
    assert headers_seen[0] == "Bearer notify-secret"


def _self_signed_cert(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triggerd test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_token_auth_config(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    token = TokenAuth(
        realm="http://127.0.0.1:1/token",
        service="triggerd-registry",
        issuer="triggerd-test-issuer",
        rootcertbundle=_self_signed_cert(tmp_path / "token-ca.pem"),
    )
    reg = registry_factory(token=token)
    written = yaml.safe_load(reg.config_path.read_text())
    assert written["auth"] == {
        "token": {
            "realm": "http://127.0.0.1:1/token",
            "service": "triggerd-registry",
            "issuer": "triggerd-test-issuer",
            "rootcertbundle": str(tmp_path / "token-ca.pem"),
        }
    }
    resp = reg.request("GET", "/v2/")
    assert resp.status == 401
    assert resp.headers["Www-Authenticate"] == (
        'Bearer realm="http://127.0.0.1:1/token",service="triggerd-registry"'
    )


def test_config_only_and_extra_settings(registry_factory: RegistryFactory) -> None:
    reg = registry_factory(start=False, extra={"http": {"headers": {"X-Test": ["1"]}}})
    doc = yaml.safe_load(reg.config_path.read_text())
    assert doc["http"]["addr"] == reg.host
    assert doc["http"]["headers"]["X-Test"] == ["1"]
    assert "debug" not in doc["http"]  # no second listener
    assert not reg.running
    with pytest.raises(ValueError, match="not both"):
        registry_factory(htpasswd={"a": "b"}, token=TokenAuth("r", "s", "i", Path("x")))
