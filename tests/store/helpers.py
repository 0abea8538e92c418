"""Builders of BuildConfigs, build factories and deliveries for the store tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from triggerd.model import buildconfigs, builds, requests
from triggerd.model import meta as metas
from triggerd.store.base import BuildFactory, Delivery, NewBuild
from triggerd.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def config_doc(
    name: str = "app",
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    **extra_spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": metadata,
        "spec": {
            "source": {"git": {"uri": f"https://example.com/{name}.git", "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": f"127.0.0.1:5000/{name}:latest"}},
            **extra_spec,
        },
    }


def config(
    name: str = "app", namespace: str = "default", **kwargs: Any
) -> buildconfigs.BuildConfig:
    return buildconfigs.parse(config_doc(name, namespace, **kwargs))


def factory(
    request: requests.BuildRequest | None = None, *, uid: str = "", created: datetime | None = None
) -> BuildFactory:
    """A build factory as the engine makes one: requests.instantiate with a fixed request."""

    def make(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        return requests.instantiate(
            bc,
            request or requests.BuildRequest(),
            number=number,
            uid=uid,
            created=created or metas.now(),
        )

    return make


def new_build(
    name: str = "app",
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    make: BuildFactory | None = None,
) -> NewBuild:
    if make is None:
        make = factory(requests.BuildRequest(labels=dict(labels or {})))
    return NewBuild(namespace=namespace, config_name=name, make=make)


def delivery(key: str, received: datetime | None = None) -> Delivery:
    return Delivery(key=key, received=received or metas.now())


async def wait_queued(store: SqliteStore, count: int) -> None:
    """Wait until ``count`` writes are queued behind the one the writer is running."""
    for _ in range(2000):
        if store.stats().queued >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {store.stats().queued} of {count} writes were queued")


@asynccontextmanager
async def writer_held(store: SqliteStore) -> AsyncIterator[asyncio.Task[Any]]:
    """Keep the writer thread busy inside one write until the block exits.

    Writes submitted inside the block queue up and run afterwards as one group, which lets
    tests decide exactly what shares a transaction. Needs a BuildConfig "blocker".
    """
    entered = threading.Event()
    release = threading.Event()
    plain = factory()

    def blocking(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        entered.set()
        if not release.wait(30):
            raise TimeoutError("the test never released the writer")
        return plain(bc, number)

    task = asyncio.create_task(store.instantiate([new_build("blocker", make=blocking)]))
    try:
        if not await asyncio.to_thread(entered.wait, 30):
            raise AssertionError("the writer never started the blocking write")
        yield task
    finally:
        release.set()
    await task
