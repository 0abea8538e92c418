"""Builders shared by the image change tests: BuildConfigs with ImageChange triggers."""

from __future__ import annotations

from typing import Any

from tests.factories import buildconfig_doc
from triggerd.model import buildconfigs

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64


def image_config_doc(
    name: str = "app",
    *,
    base: dict[str, Any] | None = None,
    triggers: list[dict[str, Any]] | None = None,
    output: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Docker-strategy config FROM ``base`` with the given triggers (default: one empty
    ImageChange trigger, i.e. watch the strategy's from)."""
    doc = buildconfig_doc(name, output=None)
    docker: dict[str, Any] = {}
    if base is not None:
        docker["from"] = base
    doc["spec"]["strategy"] = {"type": "Docker", "dockerStrategy": docker}
    doc["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM scratch\n"}
    doc["spec"]["triggers"] = (
        triggers if triggers is not None else [{"type": "ImageChange", "imageChange": {}}]
    )
    if output is not None:
        doc["spec"]["output"] = {"to": output}
    if annotations:
        doc["metadata"]["annotations"] = annotations
    if status:
        doc["status"] = status
    return doc


def image_config(name: str = "app", **kwargs: Any) -> buildconfigs.BuildConfig:
    return buildconfigs.parse(image_config_doc(name, **kwargs))


def docker_ref(name: str) -> dict[str, str]:
    return {"kind": "DockerImage", "name": name}


def istag(name: str, namespace: str | None = None) -> dict[str, str]:
    ref = {"kind": "ImageStreamTag", "name": name}
    if namespace:
        ref["namespace"] = namespace
    return ref
