"""A small kustomize for the tests: renders the kustomizations under manifests/ the way
``kustomize build`` (``kubectl apply -k``) does, for exactly the features they use.

Neither kustomize nor kubectl can be installed on these machines, so the tests render with
this instead. Covered, following kustomize's documented behaviour and its order of work
(resources, then components, then generators, then transformers: patches, namespace,
labels, images):

* ``resources`` (files with one or more documents, and directories holding a
  kustomization), ``components`` (``kind: Component``: its resources join, its generators
  and patches act on everything accumulated so far);
* ``namespace`` on namespaced objects and on ServiceAccount subjects of RoleBindings that
  name no namespace or ``default``;
* ``labels`` with ``pairs`` (metadata labels only: ``includeSelectors`` and
  ``includeTemplates`` false);
* ``configMapGenerator`` / ``secretGenerator`` with ``files``, ``envs`` and ``literals``:
  the name-hash suffix computed as kustomize's hasher does (sha256 of the JSON of kind,
  name, data — and type for Secrets — first ten hex digits with 0 1 3 a e mapped to
  g h k m t), and references to the generated names rewritten in pod templates (configMap
  and secret volumes, projected sources, envFrom, env valueFrom, imagePullSecrets);
* ``patches`` given by ``path``, as strategic merge patches matched by kind and name: maps
  merge, ``null`` deletes, pod-template lists merge by their Kubernetes merge keys
  (containers, volumes and env by name, volumeMounts by mountPath, ports by containerPort),
  every other list is replaced;
* ``images`` (newName, newTag, digest) on containers and init containers.

Not covered: any other kustomization field, patch targets and JSON 6902 patches,
``$patch`` directives, generator options and behaviours, env-file lines that read the
local environment, name prefixes/suffixes, replacements, the output order of
``kustomize build``. Anything outside the covered set raises :class:`Unsupported`, so a
manifest change that needs more fails the tests instead of being rendered wrongly. The
hash was checked against kustomize's documented outputs (see the tests); a real
``kubectl kustomize`` run before a release is still recommended.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KUSTOMIZATION_FIELDS = frozenset(
    {
        "apiVersion", "kind", "namespace", "labels", "resources", "components",
        "configMapGenerator", "secretGenerator", "patches", "images",
    }
)  # fmt: skip
GENERATOR_FIELDS = frozenset({"name", "files", "envs", "literals", "type"})
CLUSTER_SCOPED = frozenset(
    {
        "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
        "PersistentVolume", "StorageClass", "PriorityClass", "APIService",
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    }
)  # fmt: skip
#: strategic-merge keys of the pod-template lists the patches touch
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


@dataclass(slots=True)
class Resource:
    doc: Doc
    #: made by a generator: its name gets the content hash when the build ends
    generated: bool = False

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.doc["metadata"].get("namespace") or "")


def build(directory: Path, kustomization: Mapping[str, Any] | None = None) -> list[Doc]:
    """``kustomize build directory``; ``kustomization`` replaces the directory's file."""
    resources = _build(directory, kustomization, expected="Kustomization", inherited=[])
    _check_unique(resources)
    return _finish(resources)


def load_kustomization(directory: Path) -> Doc:
    doc: Doc = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return doc


# One kustomization ----------------------------------------------------------------------------


def _build(
    directory: Path,
    kustomization: Mapping[str, Any] | None,
    *,
    expected: str,
    inherited: list[Resource],
) -> list[Resource]:
    k = dict(kustomization) if kustomization is not None else load_kustomization(directory)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields {sorted(unknown)}")
    if k.get("kind", "Kustomization") != expected:
        raise Unsupported(f"{directory}: a {k.get('kind')} where a {expected} was expected")
    accumulated = list(inherited)
    for entry in k.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            accumulated += _build(path, None, expected="Kustomization", inherited=[])
        else:
            accumulated += [Resource(d) for d in _documents(path)]
    for entry in k.get("components") or []:
        accumulated = _build(directory / entry, None, expected="Component", inherited=accumulated)
    for entry in k.get("configMapGenerator") or []:
        accumulated.append(Resource(_generate(directory, entry, secret=False), generated=True))
    for entry in k.get("secretGenerator") or []:
        accumulated.append(Resource(_generate(directory, entry, secret=True), generated=True))
    for entry in k.get("patches") or []:
        _patch(accumulated, directory, entry)
    if k.get("namespace"):
        _set_namespace(accumulated, str(k["namespace"]))
    for entry in k.get("labels") or []:
        _add_labels(accumulated, entry)
    for entry in k.get("images") or []:
        _set_images(accumulated, entry)
    return accumulated


def _documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _check_unique(resources: list[Resource]) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for r in resources:
        key = (str(r.doc.get("apiVersion")), r.kind, r.namespace, r.name)
        if key in seen:
            raise Unsupported(f"duplicate resource {key} (kustomize refuses it)")
        seen.add(key)


# Generators -----------------------------------------------------------------------------------


def _generate(directory: Path, entry: Mapping[str, Any], *, secret: bool) -> Doc:
    unknown = set(entry) - GENERATOR_FIELDS
    if unknown:
        raise Unsupported(f"generator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for item in entry.get("files") or []:
        key, sep, rel = str(item).partition("=")
        path = directory / (rel if sep else key)
        data[key if sep else path.name] = path.read_text(encoding="utf-8")
    for item in entry.get("envs") or []:
        for line in (directory / item).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise Unsupported(f"{item}: {key!r} would be read from the environment")
            data[key] = value
    for item in entry.get("literals") or []:
        key, _, value = str(item).partition("=")
        data[key] = value
    doc: Doc = {"apiVersion": "v1", "kind": "Secret" if secret else "ConfigMap",
                "metadata": {"name": entry["name"]}}  # fmt: skip
    if secret:
        doc["type"] = entry.get("type", "Opaque")
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        doc["data"] = data
    return doc


def name_hash(doc: Mapping[str, Any]) -> str:
    """The suffix kustomize appends to a generated ConfigMap's or Secret's name."""
    encoded: Doc = {"kind": doc["kind"], "name": doc["metadata"]["name"],
                    "data": doc.get("data") or ""}  # fmt: skip
    if doc["kind"] == "Secret":
        encoded["type"] = doc.get("type", "")
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these for HTML safety; kustomize hashes what Go writes.
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


# Transformers ---------------------------------------------------------------------------------


def _patch(resources: list[Resource], directory: Path, entry: Mapping[str, Any]) -> None:
    if set(entry) != {"path"}:
        raise Unsupported(f"patch fields {sorted(entry)} (only `path` is implemented)")
    for patch in _documents(directory / entry["path"]):
        if not isinstance(patch, dict) or "kind" not in patch:
            raise Unsupported(f"{entry['path']}: not a strategic merge patch")
        meta = patch.get("metadata") or {}
        targets = [
            r
            for r in resources
            if r.kind == patch["kind"]
            and r.name == meta.get("name")
            and (not meta.get("namespace") or not r.namespace or r.namespace == meta["namespace"])
        ]
        if len(targets) != 1:
            raise Unsupported(f"{entry['path']}: {len(targets)} targets for the patch")
        target = targets[0]
        target.doc = _merge(target.doc, patch, keyed=target.kind in WORKLOADS)


def _merge(base: Any, patch: Any, *, keyed: bool, field: str = "") -> Any:
    if isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise Unsupported(f"patch directives {sorted(patch)}")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value, keyed=keyed, field=key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and keyed and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next(
                (i for i, old in enumerate(merged_list) if old.get(key) == item.get(key)), None
            )
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = _merge(merged_list[index], item, keyed=keyed)
        return merged_list
    return copy.deepcopy(patch)


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for r in resources:
        if r.kind == "Namespace" and r.name != namespace:
            raise Unsupported("renaming a Namespace object")
        if r.kind not in CLUSTER_SCOPED:
            r.doc["metadata"]["namespace"] = namespace
        if r.kind in ("RoleBinding", "ClusterRoleBinding"):
            for subject in r.doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and subject.get("namespace") in (
                    None, "", "default",
                ):  # fmt: skip
                    subject["namespace"] = namespace


def _add_labels(resources: list[Resource], entry: Mapping[str, Any]) -> None:
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise Unsupported(f"labels fields {sorted(entry)}")
    if entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise Unsupported("labels with includeSelectors/includeTemplates")
    for r in resources:
        labels = r.doc["metadata"].setdefault("labels", {})
        labels.update(entry["pairs"])


def _pod_specs(doc: Doc) -> list[Doc]:
    if doc["kind"] in WORKLOADS:
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    return []


def _set_images(resources: list[Resource], entry: Mapping[str, Any]) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"images fields {sorted(entry)}")
    for r in resources:
        for spec in _pod_specs(r.doc):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                name, tag = _split_image(container["image"])
                if name != entry["name"]:
                    continue
                new = str(entry.get("newName") or name)
                if entry.get("digest"):
                    container["image"] = f"{new}@{entry['digest']}"
                elif entry.get("newTag"):
                    container["image"] = f"{new}:{entry['newTag']}"
                else:
                    container["image"] = new + tag


def _split_image(image: str) -> tuple[str, str]:
    """(name, ":tag" or "@digest" or "")."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


# The end of the build: hash suffixes and the references to them ------------------------------


def _finish(resources: list[Resource]) -> list[Doc]:
    renamed: dict[tuple[str, str, str], str] = {}
    for r in resources:
        if r.generated:
            new_name = f"{r.name}-{name_hash(r.doc)}"
            renamed[(r.kind, r.namespace, r.name)] = new_name
            r.doc["metadata"]["name"] = new_name
    for r in resources:
        for spec in _pod_specs(r.doc):
            _rewrite_references(spec, r.namespace, renamed)
    return [r.doc for r in resources]


def _rewrite_references(
    spec: Doc, namespace: str, renamed: Mapping[tuple[str, str, str], str]
) -> None:
    def fix(holder: Any, key: str, kind: str) -> None:
        if isinstance(holder, dict) and key in holder:
            holder[key] = renamed.get((kind, namespace, holder[key]), holder[key])

    for volume in spec.get("volumes", []):
        fix(volume.get("configMap"), "name", "ConfigMap")
        fix(volume.get("secret"), "secretName", "Secret")
        for source in (volume.get("projected") or {}).get("sources", []):
            fix(source.get("configMap"), "name", "ConfigMap")
            fix(source.get("secret"), "name", "Secret")
    for pull in spec.get("imagePullSecrets", []):
        fix(pull, "name", "Secret")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            fix(source.get("configMapRef"), "name", "ConfigMap")
            fix(source.get("secretRef"), "name", "Secret")
        for var in container.get("env", []):
            value_from = var.get("valueFrom") or {}
            fix(value_from.get("configMapKeyRef"), "name", "ConfigMap")
            fix(value_from.get("secretKeyRef"), "name", "Secret")
