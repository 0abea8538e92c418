"""Fixtures for strategy and input tests: S2I builder images made here, pushed to the
session registry, and the executor fixtures of tests/executors.

A builder image is the busybox base (FROM scratch + static busybox) plus S2I scripts in
``/usr/libexec/s2i`` and the ``io.openshift.s2i.scripts-url`` label, built once per session
with the test's own buildah storage, so nothing comes from a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.executors.conftest import env, executor_storage  # noqa: F401 (fixtures)
from tests.support.buildah import BuildahEnv
from tests.support.registry import Registry

ASSEMBLE = """#!/bin/sh
set -e
echo "assemble: uid $(id -u) GREETING=$GREETING FROM_CONFIG=$FROM_CONFIG"
if [ -f /tmp/artifacts/cache.txt ]; then
  echo "assemble: restored $(cat /tmp/artifacts/cache.txt)"
  cp /tmp/artifacts/cache.txt /opt/app/restored.txt
fi
cp -r /tmp/src/. /opt/app/
cat /tmp/src/version > /opt/app/cache.txt
id -u > /opt/app/assembled-by
env > /opt/app/assemble-env
"""
RUN = """#!/bin/sh
exec cat /opt/app/message
"""
SAVE_ARTIFACTS = """#!/bin/sh
cd /opt/app && tar -c -f - cache.txt
"""
SCRIPTS_URL = "image:///usr/libexec/s2i"


def build_builder(buildah_env: BuildahEnv, registry: Registry, base: str, where: Path) -> str:
    """Build the S2I test builder image and push it; return its reference."""
    scripts = where / "s2i"
    scripts.mkdir(parents=True)
    for name, text in (("assemble", ASSEMBLE), ("run", RUN), ("save-artifacts", SAVE_ARTIFACTS)):
        (scripts / name).write_text(text)
        (scripts / name).chmod(0o755)
    (where / "Containerfile").write_text(
        f"FROM {base}\n"
        "COPY s2i/ /usr/libexec/s2i/\n"
        "RUN mkdir -p /opt/app /tmp && chmod 1777 /tmp && chown 1001:0 /opt/app\n"
        f'LABEL io.openshift.s2i.scripts-url="{SCRIPTS_URL}"\n'
    )
    local = "localhost/triggerd-tests/s2i-builder:latest"
    buildah_env.run(
        "build", "--isolation", "chroot", "--layers", "--tls-verify=false",
        "-f", str(where / "Containerfile"), "-t", local, str(where),
    )  # fmt: skip
    ref = registry.ref("builders/s2i-busybox", "latest")
    buildah_env.push(local, ref, creds=registry.auth)
    return ref


@pytest.fixture(scope="session")
def builder_image(
    buildah_env: BuildahEnv,
    registry: Registry,
    base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """``127.0.0.1:PORT/builders/s2i-busybox:latest``: a busybox S2I builder image."""
    return build_builder(buildah_env, registry, base_image, tmp_path_factory.mktemp("builder"))


CUSTOM_BUILDER = """#!/bin/sh
echo "custom: OUTPUT_IMAGE=$OUTPUT_IMAGE OUTPUT_REGISTRY=$OUTPUT_REGISTRY"
echo "custom: SOURCE_URI=$SOURCE_URI SOURCE_REF=$SOURCE_REF EXTRA=$EXTRA"
echo "custom: BUILD has $(echo "$BUILD" | grep -o '"kind":"Build"')"
echo "custom: secret=$(cat /var/run/custom-secret/token)"
if [ -f "$PUSH_DOCKERCFG_PATH/.dockerconfigjson" ]; then echo "custom: push config present"; fi
exit "${CUSTOM_EXIT:-0}"
"""


@pytest.fixture(scope="session")
def custom_builder_image(
    buildah_env: BuildahEnv,
    registry: Registry,
    base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A custom-strategy builder: busybox whose entrypoint reports its environment."""
    where = tmp_path_factory.mktemp("custom-builder")
    (where / "build.sh").write_text(CUSTOM_BUILDER)
    (where / "Containerfile").write_text(
        f"FROM {base_image}\n"
        "COPY build.sh /usr/bin/build.sh\n"
        'ENTRYPOINT ["/bin/sh"]\n'
        'CMD ["/usr/bin/build.sh"]\n'
    )
    local = "localhost/triggerd-tests/custom-builder:latest"
    buildah_env.run(
        "build", "--isolation", "chroot", "--layers", "--tls-verify=false",
        "-f", str(where / "Containerfile"), "-t", local, str(where),
    )  # fmt: skip
    ref = registry.ref("builders/custom-busybox", "latest")
    buildah_env.push(local, ref, creds=registry.auth)
    return ref
