"""Static checks of deploy/k8s: rendering, schemas, wiring between manifests and radforge's configs."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import Registry, Resource, schema_contents

from radforge.cli import build_parser
from radforge.config import parse_overrides
from radforge.ingest.config import load_config
from radforge.services.app.settings import load_settings
from radforge.trainer.run_config import load_train_config
from tests.deploy.manifests import (
    CHECKS,
    K8S_VERSION,
    OVERLAYS,
    REPO,
    TARGETS,
    Doc,
    find,
    pod_templates,
    render,
)

DATA = Path(__file__).parent / "data"
CORE_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "PersistentVolumeClaim",
    "Deployment",
    "NetworkPolicy",
}
IMAGE_ROOT = "/opt/radforge/"  # where the Dockerfile copies configs/


def _schema_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load((DATA / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


KUBERAY = _schema_validator("kuberay-v1.schema.yaml")
MONITORING = _schema_validator("monitoring-v1.schema.yaml")


def _pod_template_validator() -> jsonschema.Draft202012Validator:
    """Kubernetes' strict io.k8s.api.core.v1.PodTemplateSpec (unknown fields refused)."""
    folder = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    schema = schema_contents(f"{folder}/podtemplatespec-v1.json", K8S_VERSION)
    defs = schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


POD_TEMPLATE = _pod_template_validator()


def validation_errors(doc: Doc) -> list[str]:
    """Every schema error of one rendered document (Kubernetes core, KubeRay or monitoring)."""
    kind = doc["kind"]
    if kind in CORE_KINDS:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{kind}/{doc['metadata']['name']}: {e.message}"]
        return []
    if doc["apiVersion"] == "ray.io/v1":
        errors = [f"{kind}: {e.message} at {list(e.absolute_path)}" for e in KUBERAY.iter_errors(doc)]
        for where, template in pod_templates(doc):
            errors += [f"{where}: {e.message}" for e in POD_TEMPLATE.iter_errors(template)]
        return errors
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        return [f"{kind}: {e.message} at {list(e.absolute_path)}" for e in MONITORING.iter_errors(doc)]
    return [f"{doc['apiVersion']} {kind}: no schema for this kind (add one to tests/deploy/data)"]


# -- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_overlay_renders_reproducibly(target: str, rendered: dict[str, list[Doc]]) -> None:
    assert render(target) == render(target)
    kinds = sorted(d["kind"] for d in rendered[target])
    if target.endswith("jobs"):
        assert kinds == ["RayJob", "RayJob"]
    else:
        assert kinds.count("RayCluster") == 1 and kinds.count("Deployment") == 1
        assert {d["metadata"].get("namespace") for d in rendered[target] if d["kind"] != "Namespace"} == {
            "radforge"
        }


def test_every_yaml_file_under_deploy_parses() -> None:
    files = [p for p in (REPO / "deploy").rglob("*") if p.suffix in (".yaml", ".yml")]
    assert len(files) >= 15
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


# -- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_validates_against_its_schema(target: str, rendered: dict[str, list[Doc]]) -> None:
    errors = [e for doc in rendered[target] for e in validation_errors(doc)]
    assert errors == []


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
        ("RayCluster", lambda d: d["spec"].update(enableInTreeAutoScaling=True), "enableInTreeAutoScaling"),
        ("RayCluster", lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0"),
        (
            "RayCluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagee="x"),
            "imagee",
        ),
        ("Deployment", lambda d: d["spec"].update(replica=1), "replica"),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(port=8080), "8080"),
    ],
)
def test_schemas_refuse_broken_resources(
    kind: str, mutate: Any, expected: str, rendered: dict[str, list[Doc]]
) -> None:
    doc = copy.deepcopy(next(d for d in rendered["overlays/prod"] if d["kind"] == kind))
    mutate(doc)
    errors = validation_errors(doc)
    assert errors and expected in " ".join(errors)


def test_rayjob_schema_refuses_unknown_submission_mode(rendered: dict[str, list[Doc]]) -> None:
    job = copy.deepcopy(rendered["overlays/prod/jobs"][0])
    job["spec"]["submissionMode"] = "HttpMode"
    assert validation_errors(job)


# -- policies: pinned images, resources, non-root, no inline secrets -------------------------------


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("target", TARGETS)
def test_policy_holds(check: str, target: str, rendered: dict[str, list[Doc]]) -> None:
    assert CHECKS[check](rendered[target]) == []


def _head(docs: list[Doc]) -> Doc:
    return find(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("check", "mutate", "expected"),
    [
        ("images", lambda docs: _head(docs).update(image="rayproject/ray:latest"), ":latest"),
        ("images", lambda docs: _head(docs).update(image="registry.example.com/radforge"), "no tag"),
        ("resources", lambda docs: _head(docs)["resources"].pop("limits"), "limits.cpu"),
        (
            "resources",
            lambda docs: find(docs, "RayCluster")["spec"]["workerGroupSpecs"][1]["template"]["spec"][
                "containers"
            ][0]["resources"]["requests"].pop("nvidia.com/gpu"),
            "nvidia.com/gpu",
        ),
        ("non-root", lambda docs: _head(docs)["securityContext"].update(runAsUser=0), "uid 0"),
        (
            "non-root",
            lambda docs: _head(docs)["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (
            "secrets",
            lambda docs: _head(docs)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            "secrets",
            lambda docs: docs.append(
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {"a": "Yg=="}}
            ),
            "Secret/x",
        ),
        ("ray-isolation", lambda docs: docs.remove(find(docs, "NetworkPolicy")), "no NetworkPolicy"),
        (
            "ray-isolation",
            lambda docs: find(docs, "NetworkPolicy")["spec"]["ingress"][1].pop("ports"),
            "every port",
        ),
        (
            "ray-isolation",
            lambda docs: find(docs, "NetworkPolicy")["spec"]["ingress"].append({}),
            "every source",
        ),
        (
            "ray-isolation",
            lambda docs: find(docs, "NetworkPolicy")["spec"]["ingress"][2]["ports"].append({"port": 6379}),
            "GCS",
        ),
        (
            "ray-isolation",
            lambda docs: find(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].update(
                {"ray.io/node-type": "head"}
            ),
            "no NetworkPolicy",
        ),
        (
            "secrets",
            lambda docs: find(docs, "ConfigMap", "radforge-control-plane")["data"].update(
                {"settings.yaml": "database_url: postgresql://radforge:hunter2@db:5432/radforge"}
            ),
            "credential",
        ),
    ],
)
def test_policy_checks_flag_violations(
    check: str, mutate: Any, expected: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = copy.deepcopy(rendered["overlays/prod"])
    assert CHECKS[check](docs) == []
    mutate(docs)
    problems = CHECKS[check](docs)
    assert problems and expected in " ".join(problems)


# -- the Ray cluster ------------------------------------------------------------------------------


def _group(docs: list[Doc], name: str) -> Doc:
    groups = find(docs, "RayCluster")["spec"]["workerGroupSpecs"]
    return next(g for g in groups if g["groupName"] == name)


def _config_map_file(docs: list[Doc], name: str, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key
    path.write_text(find(docs, "ConfigMap", name)["data"][key])
    return path


def _train_config(docs: list[Doc], tmp_path: Path) -> Any:
    """The RayJob's train config, resolved by the trainer's own loader (recipe from the image path)."""
    text = find(docs, "ConfigMap", "radforge-jobs")["data"]["train.yaml"]
    tree = yaml.safe_load(text)
    assert tree["recipe_file"].startswith(IMAGE_ROOT), "recipe_file must name a file in the image"
    tree["recipe_file"] = str(REPO / tree["recipe_file"].removeprefix(IMAGE_ROOT))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_train_config(path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_schedules_no_work_and_autoscaler_is_on(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    cluster = find(rendered[f"overlays/{overlay}"], "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"])
    ingest = _group(rendered[f"overlays/{overlay}"], "cpu-ingest")
    assert ingest["minReplicas"] == 0 < ingest["maxReplicas"]
    assert "nvidia.com/gpu" not in str(ingest["template"])


def _gpu_range(docs: list[Doc]) -> tuple[int, int]:
    group = _group(docs, "gpu-train")
    gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    # one Ray Train worker per GPU, each pod advertising one Ray CPU per worker it can hold
    assert int(group["rayStartParams"]["num-cpus"]) == gpus
    return group["minReplicas"] * gpus, group["maxReplicas"] * gpus


def test_gpu_pool_replica_range_matches_the_train_workers_range(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    docs = rendered["overlays/prod"]
    cfg = _train_config(docs, tmp_path)
    assert cfg.device == "cuda"
    workers = cfg.workers if isinstance(cfg.workers, tuple) else (cfg.workers, cfg.workers)
    assert _gpu_range(docs) == workers
    group = _group(docs, "gpu-train")
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # a mismatch is caught
    broken = copy.deepcopy(docs)
    _group(broken, "gpu-train")["maxReplicas"] += 2
    assert _gpu_range(broken) != workers


def test_gpu_pool_lands_on_gpu_nodes_with_cpu_and_cache_for_the_loader(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    docs = rendered["overlays/prod"]
    cfg = _train_config(docs, tmp_path)
    pod = _group(docs, "gpu-train")["template"]["spec"]
    assert pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    worker = pod["containers"][0]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    cpus = float(worker["resources"]["requests"]["cpu"])
    # per GPU: the loader's processes + the training process + one for streaming's downloads
    assert cpus / gpus >= cfg.data.loader_workers + 2
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    cache_volume = next(
        v
        for path, v in mounts.items()
        if cfg.data.cache_dir == path or cfg.data.cache_dir.startswith(path + "/")
    )
    size_limit = next(v for v in pod["volumes"] if v["name"] == cache_volume)["emptyDir"]["sizeLimit"]
    assert _bytes(cfg.data.cache_limit) < _bytes(size_limit)
    assert "/dev/shm" in mounts


def _bytes(quantity: str) -> int:
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
    }
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def test_dev_trains_on_the_cpu_pool(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    docs = rendered["overlays/dev"]
    assert [g["groupName"] for g in find(docs, "RayCluster")["spec"]["workerGroupSpecs"]] == ["cpu-ingest"]
    cfg = _train_config(docs, tmp_path)
    assert cfg.device == "cpu"
    top = cfg.workers[1] if isinstance(cfg.workers, tuple) else cfg.workers
    group = _group(docs, "cpu-ingest")
    cpus = float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert group["maxReplicas"] * cpus >= top  # one Ray CPU per Ray Train worker


# -- jobs, configs and the control plane's wiring -------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjobs_run_radforge_on_this_cluster_with_mounted_configs(
    overlay: str, rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    docs, jobs = rendered[f"overlays/{overlay}"], rendered[f"overlays/{overlay}/jobs"]
    cluster = find(docs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    jobs_volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == "radforge-jobs")
    config_dir = mounts[jobs_volume["name"]]
    config_keys = set(find(docs, "ConfigMap", "radforge-jobs")["data"])
    parser = build_parser()
    for job in jobs:
        spec = job["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes")
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "radforge"
        args = parser.parse_args(argv[1:])  # the real command line of radforge
        assert argv[1] in ("ingest", "train")
        config = Path(args.config)
        assert str(config.parent) == config_dir and config.name in config_keys
    ingest_args = parser.parse_args(
        shlex.split(find(jobs, "RayJob", "radforge-ingest")["spec"]["entrypoint"])[1:]
    )
    assert "ARCHIVE" not in ingest_args.source
    # the ingest config is valid for radforge ingest and connects to the cluster
    ingest_cfg = load_config(
        str(_config_map_file(docs, "radforge-jobs", "ingest.yaml", tmp_path)),
        overrides=parse_overrides(ingest_args.set or []),
    )
    assert ingest_cfg.ray.address == "auto"
    assert _train_config(docs, tmp_path).ray_address == "auto"
    # drivers salt series keys: the salt reaches the head from the Secret
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["RADFORGE_SALT"]["valueFrom"]["secretKeyRef"]["name"] == "radforge-secrets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_control_plane_submits_to_the_head_dashboard_with_valid_settings(
    overlay: str, rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    docs = rendered[f"overlays/{overlay}"]
    deployment = find(docs, "Deployment", "radforge-control-plane")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # the Job Submission API of the head Service KubeRay creates (<cluster>-head-svc:<dashboard>)
    cluster = find(docs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    dashboard = next(p["containerPort"] for p in head["ports"] if p["name"] == "dashboard")
    assert env["RADFORGE_RAY_ADDRESS"] == f"http://{cluster['metadata']['name']}-head-svc:{dashboard}"
    # the settings file and environment load through the service's own settings (extra keys refused)
    args = container["args"]
    assert args[:2] == ["radforge", "serve"]
    settings_path = Path(args[args.index("--config") + 1])
    volume = next(
        m["name"] for m in container["volumeMounts"] if Path(m["mountPath"]) == settings_path.parent
    )
    config_map = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == volume)
    local = _config_map_file(docs, config_map, settings_path.name, tmp_path)
    token_file = Path(env["RADFORGE_API_TOKEN_FILE"])
    settings = load_settings(
        str(local), environ={k: v for k, v in env.items() if k.startswith("RADFORGE_") and v is not None}
    )
    assert settings.ray_job_submission and settings.ray_address == env["RADFORGE_RAY_ADDRESS"]
    assert settings.host == "0.0.0.0" and settings.api_token_file == token_file
    assert settings.jobs_uri and settings.jobs_uri.startswith("s3://")
    # the token file is the mounted Secret; the state folder a persistent volume
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(token_file.parent)]]["secret"]["secretName"] == "radforge-secrets"
    assert "persistentVolumeClaim" in volumes[mounts[env["RADFORGE_STATE_DIR"]]]
    if settings.database_url and settings.database_url.startswith("postgres"):
        pg = next(e for e in container["env"] if e["name"] == "PGPASSWORD")
        assert pg["valueFrom"]["secretKeyRef"]["name"]
    service = find(docs, "Service", "radforge-control-plane")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


# -- network isolation of the Ray cluster --------------------------------------------------------


def _addon_namespaces() -> dict[str, str]:
    """Helm chart -> namespace, as deploy/scripts/install-addons.sh installs them."""
    script = (REPO / "deploy/scripts/install-addons.sh").read_text()
    out = {}
    for command in script.replace("\\\n", " ").splitlines():
        words = shlex.split(command, comments=True) if "helm upgrade" in command else []
        if "--install" in words and "--namespace" in words:
            chart = words[words.index("--install") + 2]  # helm upgrade --install RELEASE CHART
            out[chart] = words[words.index("--namespace") + 1]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_admit_the_operator_prometheus_and_this_namespace(
    overlay: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[f"overlays/{overlay}"]
    cluster = find(docs, "RayCluster")
    policy = find(docs, "NetworkPolicy", "radforge-ray")
    namespace = cluster["metadata"]["namespace"]
    assert policy["metadata"]["namespace"] == namespace
    # the same label KubeRay puts on every pod of the cluster, and the PodMonitors select on
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}}
    rules = policy["spec"]["ingress"]
    # Ray's pods talk to each other on many ports, and the control plane (same namespace) submits
    assert any(rule.get("from") == [{"podSelector": {}}] and "ports" not in rule for rule in rules)
    assert find(docs, "Deployment", "radforge-control-plane")["metadata"]["namespace"] == namespace

    def opened_to(ns: str) -> set[str]:
        return {
            str(port["port"])
            for rule in rules
            for peer in rule.get("from", [])
            if peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": ns}
            for port in rule.get("ports", [])
        }

    installed = _addon_namespaces()
    operator, prometheus = "kuberay/kuberay-operator", "prometheus-community/kube-prometheus-stack"
    assert set(installed) == {operator, prometheus}
    head_ports = {p["name"] for p in _head(docs)["ports"]}
    # the operator submits RayJobs and reads their status through the head's dashboard port
    assert opened_to(installed[operator]) == {"dashboard"} <= head_ports
    # Prometheus scrapes exactly the ports the Ray PodMonitors name, which the pods declare
    scraped: set[str] = set()
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        if monitor["spec"]["selector"]["matchLabels"].get("ray.io/cluster") == cluster["metadata"]["name"]:
            scraped |= {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert scraped and opened_to(installed[prometheus]) == scraped
    worker_ports = {
        p["name"]
        for group in cluster["spec"]["workerGroupSpecs"]
        for c in group["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert scraped <= head_ports and "metrics" in worker_ports
