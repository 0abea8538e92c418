"""Tests of tests/support/buildah.py: the session's buildah setup and the busybox base image.

They also pin down what ``buildah build`` prints on this machine, so triggerd tests can rely
on it: one ``STEP i/n: INSTRUCTION`` line per instruction, RUN output in between, and with
``--layers`` a ``--> Using cache <id>`` line for each step taken from the cache.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.buildah import (
    BUSYBOX_LOCAL_NAME,
    BuildahEnv,
    BuildahError,
    build_busybox_base,
    publish_busybox_base,
)
from tests.support.registry import Registry, RegistryFactory

pytestmark = pytest.mark.e2e


def test_base_image_is_in_the_session_registry(base_image: str, registry: Registry) -> None:
    assert base_image == f"{registry.host}/base/busybox:latest"
    assert registry.head_digest("base/busybox", "latest") is not None


def test_base_image_is_reproducible(buildah_env: BuildahEnv, registry: Registry) -> None:
    # --timestamp 0 and a fixed file set: rebuilding from scratch gives the same digest.
    image_id = build_busybox_base(buildah_env)
    buildah_env.run("rmi", "--force", BUSYBOX_LOCAL_NAME)
    assert build_busybox_base(buildah_env) == image_id
    first = buildah_env.push(BUSYBOX_LOCAL_NAME, registry.ref("repro/busybox", "a"))
    second = buildah_env.push(BUSYBOX_LOCAL_NAME, registry.ref("repro/busybox", "b"))
    assert first == second


def test_build_from_base_with_run_steps_and_layer_cache(
    buildah_env: BuildahEnv, base_image: str, registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "greeting").write_text("hello from the context\n")
    (tmp_path / "Containerfile").write_text(
        f"FROM {base_image}\n"
        "COPY greeting /greeting\n"
        "RUN cat /greeting && echo built-by-run > /built && ls -ld /tmp\n"
        "RUN ls /bin/sh /bin/sleep /bin/true /usr/bin/env\n"
    )
    tag = registry.ref("support-tests/layers", "v1")
    first = buildah_env.run("build", "--layers", "-t", tag, str(tmp_path))
    out = first.stdout
    assert f"STEP 1/4: FROM {base_image}\n" in out
    assert "STEP 2/4: COPY greeting /greeting\n" in out
    assert "STEP 3/4: RUN cat /greeting" in out
    assert "hello from the context\n" in out
    assert "drwxrwxrwt" in out  # /tmp kept its sticky 1777 mode
    assert f"COMMIT {tag}\n" in out
    assert "Using cache" not in out

    second = buildah_env.run("build", "--layers", "-t", tag, str(tmp_path))
    assert second.stdout.count("--> Using cache ") == 3
    assert "hello from the context" not in second.stdout  # RUN did not run again

    digest = buildah_env.push(tag, tag)
    assert registry.head_digest("support-tests/layers", "v1") == digest


def test_failing_run_step_reports_step_and_status(
    buildah_env: BuildahEnv, base_image: str, tmp_path: Path
) -> None:
    (tmp_path / "Containerfile").write_text(f"FROM {base_image}\nRUN echo about-to-fail; exit 7\n")
    proc = buildah_env.run("build", str(tmp_path), check=False)
    assert proc.returncode != 0
    assert "about-to-fail" in proc.stdout
    assert 'building at STEP "RUN echo about-to-fail; exit 7"' in proc.stderr
    assert "exit status 7" in proc.stderr


def test_env_alone_selects_storage_and_insecure_registries(
    buildah_env: BuildahEnv, base_image: str, registry: Registry
) -> None:
    # What a program under test gets: plain `buildah`, no flags, only buildah_env.env.
    env = buildah_env.full_env()
    assert env["BUILDAH_ISOLATION"] == "chroot"
    info = subprocess.run(
        ["buildah", "info", "--format", "{{.store.GraphDriverName}} {{.store.GraphRoot}}"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert info.stdout.strip() == f"vfs {buildah_env.graphroot}"
    # No --tls-verify=false: registries.conf marks the local registry insecure.
    pull = subprocess.run(
        ["buildah", "pull", "--quiet", base_image],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pull.returncode == 0, pull.stderr


def test_short_names_fail_without_looking_anywhere(buildah_env: BuildahEnv) -> None:
    started = time.monotonic()
    proc = buildah_env.run("pull", "alpine", check=False)
    assert proc.returncode != 0
    assert "short-name" in proc.stderr
    assert "docker.io" not in proc.stderr
    assert time.monotonic() - started < 10


def test_base_image_in_a_registry_with_auth(
    buildah_env: BuildahEnv, registry_factory: RegistryFactory
) -> None:
    reg = registry_factory(htpasswd={"ci": "secret"})
    ref = publish_busybox_base(buildah_env, reg)
    assert ref == f"{reg.host}/base/busybox:latest"
    assert reg.head_digest("base/busybox", "latest") is not None
    with pytest.raises(BuildahError):
        buildah_env.push(BUSYBOX_LOCAL_NAME, reg.ref("x/y"), creds=("ci", "wrong"))
