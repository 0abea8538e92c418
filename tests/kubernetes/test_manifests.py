"""Every manifest under manifests/, file by file: against the Kubernetes schemas (strict), the
custom resources against the CRD schemas, and the security properties the docs promise.
Rendered kustomizations are tests/kubernetes/test_kustomize.py; the CRD schemas themselves
are tests/kubernetes/test_crd_schemas.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from tests.kubernetes.crd_schema import crd_schema as schema_of
from tests.kubernetes.crd_schema import problems
from tests.kubernetes.test_jobs import K8S_VERSION
from triggerd import kube
from triggerd import settings as settings_module
from triggerd.store.kubernetes import build_from_resource, config_from_resource

ROOT = Path(__file__).resolve().parents[2] / "manifests"
#: kustomize inputs that are not whole objects (test_kustomize.py checks them applied)
NOT_OBJECTS = {"kustomization.yaml", "settings.yaml", "deployment-tokens.yaml",
               "deployment-logs.yaml"}  # fmt: skip


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
    return schema_of(CRDS[kind])


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_is_valid(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "triggerd.dev/v1":
        assert problems(doc, crd_schema(doc["kind"])) == []
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


def test_crds_have_status_subresources_and_short_names() -> None:
    assert set(CRDS) == {"BuildConfig", "Build", "Delivery", "ImageStream"}
    assert CRDS["BuildConfig"]["spec"]["names"]["shortNames"] == ["bc"]
    assert CRDS["Build"]["spec"]["names"]["shortNames"] == ["build"]
    for kind in ("BuildConfig", "Build"):
        version = CRDS[kind]["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert CRDS[kind]["metadata"]["name"] == f"{kind.lower()}s.triggerd.dev"


def test_examples_load_as_triggerd_objects() -> None:
    examples = ROOT / "examples"
    config = config_from_resource(yaml.safe_load((examples / "buildconfig.yaml").read_text()))
    assert config.name == "hello" and config.triggers
    build = build_from_resource(yaml.safe_load((examples / "build.yaml").read_text()))
    assert build.status.output_digest.startswith("sha256:")


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
    # the image's entrypoint is `triggerd serve`; the Deployment only adds the settings file
    assert container["args"] == ["--config", "/etc/triggerd/settings.yaml"]
    assert "command" not in container
    assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
    roles = [d for _, d in DOCS if d["kind"] == "Role"]
    assert roles
    for rule in (rule for role in roles for rule in role["rules"]):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
        if "leases" in rule["resources"] and set(rule["verbs"]) - {"create"}:
            # read and renew one Lease only: the leaseName setting's default
            assert rule["resourceNames"] == [kube.KubernetesSettings().lease_name]
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
