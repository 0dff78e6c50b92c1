"""deploy/kubernetes validated offline: every resource against the Kubernetes
OpenAPI (JSON) schemas that the `kubernetes-validate` package ships, in strict mode
(unknown fields rejected), plus the cross-references a schema cannot see."""

from __future__ import annotations

import ast
import copy
import importlib.util
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.config import GatewayConfig, read_config_file

# The oldest Kubernetes minor still commonly run, and the newest the package knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def _kustomization(deploy_dir: Path) -> dict:
    return yaml.safe_load((deploy_dir / "kubernetes" / "kustomization.yaml").read_text())


def _resources(deploy_dir: Path) -> list[dict]:
    docs = []
    for name in _kustomization(deploy_dir)["resources"]:
        docs += [d for d in yaml.safe_load_all((deploy_dir / "kubernetes" / name).read_text()) if d]
    return docs


def _find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def test_kustomization_lists_every_manifest(deploy_dir):
    listed = set(_kustomization(deploy_dir)["resources"])
    present = {p.name for p in (deploy_dir / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_validates_strictly(deploy_dir, version):
    docs = _resources(deploy_dir)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest(deploy_dir):
    """The schemas are real: a misspelt field and a wrong type are both caught."""
    gateway = _find(_resources(deploy_dir), "Deployment", "lengthwise-gateway")
    misspelt = copy.deepcopy(gateway)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def _selects(service: dict, pod_labels: dict) -> bool:
    return all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _named_port(container: dict, name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_gateway_deployment_config_and_probes(deploy_dir):
    docs = _resources(deploy_dir)
    deployment = _find(docs, "Deployment", "lengthwise-gateway")
    container = _container(deployment)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # The mounted settings file is one the gateway accepts (pydantic, extra="forbid").
    configmap = _find(docs, "ConfigMap", "lengthwise-gateway-config")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert Path(config_arg).parent == Path(mount["mountPath"])
    config_file = Path(config_arg).name
    cfg = GatewayConfig.model_validate(yaml.safe_load(configmap["data"][config_file]))
    port = _named_port(container, "http")
    assert cfg.port == port and cfg.host == "0.0.0.0"

    # Discovery: the DNS name is the workers' headless Service.
    assert cfg.worker_dns_name == "http://lengthwise-vllm-workers:8000"
    workers = _find(docs, "Service", "lengthwise-vllm-workers")
    assert workers["spec"]["clusterIP"] == "None"

    # Env settings on the container name real settings.
    for env in container.get("env", []):
        field = env["name"].removeprefix("LENGTHWISE_").lower()
        assert env["name"].startswith("LENGTHWISE_") and field in GatewayConfig.model_fields

    # Readiness on /health; the grace period outlives the gateway's own drain.
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/health" and readiness["port"] in ("http", port)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.shutdown_grace_s
    assert container["resources"]["requests"] and container["resources"]["limits"]

    # The Service and the PDB select these pods.
    assert _selects(_find(docs, "Service", "lengthwise-gateway"), pod_labels)
    assert _selects(_find(docs, "Service", "lengthwise-gateway-pods"), pod_labels)
    pdb = _find(docs, "PodDisruptionBudget", "lengthwise-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def _class_defined(spec: str) -> bool:
    """`module:Class` names a class defined in that module's source (without importing
    vLLM, which the GPU processor module needs)."""
    module, _, cls = spec.partition(":")
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        return False
    tree = ast.parse(Path(found.origin).read_text())
    return any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body)


def test_worker_deployment_gpu_priority_edt_and_discovery(deploy_dir):
    docs = _resources(deploy_dir)
    deployment = _find(docs, "Deployment", "lengthwise-vllm-worker")
    container = _container(deployment)
    args = container["args"]
    assert args[args.index("--scheduling-policy") + 1] == "priority"
    processor = args[args.index("--logits-processors") + 1]
    assert _class_defined(processor), processor
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    port = _named_port(container, "http")
    assert args[args.index("--port") + 1] == str(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"

    pod = deployment["spec"]["template"]
    service = _find(docs, "Service", "lengthwise-vllm-workers")
    assert _selects(service, pod["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == port
    # Scraping by annotation points at the same port and path.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    # The EDT processor serves its histogram on the named port the Service exposes.
    edt_port = _named_port(container, "edt-metrics")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LENGTHWISE_EDT_METRICS_PORT"] == str(edt_port)
    assert {"name": "edt-metrics", "port": edt_port, "targetPort": "edt-metrics",
            "protocol": "TCP"} in service["spec"]["ports"]


def test_prometheus_kubernetes_config_targets_the_headless_services(deploy_dir):
    namespace = _kustomization(deploy_dir)["namespace"]
    docs = _resources(deploy_dir)
    prom = yaml.safe_load((deploy_dir / "prometheus" / "prometheus-kubernetes.yml").read_text())
    for job in prom["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        service_name, ns, *_ = sd["names"][0].split(".")
        assert ns == namespace
        service = _find(docs, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None"
        assert sd["port"] in {p["port"] for p in service["spec"]["ports"]}, job["job_name"]
    jobs = {job["job_name"] for job in prom["scrape_configs"]}
    assert jobs == {"lengthwise-gateway", "vllm-worker", "lengthwise-edt"}


def test_dashboards_configmap_is_labelled_for_the_grafana_sidecar(deploy_dir):
    configmap = _find(_resources(deploy_dir), "ConfigMap", "lengthwise-grafana-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {p.name for p in (deploy_dir / "grafana" / "dashboards").glob("*.json")}
    assert set(configmap["data"]) == shipped


def test_example_config_file_reader_accepts_the_configmap(deploy_dir, tmp_path):
    """The gateway's own file reader (not just the model) takes the mounted file."""
    configmap = _find(_resources(deploy_dir), "ConfigMap", "lengthwise-gateway-config")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    GatewayConfig.model_validate(read_config_file(path))
