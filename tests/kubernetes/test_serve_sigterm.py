"""The real ``triggerd serve`` process in Kubernetes mode (custom-resource store, Job
executor, leader election) against the fake API server: once it holds the Lease, SIGTERM
makes it stop leading, release the Lease and exit 0, so another replica takes over at once
instead of waiting for the Lease to expire.

The fake API server is served by this test's event loop, so every wait here yields to it
(``async_wait_for``, the readiness probe in a thread): a blocking wait would starve the
server the subprocess is talking to."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import yaml

from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.ports import free_port
from tests.support.processes import async_wait_for, http_status, start_process
from triggerd.kube import Kube, KubernetesSettings, connect
from triggerd.leader import LeaderElector

LEASES = ("coordination.k8s.io/v1", "leases")
LEASE = "triggerd-leader"
IDENTITY = "triggerd-serve-0"
#: long enough that a successor taking the Lease right after SIGTERM cannot be expiry
LEASE_SECONDS = 60


def holder(apiserver: FakeApiServer) -> str | None:
    lease = apiserver.get(LEASES, NAMESPACE, LEASE)
    return None if lease is None else str(lease["spec"].get("holderIdentity") or "")


async def test_sigterm_steps_down_releases_the_lease_and_exits_0(
    apiserver: FakeApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "triggerd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "dataDir": str(tmp_path / "data"),
                "apiTokens": ["serve-sigterm-token-0123456789"],
                "store": "kubernetes",
                "executor": "kubernetes",
                "kubernetes": {
                    "namespace": NAMESPACE,
                    "kubeconfig": str(kubeconfig),
                    "leaseName": LEASE,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewIntervalSeconds": 0.5,
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    env["POD_NAME"] = IDENTITY
    process = start_process(
        [sys.executable, "-m", "triggerd", "serve", "--config", str(config)],
        log_path=tmp_path / "serve.log",
        env=env,
        name="triggerd serve",
    )
    successor_kube = Kube(
        await connect(KubernetesSettings(namespace=NAMESPACE, kubeconfig=str(kubeconfig)))
    )
    successor = LeaderElector(
        successor_kube,
        namespace=NAMESPACE,
        name=LEASE,
        identity="successor",
        lease_duration_seconds=LEASE_SECONDS,
        renew_interval_seconds=0.5,
    )
    try:

        async def ready() -> bool:
            url = f"http://127.0.0.1:{port}/readyz"
            return await asyncio.to_thread(http_status, url, timeout=1.0) == 200

        await async_wait_for(ready, timeout=30, what="triggerd ready", process=process)
        await async_wait_for(
            lambda: holder(apiserver) == IDENTITY, timeout=15, what="the Lease", process=process
        )
        # While it leads, nobody else gets the Lease.
        assert not await successor.try_once()

        os.kill(process.pid, signal.SIGTERM)  # the process alone, as the kubelet does
        await async_wait_for(lambda: not process.running, timeout=30, what="triggerd to exit")
        assert process.stop() == 0, process.describe()

        lease = apiserver.get(LEASES, NAMESPACE, LEASE)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "", lease
        assert lease["spec"]["leaseDurationSeconds"] == 1
        # Taken at once, far within the 60 s the Lease was held for.
        assert await successor.try_once()
        assert holder(apiserver) == "successor"
        log = process.log_text()
        assert f"{IDENTITY} lost leadership" in log, log
        assert "triggerd stopped" in log, log
    finally:
        process.stop()
        await successor_kube.close()
