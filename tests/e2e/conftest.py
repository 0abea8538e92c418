"""Fixtures for end-to-end tests: real triggerd processes next to the real registry/git."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import TriggerdServer
from tests.support.registry import Registry

ServerFactory = Callable[..., TriggerdServer]


@pytest.fixture
def triggerd_factory(tmp_path: Path, registry: Registry) -> Iterator[ServerFactory]:
    servers: list[TriggerdServer] = []

    def make(settings: Mapping[str, Any] | None = None, *, start: bool = True) -> TriggerdServer:
        merged: dict[str, Any] = {"registries": {registry.host: {"insecure": True}}}
        merged.update(settings or {})
        server = TriggerdServer(tmp_path / f"triggerd-{len(servers)}", merged)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
        # pytest shows captured output only for failing tests: the server log explains them.
        print(f"--- {server.data_dir} ---\n{server.log_text()}")


@pytest.fixture
def triggerd(triggerd_factory: ServerFactory) -> TriggerdServer:
    return triggerd_factory()
