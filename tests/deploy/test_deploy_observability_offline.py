"""Offline checks of deploy/prometheus and deploy/grafana: promtool accepts the
configuration and rules, the alert unit tests pass, and the committed dashboards
and ConfigMaps are exactly what the generator makes from the gateway's metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from lengthwise.worker.edt.temperature_metrics import (
    AppliedTemperatureHistogram,
    _HistogramCollector,
)
from server.metrics import GatewayMetrics


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, check=False, capture_output=True, text=True,
                          timeout=120)


def test_promtool_accepts_both_scrape_configs(promtool, deploy_dir):
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        result = _run([promtool, "check", "config", name], cwd=deploy_dir / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr
        # rule_files: rules/*.yml must actually match the rule files.
        assert "2 rule files found" in result.stdout + result.stderr, result.stdout


def test_promtool_accepts_rules(promtool, deploy_dir):
    rules = sorted((deploy_dir / "prometheus" / "rules").glob("*.yml"))
    assert rules
    result = _run([promtool, "check", "rules", *map(str, rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool, deploy_dir):
    tests = deploy_dir / "prometheus" / "tests" / "alerts-test.yml"
    result = _run([promtool, "test", "rules", tests.name], cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_required_alerts_exist(deploy_dir):
    alerts = {
        rule["alert"]
        for path in (deploy_dir / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert {
        "LengthwiseGatewayDown",
        "LengthwiseNoHealthyWorker",
        "LengthwiseQueueWaitP99High",
        "LengthwisePredictionDrift",
        "LengthwiseKVCacheNearFull",
        "LengthwiseHighErrorRate",
    } <= alerts


def test_every_paging_alert_has_a_unit_test(deploy_dir):
    tested = set(re.findall(r"alertname: (\w+)",
                            (deploy_dir / "prometheus" / "tests" / "alerts-test.yml").read_text()))
    paging = {
        rule["alert"]
        for path in (deploy_dir / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("labels", {}).get("severity") == "page"
    }
    assert paging - {"LengthwiseGatewayAbsent"} <= tested


def test_committed_files_equal_the_generated_ones(generator):
    stale = [
        str(path) for path, text in generator.generated_files().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"run `python deploy/grafana/generate.py`; out of date: {stale}"


def test_generator_check_mode_reports_a_stale_file(generator, tmp_path, monkeypatch):
    # The --check path must be able to fail: point it at an empty output folder.
    monkeypatch.setattr(generator, "DASHBOARD_DIR", tmp_path)
    assert generator.main(["--check"]) == 1


def _dashboards(deploy_dir: Path) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((deploy_dir / "grafana" / "dashboards").glob("*.json"))]


def test_dashboards_have_the_required_panels(deploy_dir):
    titles = {d["uid"]: {p["title"] for p in d["panels"]} for d in _dashboards(deploy_dir)}
    assert {"lengthwise-gateway", "lengthwise-prediction", "lengthwise-worker-memory",
            "lengthwise-edt"} <= set(titles)
    overview = titles["lengthwise-gateway"]
    for needed in ("Request rate by status", "End-to-end latency", "Time to first token",
                   "Time to first token inside vLLM (all requests)",
                   "Time per output token", "Queue depth by policy", "Queue wait by policy",
                   "In flight per worker", "Worker health", "Tokens per second"):
        assert needed in overview
    assert "Coverage of p90" in titles["lengthwise-prediction"]
    assert "Resident memory by process" in titles["lengthwise-worker-memory"]
    assert "Applied temperature distribution" in titles["lengthwise-edt"]


def _panel(deploy_dir: Path, uid: str, title: str) -> dict:
    (dashboard,) = [d for d in _dashboards(deploy_dir) if d["uid"] == uid]
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title and p["type"] != "row"]
    return panel


def test_panels_split_by_policy_and_process(deploy_dir):
    def exprs(uid: str, title: str) -> list[str]:
        return [t["expr"] for t in _panel(deploy_dir, uid, title)["targets"]]

    assert all("policy" in e for e in exprs("lengthwise-gateway", "Queue depth by policy"))
    assert all("policy" in e for e in exprs("lengthwise-gateway", "Queue wait by policy"))
    # Coverage: the ratio, and the 0.9 target drawn beside it.
    coverage = exprs("lengthwise-prediction", "Coverage of p90")
    assert "vector(0.9)" in coverage and any('covered="true"' in e for e in coverage)
    # Gateway and worker memory side by side.
    memory = " ".join(exprs("lengthwise-worker-memory", "Resident memory by process"))
    for job in ("lengthwise-gateway", "vllm-worker", "lengthwise-edt"):
        assert f'process_resident_memory_bytes{{job="{job}"}}' in memory
    ttft = _panel(deploy_dir, "lengthwise-gateway", "Time to first token")
    assert "Streaming requests only" in ttft["description"]


def test_dashboards_are_well_formed(deploy_dir):
    provisioned = yaml.safe_load(
        (deploy_dir / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    datasource_uids = {d["uid"] for d in provisioned["datasources"]}
    for dashboard in _dashboards(deploy_dir):
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), dashboard["uid"]
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in datasource_uids
            assert panel["targets"], panel["title"]
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
            for target in panel["targets"]:
                assert target["expr"].strip()
                assert target["datasource"]["uid"] in datasource_uids


def test_dashboards_use_the_gateway_metric_names(deploy_dir):
    """Every lengthwise_* name in a dashboard is one GatewayMetrics or the EDT processor's
    endpoint exposes."""
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    registry.register(_HistogramCollector(AppliedTemperatureHistogram()))
    exposed = set()
    for family in registry.collect():
        exposed.add(family.name)
        exposed.update({f"{family.name}_{s}" for s in ("total", "bucket", "sum", "count")})
    exprs = [t["expr"] for d in _dashboards(deploy_dir) for p in d["panels"]
             for t in p.get("targets", [])]
    rules = [r["expr"] for path in (deploy_dir / "prometheus" / "rules").glob("*.yml")
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    used = {name for expr in exprs + rules for name in re.findall(r"\blengthwise_[a-z0-9_]+", expr)}
    assert used and used <= exposed, sorted(used - exposed)


def test_grafana_provisioning_matches_the_compose_mounts(deploy_dir):
    provider = yaml.safe_load(
        (deploy_dir / "grafana" / "provisioning" / "dashboards" / "lengthwise.yml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((deploy_dir / "compose" / "compose.yaml").read_text())
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["grafana"]["volumes"]}
    source = mounts[provider["options"]["path"]]
    assert (deploy_dir / "compose" / source).resolve() == (deploy_dir / "grafana" / "dashboards")
