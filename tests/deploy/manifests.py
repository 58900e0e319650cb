"""Rendering the Kustomize tree and the static checks every rendered manifest must pass.

Each check is a pure function from rendered documents to a list of problems (empty: fine), so
the tests can run it on the real overlays and on a deliberately broken copy.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
# kustomization roots that `kubectl apply -k` is pointed at (docs/deploy.md)
TARGETS = ("overlays/dev", "overlays/prod", "overlays/dev/jobs", "overlays/prod/jobs")
K8S_VERSION = "1.32.0"  # Kubernetes API the core schemas are taken from (kubernetes-validate)

Doc = dict[str, Any]


def render(target: str) -> str:
    """``kubectl kustomize`` of one target under deploy/k8s (kustomize v5 built into kubectl)."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize {target}: {out.stderr}"
    return out.stdout


def documents(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, pod template) of every pod a resource creates, CRDs included."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield f"{kind}/{doc['metadata']['name']}", spec["template"]
    elif kind == "RayCluster":
        yield "RayCluster head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"RayCluster worker group {group['groupName']}", group["template"]
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "RayJob submitter", spec["submitterPodTemplate"]
        if "rayClusterSpec" in spec:
            yield from pod_templates({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})


def containers(template: Doc) -> Iterator[Doc]:
    spec = template.get("spec") or {}
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def all_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        for where, template in pod_templates(doc):
            for c in containers(template):
                yield f"{where} container {c['name']}", c
        if doc["kind"] == "RayCluster" and "autoscalerOptions" in doc["spec"]:
            # KubeRay builds the autoscaler sidecar from these options
            yield "RayCluster autoscaler", {"name": "autoscaler", **doc["spec"]["autoscalerOptions"]}


# -- checks -----------------------------------------------------------------------------------

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_TAG = re.compile(r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


def image_problems(docs: list[Doc]) -> list[str]:
    """Every image pinned: a digest, or a tag that is not ``latest``."""
    problems = []
    for where, c in all_containers(docs):
        image = c.get("image")
        if image is None:
            if where != "RayCluster autoscaler":  # absent: KubeRay reuses the head's image
                problems.append(f"{where}: no image")
            continue
        if _DIGEST.search(image):
            continue
        tag = _TAG.search(image.rsplit("/", 1)[-1])
        if tag is None:
            problems.append(f"{where}: image {image} has no tag or digest")
        elif tag["tag"] == "latest":
            problems.append(f"{where}: image {image} uses :latest")
    return problems


def resource_problems(docs: list[Doc]) -> list[str]:
    """CPU and memory requests and limits on every container; GPUs requested as much as limited."""
    problems = []
    for where, c in all_containers(docs):
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for key in ("cpu", "memory"):
                if key not in (res.get(section) or {}):
                    problems.append(f"{where}: no {section}.{key}")
        gpu_req = (res.get("requests") or {}).get("nvidia.com/gpu")
        gpu_lim = (res.get("limits") or {}).get("nvidia.com/gpu")
        if gpu_req != gpu_lim:
            problems.append(f"{where}: nvidia.com/gpu requests {gpu_req} != limits {gpu_lim}")
    return problems


def nonroot_problems(docs: list[Doc]) -> list[str]:
    """Pod Security "restricted": non-root, no privilege escalation, no capabilities, seccomp."""
    problems = []
    for doc in docs:
        for where, template in pod_templates(doc):
            pod = (template.get("spec") or {}).get("securityContext") or {}
            if pod.get("runAsUser") == 0:
                problems.append(f"{where}: runAsUser 0")
            if (pod.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: no seccompProfile RuntimeDefault")
            for c in containers(template):
                sc = c.get("securityContext") or {}
                if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
                    problems.append(f"{where} container {c['name']}: runAsNonRoot is not true")
                if sc.get("runAsUser", pod.get("runAsUser")) == 0:
                    problems.append(f"{where} container {c['name']}: runs as uid 0")
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where} container {c['name']}: allowPrivilegeEscalation not false")
                if sc.get("privileged"):
                    problems.append(f"{where} container {c['name']}: privileged")
                if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                    problems.append(f"{where} container {c['name']}: capabilities not dropped (ALL)")
    return problems


_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|SALT|ACCESS_KEY|CREDENTIAL|PRIVATE)", re.I)
_SECRET_TEXT = re.compile(r"(://[^/\s:@]+:[^/\s@]+@|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY)")


def secret_problems(docs: list[Doc]) -> list[str]:
    """No secret value inline: no Secret objects, secret-looking env values only by reference."""
    problems = []
    for doc in docs:
        if doc["kind"] == "Secret":
            problems.append(f"Secret/{doc['metadata']['name']} is defined inline (create it apart)")
        if doc["kind"] == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if _SECRET_NAME.search(key):
                    problems.append(f"ConfigMap/{doc['metadata']['name']}: key {key} looks secret")
                if _SECRET_TEXT.search(str(value)):
                    problems.append(f"ConfigMap/{doc['metadata']['name']}: {key} holds a credential")
        if doc["kind"] == "RayJob" and _SECRET_TEXT.search(doc["spec"].get("entrypoint", "")):
            problems.append(f"RayJob/{doc['metadata']['name']}: credential in the entrypoint")
    for where, c in all_containers(docs):
        for env in c.get("env", []):
            value = env.get("value")
            if value is None:
                continue
            if _SECRET_NAME.search(env["name"]) and not env["name"].endswith("_FILE"):
                problems.append(f"{where}: env {env['name']} has an inline value")
            if _SECRET_TEXT.search(value):
                problems.append(f"{where}: env {env['name']} holds a credential")
    return problems


def _selects_whole_cluster(policy: Doc, cluster: str) -> bool:
    selector = policy["spec"].get("podSelector") or {}
    labels = selector.get("matchLabels") or {}
    return not selector.get("matchExpressions") and labels.items() <= {"ray.io/cluster": cluster}.items()


def ray_isolation_problems(docs: list[Doc]) -> list[str]:
    """Ray's unauthenticated endpoints (Job Submission API, GCS, client) closed to other namespaces.

    Every RayCluster's pods are selected by an Ingress NetworkPolicy of its namespace, and each of
    its rules either admits only this namespace's pods or names the ports it opens to others:
    never everything, and never the GCS or Ray client ports.
    """
    problems = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for cluster in (d for d in docs if d["kind"] == "RayCluster"):
        name, namespace = cluster["metadata"]["name"], cluster["metadata"].get("namespace")
        covering = [
            p
            for p in policies
            if p["metadata"].get("namespace") == namespace
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and _selects_whole_cluster(p, name)
        ]
        if not covering:
            problems.append(f"RayCluster/{name}: no NetworkPolicy closes its pods to other namespaces")
        for policy in covering:
            for i, rule in enumerate(policy["spec"].get("ingress") or []):
                where = f"NetworkPolicy/{policy['metadata']['name']} ingress[{i}]"
                peers = rule.get("from")
                if not peers:
                    problems.append(f"{where}: admits every source")
                    continue
                outside = [p for p in peers if "namespaceSelector" in p or "ipBlock" in p]
                if not outside:
                    continue  # this namespace's pods only
                ports = {str(p.get("port")) for p in rule.get("ports") or []}
                if not ports:
                    problems.append(f"{where}: opens every port to other namespaces")
                if ports & {"gcs-server", "6379", "client", "10001"}:
                    problems.append(f"{where}: opens the GCS or Ray client port to other namespaces")
    return problems


CHECKS = {
    "images": image_problems,
    "resources": resource_problems,
    "non-root": nonroot_problems,
    "secrets": secret_problems,
    "ray-isolation": ray_isolation_problems,
}
