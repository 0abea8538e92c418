"""Every manifest under manifests/ against the Kubernetes schemas (strict), the examples
against the CRD schemas, and the security properties the docs promise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from tests.kubernetes.test_jobs import K8S_VERSION
from triggerd import kube
from triggerd import settings as settings_module
from triggerd.store.kubernetes import build_from_resource, config_from_resource

ROOT = Path(__file__).resolve().parents[2] / "manifests"
#: kustomize inputs that are not whole objects (the patch is checked applied, below)
NOT_OBJECTS = {"kustomization.yaml", "settings.yaml", "deployment-tokens.yaml"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(ROOT.rglob("*.yaml")):
        if path.name in NOT_OBJECTS:
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}",
                             doc))  # fmt: skip
    return docs


DOCS = documents()
CRDS = {d["spec"]["names"]["kind"]: d for _, d in DOCS if d["kind"] == "CustomResourceDefinition"}


def crd_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_is_valid(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "triggerd.dev/v1":
        jsonschema.validate(doc, crd_schema(doc["kind"]))
    elif doc["kind"] == "ServiceMonitor":
        # No schema for the Prometheus Operator's CRD in kubernetes-validate.
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        service = next(d for _, d in DOCS if d["kind"] == "Service")
        assert doc["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
        assert doc["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomizations_list_existing_files() -> None:
    for path in ROOT.rglob("kustomization.yaml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for entry in doc.get("resources", []) + doc.get("components", []):
            assert (path.parent / entry).exists(), f"{path}: {entry}"
        for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
            for item in generator.get("files", []) + generator.get("envs", []):
                assert (path.parent / item).exists(), f"{path}: {item}"
        for patch in doc.get("patches", []):
            assert (path.parent / patch["path"]).exists()
    base = yaml.safe_load((ROOT / "base/kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(base["resources"])
    present = {p.name for p in (ROOT / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_crds_are_structural_with_status_and_columns() -> None:
    assert set(CRDS) == {"BuildConfig", "Build", "Delivery"}
    assert CRDS["BuildConfig"]["spec"]["names"]["shortNames"] == ["bc"]
    assert CRDS["Build"]["spec"]["names"]["shortNames"] == ["build"]
    for kind in ("BuildConfig", "Build"):
        version = CRDS[kind]["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in
               CRDS["Build"]["spec"]["versions"][0]["additionalPrinterColumns"]}  # fmt: skip
    assert columns == {
        "Type": ".spec.strategy.type",
        "Status": ".status.phase",
        "Started": ".status.startTimestamp",
        "Duration": ".status.duration",
        "Digest": ".status.output.to.imageDigest",
    }

    def check(node: dict[str, Any], path: str) -> None:
        # structural: every node has a type (or preserves unknown fields at the root)
        assert "type" in node, path
        for name, child in (node.get("properties") or {}).items():
            check(child, f"{path}.{name}")
        if "items" in node:
            check(node["items"], f"{path}[]")

    for kind in CRDS:
        check(crd_schema(kind), kind)


def test_examples_load_as_triggerd_objects() -> None:
    examples = ROOT / "examples"
    config = config_from_resource(yaml.safe_load((examples / "buildconfig.yaml").read_text()))
    assert config.name == "hello" and config.triggers
    build = build_from_resource(yaml.safe_load((examples / "build.yaml").read_text()))
    assert build.status.output_digest.startswith("sha256:")
    # what the store writes validates against the CRDs, too
    from triggerd.store.kubernetes import build_to_resource, config_to_resource

    jsonschema.validate(config_to_resource(config), crd_schema("BuildConfig"))
    jsonschema.validate(build_to_resource(build), crd_schema("Build"))


def test_invalid_examples_are_refused_by_the_crd_schema() -> None:
    bad = yaml.safe_load((ROOT / "examples/build.yaml").read_text())
    bad["status"]["phase"] = "Exploded"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("Build"))


def test_example_settings_load(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "overlays/example/settings.yaml").read_text())
    k8s = kube.parse_settings(doc.pop("kubernetes"))
    assert k8s.seccomp_profile == "profiles/triggerd-buildah.json"
    assert k8s.renew_interval_seconds < k8s.lease_duration_seconds
    rest = tmp_path / "settings.yaml"
    rest.write_text(yaml.safe_dump(doc))
    loaded = settings_module.load(rest, environ={})
    assert (loaded.executor, loaded.store) == ("kubernetes", "kubernetes")


def test_kubernetes_settings_errors_name_the_field() -> None:
    with pytest.raises(Exception, match=r"kubernetes\.fetchUid"):
        kube.parse_settings({"fetchUid": "root"})
    with pytest.raises(Exception, match=r"kubernetes\.bogus"):
        kube.parse_settings({"bogus": 1})


def test_deployment_and_rbac_are_least_privilege() -> None:
    by_kind = {d["kind"]: d for _, d in DOCS}
    deployment = by_kind["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"][0] == "serve"
    assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
    for rule in by_kind["Role"]["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    policy = by_kind["NetworkPolicy"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "triggerd"
    }


def test_seccomp_profile_allows_what_buildah_needs() -> None:
    profile = json.loads((ROOT / "seccomp/triggerd-buildah.json").read_text())
    denied = {n for rule in profile["syscalls"] for n in rule["names"]
              if rule["action"] != "SCMP_ACT_ALLOW"}  # fmt: skip
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert not denied & {"unshare", "mount", "umount2", "clone", "clone3", "setns", "chroot"}
    assert {"kexec_load", "bpf", "init_module", "open_by_handle_at"} <= denied


def test_overlay_patch_applies_to_a_valid_deployment() -> None:
    deployment = next(d for _, d in DOCS if d["kind"] == "Deployment")
    patch = yaml.safe_load((ROOT / "overlays/example/deployment-tokens.yaml").read_text())
    assert patch["metadata"]["name"] == deployment["metadata"]["name"]
    patched_container = patch["spec"]["template"]["spec"]["containers"][0]
    container = next(
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == patched_container["name"]
    )
    container.update({k: v for k, v in patched_container.items() if k != "name"})
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
