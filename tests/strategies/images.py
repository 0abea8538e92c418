"""Helpers to look inside pushed images: the config the registry serves, files read by
running the image with buildah (what a user pulling it would see)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

from tests.support.buildah import BuildahEnv
from tests.support.registry import Registry


def image_config(registry: Registry, repo: str, tag: str) -> dict[str, Any]:
    """The image's config (User, Cmd, Env, Labels) as pushed."""
    manifest = registry.manifest(repo, tag)
    assert manifest is not None, f"{repo}:{tag} was not pushed"
    config_digest = manifest.json()["config"]["digest"]
    blob = registry.request("GET", f"/v2/{repo}/blobs/{config_digest}")
    assert blob.status == 200
    config = json.loads(blob.body)["config"]
    assert isinstance(config, dict)
    return config


def run_in(buildah_env: BuildahEnv, ref: str, *argv: str) -> str:
    """stdout of ``argv`` run in a fresh container of the pushed image ``ref``."""
    container = buildah_env.run("from", "--tls-verify=false", "--pull-always", "-q", ref)
    name = container.stdout.strip().splitlines()[-1]
    try:
        return buildah_env.run("run", "--isolation", "chroot", name, "--", *argv).stdout
    finally:
        buildah_env.run("rm", name)


def layer_files(registry: Registry, repo: str, tag: str) -> dict[str, bytes]:
    """Every entry of every layer of the pushed image, keyed ``<layer>:<path>``, read from
    the registry's blobs."""
    manifest = registry.manifest(repo, tag)
    assert manifest is not None, f"{repo}:{tag} was not pushed"
    found: dict[str, bytes] = {}
    for layer in manifest.json()["layers"]:
        blob = registry.request("GET", f"/v2/{repo}/blobs/{layer['digest']}")
        assert blob.status == 200
        data = blob.body
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                content = b""
                if member.isreg():
                    extracted = tar.extractfile(member)
                    content = extracted.read() if extracted else b""
                found[f"{layer['digest'][:19]}:{member.name}"] = content
    return found
