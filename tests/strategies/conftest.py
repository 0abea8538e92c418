"""Fixtures for strategy and input tests: S2I builder images made here, pushed to the
session registry, and the executor fixtures of tests/executors.

A builder image is the busybox base (FROM scratch + static busybox) plus S2I scripts in
``/usr/libexec/s2i`` and the ``io.openshift.s2i.scripts-url`` label (and, in
``/opt/s2i-minimal``, only assemble and run: a scripts location without save-artifacts),
built once per session with the test's own buildah storage, so nothing comes from a
network.
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
#: Scripts in the builder image without save-artifacts.
MINIMAL_SCRIPTS_DIR = "/opt/s2i-minimal"


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
        f"RUN mkdir -p /opt/app /tmp {MINIMAL_SCRIPTS_DIR} && chmod 1777 /tmp && "
        "chown 1001:0 /opt/app && "
        f"cp /usr/libexec/s2i/assemble /usr/libexec/s2i/run {MINIMAL_SCRIPTS_DIR}/\n"
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


CUSTOM_BUILDER = r"""#!/bin/sh
# A custom builder as OpenShift documents them: it reads the build from its environment and
# mounted inputs, builds an image (one layer with a file saying what it was given) and
# pushes it to $OUTPUT_REGISTRY/$OUTPUT_IMAGE over the registry's HTTP API with busybox nc.
set -e
for name in OUTPUT_REGISTRY OUTPUT_IMAGE SOURCE_URI SOURCE_REPOSITORY SOURCE_REF \
    SOURCE_CONTEXT_DIR SOURCE_SECRET_PATH PUSH_DOCKERCFG_PATH LANG EXTRA; do
  eval "value=\${$name-<unset>}"
  echo "custom: $name=$value"
done
echo "custom: BUILD has $(echo "$BUILD" | grep -o '"kind":"Build"')"
digest() { sha256sum "$1" | cut -d' ' -f1; }
for file in /var/run/custom-secret/token "$SOURCE_SECRET_PATH/password" \
    /var/run/secrets/openshift.io/build/creds/token \
    /var/run/configs/openshift.io/build/app-config/level; do
  if [ -f "$file" ]; then echo "custom: read $file sha256=$(digest "$file")"; fi
done
if [ -f "$PUSH_DOCKERCFG_PATH/.dockerconfigjson" ]; then echo "custom: push config present"; fi
if [ "${CUSTOM_EXIT:-0}" != 0 ]; then exit "$CUSTOM_EXIT"; fi

registry=$OUTPUT_REGISTRY host=${OUTPUT_REGISTRY%:*} port=${OUTPUT_REGISTRY##*:}
repo=${OUTPUT_IMAGE%:*} tag=${OUTPUT_IMAGE##*:}
work=$(mktemp -d)
mkdir "$work/rootfs"
echo "built from $SOURCE_URI $SOURCE_REF $SOURCE_CONTEXT_DIR" > "$work/rootfs/built.txt"
cd "$work/rootfs" && tar -c -f ../layer.tar built.txt && cd "$work"
request() {  # METHOD PATH FILE [CONTENT-TYPE]: the raw HTTP response
  { printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %s\r\n\r\n' \
      "$1" "$2" "$registry" "${4:-application/octet-stream}" "$(wc -c < "$3")"
    cat "$3"; } | nc "$host" "$port"
}
upload() {  # FILE: push the blob, print its digest
  location=$(request POST "/v2/$repo/blobs/uploads/" /dev/null \
    | grep -i '^location:' | sed 's/^[^:]*: *//' | tr -d '\r')
  location=${location#http://$registry}
  case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
  sum=$(digest "$1")
  status=$(request PUT "$location${sep}digest=sha256:$sum" "$1" | head -1)
  case $status in *201*) echo "$sum" ;; *) echo "blob upload: $status" >&2; exit 1 ;; esac
}
layer=$(upload layer.tar)
{ printf '{"architecture":"amd64","os":"linux","config":{},'
  printf '"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer"; } > config.json
config=$(upload config.json)
{ printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
  printf '"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
  printf '"digest":"sha256:%s","size":%s},' "$config" "$(wc -c < config.json)"
  printf '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar",'
  printf '"digest":"sha256:%s","size":%s}]}' "$layer" "$(wc -c < layer.tar)"
} > manifest.json
status=$(request PUT "/v2/$repo/manifests/$tag" manifest.json \
  application/vnd.oci.image.manifest.v1+json | head -1)
case $status in *201*) echo "custom: pushed $OUTPUT_REGISTRY/$OUTPUT_IMAGE" ;;
  *) echo "manifest push: $status"; exit 1 ;; esac
"""


@pytest.fixture(scope="session")
def custom_builder_image(
    buildah_env: BuildahEnv,
    registry: Registry,
    base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A custom-strategy builder: busybox whose entrypoint reports its environment and
    inputs, then builds and pushes an image of one file (see CUSTOM_BUILDER)."""
    where = tmp_path_factory.mktemp("custom-builder")
    (where / "build.sh").write_text(CUSTOM_BUILDER)
    (where / "Containerfile").write_text(
        f"FROM {base_image}\n"
        "COPY build.sh /usr/bin/build.sh\n"
        "RUN mkdir -p /tmp && chmod 1777 /tmp\n"
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
