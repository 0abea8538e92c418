"""Fixtures for executor tests: a LocalExecutor on a private buildah storage, a reporter
that records what it is told, and Build objects made from spec dicts.

The buildah storage (``--root``/``--runroot``) is one per test session, under a temp dir, so
a later build reuses the layers of an earlier one as it would on a server; each test gets its
own workspace and log directory. The registry, git daemon and busybox base image come from
tests/conftest.py.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.registry import Registry
from triggerd.executors.local import LocalExecutor
from triggerd.logs import LogStore
from triggerd.model import builds
from triggerd.model.builds import Build, Stage
from triggerd.model.specs import SourceRevision
from triggerd.settings import BuildahSettings, RegistrySettings, SecretSettings, Settings


@dataclass
class RecordingReporter:
    """A Reporter that keeps every report, in order."""

    events: list[str] = field(default_factory=list)
    revisions: list[SourceRevision] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)

    async def running(self) -> None:
        self.events.append("running")

    async def revision(self, revision: SourceRevision) -> None:
        self.events.append("revision")
        self.revisions.append(revision)

    async def stage(self, stage: Stage) -> None:
        self.events.append(f"stage:{stage.name.value}")
        self.stages.append(stage)


@dataclass
class Storage:
    root: Path
    runroot: Path

    def flags(self) -> list[str]:
        return ["--storage-driver", "vfs", "--root", str(self.root), "--runroot", str(self.runroot)]


@pytest.fixture(scope="session")
def executor_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    base = tmp_path_factory.mktemp("executor-buildah")
    yield Storage(root=base / "storage", runroot=base / "run")


@dataclass
class ExecutorEnv:
    """Everything a test needs to build settings and an executor for its case."""

    tmp: Path
    storage: Storage
    registry: Registry
    base_image: str
    logs: LogStore = field(init=False)

    def __post_init__(self) -> None:
        self.logs = LogStore(self.tmp / "logs")

    def settings(
        self,
        *,
        registries: dict[str, RegistrySettings] | None = None,
        secrets: dict[str, SecretSettings] | None = None,
        push_retries: int = 1,
    ) -> Settings:
        all_registries = {self.registry.host: RegistrySettings(insecure=True)}
        all_registries.update(registries or {})
        return Settings(
            data_dir=self.tmp / "data",
            registries=all_registries,
            secrets=secrets or {},
            buildah=BuildahSettings(
                root=str(self.storage.root),
                runroot=str(self.storage.runroot),
                push_retries=push_retries,
            ),
        )

    def executor(self, settings: Settings | None = None) -> LocalExecutor:
        return LocalExecutor(settings or self.settings(), self.logs, self.tmp / "work")


@pytest.fixture
def env(
    tmp_path: Path, executor_storage: Storage, registry: Registry, base_image: str
) -> ExecutorEnv:
    return ExecutorEnv(
        tmp=tmp_path, storage=executor_storage, registry=registry, base_image=base_image
    )


def make_build(spec: dict[str, Any], name: str, namespace: str = "team") -> Build:
    return builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": name, "namespace": namespace},
            "spec": copy.deepcopy(spec),
        }
    )


def git_spec(
    uri: str, *, ref: str = "main", output: str | None = None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"type": "Git", "git": {"uri": uri, "ref": ref}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    if output is not None:
        spec["output"] = {"to": {"kind": "DockerImage", "name": output}}
    spec.update(extra)
    return spec


def processes() -> dict[int, tuple[int, str]]:
    """pid → (process group, command line) of every process on the machine."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        pgrp = int(stat.rpartition(")")[2].split()[2])
        found[int(entry)] = (pgrp, cmdline.decode(errors="replace").strip())
    return found
