"""In-cluster configuration, run for real: with ``KUBERNETES_SERVICE_HOST``/``_PORT`` set and
no kubeconfig in the settings, :func:`triggerd.kube.connect` loads the service account's
token and CA (from files the test writes where kubernetes_asyncio looks for them) and talks
HTTPS to the fake API server, which only accepts that token and only that CA verifies."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.config import incluster_config

from tests import factories
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer, write_tls_files
from triggerd.kube import Kube, KubeError, KubernetesSettings, path_for
from triggerd.store.kubernetes import config_to_resource

BUILDCONFIGS = ("triggerd.dev/v1", "buildconfigs")


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
async def tls_apiserver(tmp_path: Path, token: str) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(token=token, tls_dir=tmp_path / "apiserver-tls")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def service_account(
    tls_apiserver: FakeApiServer, tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """What the kubelet gives a pod: the service env vars and the mounted token and CA.
    Returns the directory the token and CA were written to."""
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(token, encoding="utf-8")
    assert tls_apiserver.ca_file is not None
    (mounted / "ca.crt").write_bytes(tls_apiserver.ca_file.read_bytes())
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(mounted / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(mounted / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_apiserver.port))
    return mounted


def in_cluster_settings() -> KubernetesSettings:
    return KubernetesSettings(namespace=NAMESPACE)  # no kubeconfig: in-cluster when available


async def test_in_cluster_config_lists_and_creates_buildconfigs_over_tls(
    service_account: Path, tls_apiserver: FakeApiServer
) -> None:
    assert tls_apiserver.url.startswith("https://")
    kube = Kube(settings=in_cluster_settings())
    try:
        collection = path_for("triggerd.dev/v1", "buildconfigs", NAMESPACE)
        assert (await kube.list(collection))["items"] == []
        doc = config_to_resource(factories.buildconfig("app", namespace=NAMESPACE))
        created = await kube.create(collection, doc)
        listed = await kube.list(collection)
    finally:
        await kube.close()
    # the in-cluster branch made this client: the host came from the env vars over https
    assert kube.api.configuration.host == f"https://127.0.0.1:{tls_apiserver.port}"
    assert created["metadata"]["name"] == "app"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["app"]
    stored = tls_apiserver.get(BUILDCONFIGS, NAMESPACE, "app")
    assert stored is not None and stored["spec"] == doc["spec"]


async def test_the_token_comes_from_the_service_account_file(
    service_account: Path, tls_apiserver: FakeApiServer
) -> None:
    # The server accepts only the token the fixture wrote: a file holding another one is
    # refused, so the accepted calls above carried the file's token.
    (service_account / "token").write_text("not-the-token", encoding="utf-8")
    kube = Kube(settings=in_cluster_settings())
    try:
        with pytest.raises(KubeError) as caught:
            await kube.list(path_for("triggerd.dev/v1", "buildconfigs", NAMESPACE))
    finally:
        await kube.close()
    assert caught.value.status == 401


async def test_a_server_the_mounted_ca_did_not_sign_is_not_trusted(
    service_account: Path, tls_apiserver: FakeApiServer, tmp_path: Path
) -> None:
    other_ca, _, _ = write_tls_files(tmp_path / "other-ca")
    (service_account / "ca.crt").write_bytes(other_ca.read_bytes())
    kube = Kube(settings=in_cluster_settings())
    try:
        with pytest.raises(KubeError) as caught:
            await kube.list(path_for("triggerd.dev/v1", "buildconfigs", NAMESPACE))
    finally:
        await kube.close()
    assert caught.value.status == 0  # no answer: the TLS handshake failed
    assert "Certificate" in caught.value.message


async def test_a_kubeconfig_in_the_settings_wins_over_the_service_account(
    service_account: Path, tls_apiserver: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    tls_apiserver.write_kubeconfig(str(kubeconfig), NAMESPACE)
    (service_account / "token").write_text("not-the-token", encoding="utf-8")
    kube = Kube(settings=KubernetesSettings(namespace=NAMESPACE, kubeconfig=str(kubeconfig)))
    try:
        listed = await kube.list(path_for("triggerd.dev/v1", "buildconfigs", NAMESPACE))
    finally:
        await kube.close()
    assert listed["items"] == []
