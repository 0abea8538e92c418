"""Shared pytest fixtures for tests that use real components: registry, git, buildah.

Starting a component is cheap but not free, so the common case shares one per session
(``registry``, ``git_daemon``, ``buildah_env``, ``base_image``); tests that need a special
setup (htpasswd users, push notifications, token auth) ask ``registry_factory`` for their own
instance, which is stopped when the test ends. Every process is stopped in a finalizer, also
when the test fails. Tests sharing session components must use their own repository names
(``git_repo_factory`` picks unique ones; for images use e.g. the test's name).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support.buildah import BuildahEnv, publish_busybox_base
from tests.support.gitrepo import GitDaemon, GitRepoFactory
from tests.support.registry import Registry, RegistryFactory

# The suite must give the same verdict on every run: property tests draw the same examples
# each time (derandomize). TRIGGERD_HYPOTHESIS_PROFILE=explore draws fresh ones, for hunting.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None)
hypothesis_settings.register_profile("explore", deadline=None)
hypothesis_settings.load_profile(os.environ.get("TRIGGERD_HYPOTHESIS_PROFILE", "ci"))

_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember whether the test itself failed so function-scoped fixtures can print the
    # logs of the servers they started in their teardown (pytest shows that output).
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_failed_key] = True
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.stash.get(_failed_key, False))


@pytest.fixture(scope="session")
def buildah_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildahEnv]:
    """Private buildah storage (vfs) and config, chroot isolation; see ``BuildahEnv``."""
    env = BuildahEnv(tmp_path_factory.mktemp("buildah"))
    yield env
    env.remove_storage()


@pytest.fixture(scope="session")
def registry(
    tmp_path_factory: pytest.TempPathFactory, buildah_env: BuildahEnv
) -> Iterator[Registry]:
    """One plain (no auth, no notifications) registry for the whole session."""
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
        buildah_env.allow_insecure(reg.host)
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def registry_factory(
    tmp_path: Path, buildah_env: BuildahEnv, request: pytest.FixtureRequest
) -> Iterator[RegistryFactory]:
    """``registry_factory(htpasswd=..., notifications=..., token=..., extra=...)`` starts a
    registry of its own for this test (see ``RegistryFactory.__call__``); the session's
    buildah is told that it speaks plain HTTP."""
    factory = RegistryFactory(
        tmp_path / "registries", on_start=lambda reg: buildah_env.allow_insecure(reg.host)
    )
    try:
        yield factory
    finally:
        if _test_failed(request):
            for reg in factory.started:
                print(f"--- {reg!r} log ({reg.log_path}):\n{reg.log_text()[-4000:]}")
        factory.stop_all()


@pytest.fixture(scope="session")
def base_image(buildah_env: BuildahEnv, registry: Registry) -> str:
    """``127.0.0.1:PORT/base/busybox:latest`` in the session registry: a FROM-scratch
    busybox image (sh, echo, cat, sleep, ... on PATH) to use as a FROM in test builds."""
    return publish_busybox_base(buildah_env, registry)


@pytest.fixture(scope="session")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """``git daemon`` on 127.0.0.1 serving every repository ``git_repo_factory`` makes."""
    base = tmp_path_factory.mktemp("git")
    daemon = GitDaemon(base / "repos", log_path=base / "git-daemon.log")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def git_repo_factory(git_daemon: GitDaemon) -> GitRepoFactory:
    """``git_repo_factory(name="app", files={...}, branch="main")`` makes a bare repository
    reachable at ``repo.file_url`` and ``repo.git_url``; see ``GitRepoFactory``."""
    return GitRepoFactory(git_daemon.base_dir, git_daemon)
