"""The registry client against a counting registry server: digests, auth flows, errors."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.imagechange.counting_registry import ACCEPT_ALL, CountingRegistry
from triggerd.errors import PermanentError, TemporaryError
from triggerd.images import references
from triggerd.images.registry_client import (
    Credentials,
    RegistryAuthError,
    RegistryClient,
    TagNotFound,
    load_docker_config,
    parse_challenge,
)

Serve = Callable[[CountingRegistry], Awaitable[str]]


@pytest.fixture
async def serve(aiohttp_server: Any) -> AsyncIterator[Serve]:
    async def start(registry: CountingRegistry) -> str:
        server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
        registry.realm = str(server.make_url("/token"))
        return f"127.0.0.1:{server.port}"

    yield start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(
    session: aiohttp.ClientSession, creds: Credentials | None = None, clock: Clock | None = None
) -> RegistryClient:
    return RegistryClient(
        session,
        insecure=lambda host: True,
        credentials=lambda host: creds,
        clock=clock or Clock(),
    )


def ref(host: str, repo: str, tag: str = "latest") -> references.ImageReference:
    return references.parse(f"{host}/{repo}:{tag}")


async def test_anonymous_head_sends_all_four_manifest_types(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry()
    digest = reg.push("team/base", "latest")
    host = await serve(reg)
    assert await client_for(session).head_digest(ref(host, "team/base")) == digest
    (accept,) = reg.accept_seen
    assert [a.strip() for a in accept.split(",")] == list(ACCEPT_ALL)
    assert reg.counts["HEAD"] == 1 and reg.counts["GET"] == 0


async def test_missing_digest_header_falls_back_to_hashing_a_get(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry(omit_digest=True)
    digest = reg.push("base", "v1")
    host = await serve(reg)
    assert await client_for(session).head_digest(ref(host, "base", "v1")) == digest
    assert reg.counts["GET"] == 1


async def test_basic_auth_from_docker_config(
    serve: Serve, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    reg = CountingRegistry(auth="basic", users={"alice": "s3cret"})
    digest = reg.push("base", "latest")
    host = await serve(reg)
    auth = base64.b64encode(b"alice:s3cret").decode()
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    creds = load_docker_config(path)
    client = client_for(session, creds[host])
    assert await client.head_digest(ref(host, "base")) == digest
    assert await client.head_digest(ref(host, "base")) == digest
    # One challenge, then Basic sent up front.
    assert reg.counts["HEAD"] == 3


async def test_wrong_basic_password_is_an_auth_error_without_the_password(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry(auth="basic", users={"alice": "s3cret"})
    reg.push("base", "latest")
    host = await serve(reg)
    with pytest.raises(RegistryAuthError) as info:
        await client_for(session, Credentials(username="alice", password="nope")).head_digest(
            ref(host, "base")
        )
    assert "alice" in str(info.value) and "nope" not in str(info.value)


def test_cred_helpers_are_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"credsStore": "desktop"}))
    with pytest.raises(PermanentError, match="credsStore"):
        load_docker_config(path)


async def test_cred_helper_hosts_get_a_clear_error(
    serve: Serve, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    reg = CountingRegistry(auth="basic", users={"alice": "x"})
    reg.push("base", "latest")
    host = await serve(reg)
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"credHelpers": {host: "ecr-login"}}))
    creds = load_docker_config(path)
    with pytest.raises(RegistryAuthError, match="credHelpers"):
        await client_for(session, creds[host]).head_digest(ref(host, "base"))


async def test_bearer_tokens_are_cached_per_scope_and_renewed_before_expiry(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry(auth="bearer", token_lifetime=300)
    for repo in ("a", "b"):
        reg.push(repo, "latest")
    host = await serve(reg)
    clock = Clock()
    client = client_for(session, clock=clock)
    for _ in range(3):
        await client.head_digest(ref(host, "a"))
        await client.head_digest(ref(host, "b"))
    assert reg.counts["token"] == 2  # one per (realm, service, scope)
    assert reg.counts["HEAD"] == 7  # 6 + the first challenge
    clock.now += 300 - 5  # inside the renewal margin
    await client.head_digest(ref(host, "a"))
    assert reg.counts["token repository:a:pull"] == 2


async def test_default_token_lifetime_is_60s(serve: Serve, session: aiohttp.ClientSession) -> None:
    reg = CountingRegistry(auth="bearer", token_lifetime=None)
    reg.push("a", "latest")
    host = await serve(reg)
    clock = Clock()
    client = client_for(session, clock=clock)
    await client.head_digest(ref(host, "a"))
    clock.now += 40
    await client.head_digest(ref(host, "a"))
    assert reg.counts["token"] == 1
    clock.now += 15  # 55 s: past 60 s minus the margin
    await client.head_digest(ref(host, "a"))
    assert reg.counts["token"] == 2


async def test_token_refreshed_on_401(serve: Serve, session: aiohttp.ClientSession) -> None:
    reg = CountingRegistry(auth="bearer", token_lifetime=300)
    digest = reg.push("a", "latest")
    host = await serve(reg)
    client = client_for(session)
    await client.head_digest(ref(host, "a"))
    reg.expire_tokens()  # the registry forgot it (restart, key rotation)
    assert await client.head_digest(ref(host, "a")) == digest
    assert reg.counts["token"] == 2


async def test_insufficient_scope_is_a_clear_auth_error(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry(auth="bearer", users={"bob": "pw"}, allowed={"bob": {"other"}})
    reg.push("secret/base", "latest")
    host = await serve(reg)
    client = client_for(session, Credentials(username="bob", password="pw"))
    with pytest.raises(RegistryAuthError, match=r"insufficient scope.*secret/base"):
        await client.head_digest(ref(host, "secret/base"))


@pytest.mark.parametrize(
    ("status", "headers", "delay"),
    [(429, {"Retry-After": "7"}, 7.0), (503, {}, 0.0), (500, {"Retry-After": "x"}, 0.0)],
)
async def test_throttling_and_server_errors_are_temporary(
    serve: Serve,
    session: aiohttp.ClientSession,
    status: int,
    headers: dict[str, str],
    delay: float,
) -> None:
    reg = CountingRegistry(failures=[(status, headers)])
    reg.push("a", "latest")
    host = await serve(reg)
    with pytest.raises(TemporaryError) as info:
        await client_for(session).head_digest(ref(host, "a"))
    assert info.value.delay == delay


async def test_missing_tag_and_unreachable_registry(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    host = await serve(CountingRegistry())
    with pytest.raises(TagNotFound):
        await client_for(session).head_digest(ref(host, "nothing"))
    with pytest.raises(TemporaryError, match="unreachable"):
        await client_for(session).head_digest(ref("127.0.0.1:1", "x"))


def test_parse_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a:pull",error="insufficient_scope"'
    )
    assert challenge is not None
    assert (challenge.realm, challenge.service, challenge.error) == (
        "https://auth.example/token",
        "reg",
        "insufficient_scope",
    )
    assert parse_challenge("Negotiate abc") is None


# Insecure registries: unverified TLS first, plain HTTP as the fallback --------------------
def self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a certificate for 127.0.0.1 that nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_an_insecure_plain_http_registry_is_reached_after_tls_fails(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    reg = CountingRegistry()
    digest = reg.push("team/base", "latest")
    host = await serve(reg)
    client = RegistryClient(session, insecure=lambda h: h == host)
    assert client.base_url(host) == f"https://{host}"  # TLS is tried first
    assert await client.head_digest(ref(host, "team/base")) == digest
    assert client.base_url(host) == f"http://{host}"  # and HTTP kept once it answered
    reg.push("team/base", "latest")
    assert await client.head_digest(ref(host, "team/base")) != digest
    assert reg.counts["HEAD"] == 2
    # Without `insecure` there is no fallback: plain HTTP is never used.
    strict = RegistryClient(session)
    with pytest.raises(TemporaryError, match="unreachable"):
        await strict.head_digest(ref(host, "team/base"))
    assert reg.counts["HEAD"] == 2


async def test_an_insecure_tls_registry_is_used_without_verifying_its_certificate(
    aiohttp_server: Any, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    reg = CountingRegistry()
    digest = reg.push("team/base", "latest")
    server: TestServer = await aiohttp_server(
        reg.app(), host="127.0.0.1", ssl=self_signed_context(tmp_path)
    )
    host = f"127.0.0.1:{server.port}"
    client = RegistryClient(session, insecure=lambda h: True)
    assert await client.head_digest(ref(host, "team/base")) == digest
    assert client.base_url(host) == f"https://{host}"  # no downgrade when TLS works
    with pytest.raises(TemporaryError, match="Certificate"):
        await RegistryClient(session).head_digest(ref(host, "team/base"))
    assert reg.counts["HEAD"] == 1
