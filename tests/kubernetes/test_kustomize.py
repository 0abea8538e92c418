"""manifests/ rendered as `kubectl apply -k` would render it, every object validated.

The renderer is tests/kubernetes/kustomize.py (kustomize cannot be installed here); its
docstring lists what it covers. A real ``kubectl kustomize manifests/overlays/example``
before a release is still recommended: these tests prove the manifests under the
renderer's reading of kustomize, which follows kustomize's documented behaviour and
matches its documented generator hashes (below), not kustomize itself.
"""

from __future__ import annotations

import base64
import ipaddress
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from tests import factories
from tests.kubernetes import kustomize
from tests.kubernetes.kustomize import Doc
from tests.kubernetes.test_jobs import K8S_VERSION
from triggerd import settings as settings_module
from triggerd.model import buildconfigs, requests
from triggerd.planning import buildah, jobs

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
BASE = MANIFESTS / "base"
EXAMPLE = MANIFESTS / "overlays/example"
COMPONENTS = ["../../components/servicemonitor", "../../components/shared-logs"]


def render_example(components: list[str] | None = None) -> list[Doc]:
    k = kustomize.load_kustomization(EXAMPLE)
    if components is not None:
        k["components"] = components
    return kustomize.build(EXAMPLE, k)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def validate(doc: Doc) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        # kubernetes-validate has no schema for the Prometheus Operator's CRDs
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# The renderer against kustomize's documented outputs --------------------------------------------


def test_generated_names_match_kustomizes_documented_hashes(tmp_path: Path) -> None:
    """kubernetes.io, "Declarative Management of Kubernetes Objects Using Kustomize":
    a file application.properties holding "FOO=Bar\\n" gives example-configmap-1-8mbdf7882g,
    the literal FOO=Bar gives example-configmap-2-g2hdhfc6tk."""
    (tmp_path / "application.properties").write_text("FOO=Bar\n")
    docs = kustomize.build(
        tmp_path,
        {"configMapGenerator": [
            {"name": "example-configmap-1", "files": ["application.properties"]},
            {"name": "example-configmap-2", "literals": ["FOO=Bar"]},
        ]},
    )  # fmt: skip
    names = sorted(d["metadata"]["name"] for d in docs)
    assert names == ["example-configmap-1-8mbdf7882g", "example-configmap-2-g2hdhfc6tk"]


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas: []\n")
    with pytest.raises(kustomize.Unsupported, match="replicas"):
        kustomize.build(tmp_path)
    with pytest.raises(kustomize.Unsupported, match="target"):
        targeted = [{"path": "role.yaml", "target": {"kind": "Role"}}]
        kustomize.build(BASE, {**kustomize.load_kustomization(BASE), "patches": targeted})


# Every rendering validates ---------------------------------------------------------------------

RENDERINGS = {
    "base": lambda: kustomize.build(BASE),
    "example": lambda: render_example(),
    "example+components": lambda: render_example(COMPONENTS),
}


@pytest.mark.parametrize("render", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_every_rendered_object_validates_strictly(render: Any) -> None:
    docs = render()
    assert docs
    for doc in docs:
        validate(doc)
        if doc["kind"] not in kustomize.CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "triggerd", doc["metadata"]["name"]


def test_base_contents() -> None:
    docs = kustomize.build(BASE)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("CustomResourceDefinition", "buildconfigs.triggerd.dev"),
        ("CustomResourceDefinition", "builds.triggerd.dev"),
        ("CustomResourceDefinition", "deliveries.triggerd.dev"),
        ("CustomResourceDefinition", "imagestreams.triggerd.dev"),
        ("Deployment", "triggerd"),
        ("Namespace", "triggerd"),
        ("NetworkPolicy", "triggerd-builds"),
        ("Role", "triggerd"),
        ("Role", "triggerd-leader-election"),
        ("RoleBinding", "triggerd"),
        ("RoleBinding", "triggerd-leader-election"),
        ("Service", "triggerd"),
        ("ServiceAccount", "triggerd"),
    ]
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "triggerd"
    # labels reach metadata only: selectors and the pod template keep their own
    deployment = one(docs, "Deployment")
    assert "app.kubernetes.io/part-of" not in deployment["spec"]["selector"]["matchLabels"]


# The example overlay ---------------------------------------------------------------------------


def container(docs: list[Doc]) -> Doc:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    found: Doc = next(c for c in pod["containers"] if c["name"] == "triggerd")
    return found


def test_generated_settings_and_tokens_are_wired_into_the_deployment() -> None:
    docs = render_example()
    settings_map = one(docs, "ConfigMap")
    tokens = one(docs, "Secret")
    assert settings_map["metadata"]["name"].startswith("triggerd-settings-")
    assert tokens["metadata"]["name"].startswith("triggerd-tokens-")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["settings"]["configMap"]["name"] == settings_map["metadata"]["name"]
    main = container(docs)
    assert main["envFrom"] == [{"secretRef": {"name": tokens["metadata"]["name"]}}]
    assert main["image"] == "ghcr.io/triggerd/triggerd:latest"
    assert main["args"] == ["--config", "/etc/triggerd/settings.yaml"]
    token = base64.b64decode(tokens["data"]["TRIGGERD_API_TOKENS"]).decode()
    assert token == "replace-me-with-a-long-random-token"
    mounted = next(m for m in main["volumeMounts"] if m["name"] == "settings")
    assert mounted["mountPath"] + "/settings.yaml" == main["args"][1]


def test_a_settings_change_rolls_the_deployment_out(tmp_path: Path) -> None:
    """The hash suffix changes the pod template, so kubectl apply restarts the replicas."""
    before = one(render_example(), "ConfigMap")["metadata"]["name"]
    changed = kustomize.load_kustomization(EXAMPLE)
    edited = tmp_path / "settings.yaml"
    edited.write_text((EXAMPLE / "settings.yaml").read_text() + "logLevel: debug\n")
    changed["configMapGenerator"] = [{"name": "triggerd-settings", "files": [str(edited)]}]
    after = kustomize.build(EXAMPLE, changed)
    assert one(after, "ConfigMap")["metadata"]["name"] != before
    pod = one(after, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["settings"]["configMap"]["name"] == one(
        after, "ConfigMap"
    )["metadata"]["name"]


def load_settings(docs: list[Doc], tmp_path: Path) -> settings_module.Settings:
    """The settings a replica of this rendering runs with: the mounted file and its env."""
    path = tmp_path / "settings.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["settings.yaml"])
    environ = {e["name"]: e["value"] for e in container(docs).get("env", []) if "value" in e}
    return settings_module.load(path, environ=environ)


def test_the_lease_the_role_allows_is_the_lease_the_settings_name(tmp_path: Path) -> None:
    docs = render_example()
    lease_name = load_settings(docs, tmp_path).kubernetes.lease_name
    role = one(docs, "Role", "triggerd-leader-election")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [lease_name], "verbs": ["get", "update"]}]  # fmt: skip
    binding = one(docs, "RoleBinding", "triggerd-leader-election")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "triggerd", "namespace": "triggerd"}
    ]
    # the main Role does not touch Leases at all
    main_role = one(docs, "Role", "triggerd")
    assert all("coordination.k8s.io" not in r["apiGroups"] for r in main_role["rules"])


# Components ------------------------------------------------------------------------------------


def test_shared_logs_mounts_one_claim_at_logs_dir_on_every_replica(tmp_path: Path) -> None:
    docs = render_example(["../../components/shared-logs"])
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "logs")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    main = container(docs)
    mount = next(m for m in main["volumeMounts"] if m["name"] == "logs")
    loaded = load_settings(docs, tmp_path)
    assert loaded.logs_dir == Path(mount["mountPath"])
    assert loaded.data_dir != loaded.logs_dir  # dataDir stays per replica
    # the patch merged into the container: the base's mounts and the tokens are still there
    assert {m["name"] for m in main["volumeMounts"]} == {"settings", "data", "tmp", "logs"}
    assert main["envFrom"][0]["secretRef"]["name"].startswith("triggerd-tokens-")
    assert deployment["spec"]["replicas"] == 2  # every replica mounts it (one pod template)


def test_service_monitor_scrapes_the_service_port() -> None:
    docs = render_example(["../../components/servicemonitor"])
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["namespace"] == "triggerd"


# The build pods' NetworkPolicy ----------------------------------------------------------------


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def peer_allows(peer: Mapping[str, Any], namespace_labels: Mapping[str, str],
                pod_labels: Mapping[str, str]) -> bool:  # fmt: skip
    """Whether a NetworkPolicy peer selects a pod (ipBlock peers are handled apart)."""
    if "ipBlock" in peer:
        return False
    ns_ok = selects(peer.get("namespaceSelector", {}), namespace_labels)
    return ns_ok and selects(peer.get("podSelector", {}), pod_labels)


def egress_to_pod(policy: Doc, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]
                  ) -> list[Doc]:  # fmt: skip
    """The egress rules that allow some port of the pod."""
    return [rule for rule in policy["spec"]["egress"]
            if any(peer_allows(p, namespace_labels, pod_labels) for p in rule["to"])]  # fmt: skip


def test_network_policy_lets_build_pods_resolve_and_fetch_but_not_call_triggerd() -> None:
    docs = render_example()
    policy = one(docs, "NetworkPolicy")
    # it selects the pods of triggerd's Jobs, and only those
    build = requests.instantiate(
        buildconfigs.parse(factories.buildconfig_doc("app", namespace="triggerd")),
        requests.BuildRequest(), number=1, uid="u", created=factories.T0,
    )  # fmt: skip
    options = jobs.JobOptions(namespace="triggerd", image="triggerd:dev")
    job = jobs.render_job(build, buildah.render(build, jobs.plan_context(build, options)), options)
    build_pod = job["spec"]["template"]["metadata"]["labels"]
    server_pod = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], build_pod)
    assert not selects(policy["spec"]["podSelector"], server_pod)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []

    triggerd_ns = {"kubernetes.io/metadata.name": "triggerd"}
    kube_system = {"kubernetes.io/metadata.name": "kube-system"}
    # DNS: an explicit rule for the cluster DNS pods, UDP and TCP 53
    dns_rules = egress_to_pod(policy, kube_system, {"k8s-app": "kube-dns"})
    explicit = [r for r in dns_rules if r.get("ports")]
    assert explicit and sorted((p["protocol"], p["port"]) for p in explicit[0]["ports"]) == [
        ("TCP", 53), ("UDP", 53)
    ]  # fmt: skip
    # git servers and registries running as pods anywhere in the cluster
    assert egress_to_pod(policy, {"kubernetes.io/metadata.name": "git"}, {"app": "gitea"})
    assert egress_to_pod(policy, kube_system, {"app": "registry"})
    # but no rule names the triggerd servers' pods
    assert egress_to_pod(policy, triggerd_ns, server_pod) == []
    # addresses outside the cluster, except the cloud metadata endpoint
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    metadata_ips = [ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")]
    outside = [ipaddress.ip_address("140.82.112.3"), ipaddress.ip_address("2606:50c0::1")]
    for address in outside:
        assert any(in_block(address, b) for b in blocks), address
    for address in metadata_ips:
        assert not any(in_block(address, b) for b in blocks), address


def in_block(address: ipaddress.IPv4Address | ipaddress.IPv6Address, block: Mapping[str, Any]
             ) -> bool:  # fmt: skip
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except") or [])


def docs_patch() -> Doc:
    """The pod-CIDR patch docs/kubernetes.md shows under "The build pods' network"."""
    text = (MANIFESTS.parent / "docs/kubernetes.md").read_text(encoding="utf-8")
    section = text[text.index("## The build pods' network") :]
    start = section.index("```yaml") + len("```yaml")
    block = section[start : section.index("```", start)]
    doc: Doc = yaml.safe_load(textwrap.dedent(block))
    return doc


def test_the_documented_pod_cidr_patch_renders_and_closes_the_pod_range(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "networkpolicy-builds.yaml").write_text(yaml.safe_dump(docs_patch()))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [str(EXAMPLE)], "patches": [{"path": "networkpolicy-builds.yaml"}]}
        )
    )
    docs = kustomize.build(overlay)
    policy = one(docs, "NetworkPolicy")
    validate(policy)
    original = one(render_example(), "NetworkPolicy")
    # the same rules as the base, with the pod range excepted
    assert policy["spec"]["egress"][:2] == original["spec"]["egress"][:2]
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    assert not any(in_block(ipaddress.ip_address("10.244.3.7"), b) for b in blocks)
    assert any(in_block(ipaddress.ip_address("140.82.112.3"), b) for b in blocks)
