"""Generate Lengthwise's Grafana dashboards, and the Kubernetes ConfigMaps that ship
them and the Prometheus configuration, from code.

The gateway's metric names are read from ``server.metrics.GatewayMetrics`` itself
(instantiated on a throw-away registry), so renaming a metric there changes the
generated dashboards, and the test that compares the committed files with a fresh
generation fails until they are regenerated; the EDT histogram's name comes from
``lengthwise.worker.edt.temperature_metrics``. vLLM's names come from vLLM's ``/metrics``
(``vllm:*``) and prometheus_client's process collector (``process_*``, exported by
the gateway, vLLM's API server and the EDT endpoint of vLLM's model-runner process).

    python deploy/grafana/generate.py          # rewrite the committed files
    python deploy/grafana/generate.py --check  # exit 1 when they are out of date

Outputs (all committed):
    deploy/grafana/dashboards/<uid>.json
    deploy/kubernetes/grafana-dashboards-configmap.yaml
    deploy/kubernetes/prometheus-configmap.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = DEPLOY_DIR.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from prometheus_client import CollectorRegistry

from lengthwise.worker.edt.temperature_metrics import METRIC_NAME as EDT_TEMPERATURE
from server.engine_stats import KV_CACHE_USAGE
from server.metrics import GatewayMetrics

DASHBOARD_DIR = DEPLOY_DIR / "grafana" / "dashboards"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"

# Grafana's provisioned Prometheus data source (provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# Grafana substitutes a window of at least four scrape intervals; tests do the same.
RATE = "$__rate_interval"
GATEWAY_JOB = "lengthwise-gateway"
WORKER_JOB = "vllm-worker"
EDT_JOB = "lengthwise-edt"
# The share of requests a calibrated p90 covers; drawn as the target line.
P90_TARGET = 0.9


def _gateway_metric_names() -> dict[str, str]:
    """Attribute of GatewayMetrics -> exposed family name (counters without _total)."""
    metrics = GatewayMetrics(CollectorRegistry())
    names: dict[str, str] = {}
    for attr, value in vars(metrics).items():
        name = getattr(value, "_name", None)
        if isinstance(name, str):
            names[attr] = name
    return names


G = _gateway_metric_names()


def counter(attr: str) -> str:
    return f"{G[attr]}_total"


def bucket(attr: str) -> str:
    return f"{G[attr]}_bucket"


def quantile(q: float, bucket_metric: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({bucket_metric}[{RATE}])))"


# --------------------------------------------------------------------- model --


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    instant: bool = False
    format: str = "time_series"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | heatmap | state-timeline
    width: int = 12
    min: float | None = 0
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = ("lengthwise",)
    links_to: tuple[str, ...] = field(default=())


def percentiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> tuple[Query, ...]:
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(Query(quantile(q, metric, by), f"p{round(q * 100)}{suffix}") for q in qs)


# ---------------------------------------------------------------- dashboards --


def gateway_overview() -> Dashboard:
    traffic = Row(
        "Traffic",
        (
            Panel(
                "Request rate by status",
                "Finished requests per second by HTTP status, all endpoints and policies.",
                (Query(f"sum by (status) (rate({counter('requests')}[{RATE}]))", "{{status}}"),),
                unit="reqps",
            ),
            Panel(
                "Tokens per second",
                "Prompt and completion tokens of finished requests (vLLM's usage counts).",
                (
                    Query(f"sum(rate({counter('prompt_tokens')}[{RATE}]))", "prompt"),
                    Query(f"sum(rate({counter('completion_tokens')}[{RATE}]))", "completion"),
                ),
                unit="short",
            ),
            Panel(
                "Server error ratio and retries",
                "Share of requests failing on the serving side (recording rule; the "
                "LengthwiseHighErrorRate alert fires above 5%) and attempts retried on another worker.",
                (
                    Query("max by (instance) (lengthwise:request_error_ratio:rate5m)",
                          "failure ratio {{instance}}"),
                    Query(f"sum by (reason) (rate({counter('retries')}[{RATE}]))",
                          "retries/s {{reason}}"),
                ),
                unit="percentunit",
            ),
        ),
    )
    latency = Row(
        "Latency",
        (
            Panel("End-to-end latency", "Arrival at the gateway to the last byte.",
                  percentiles(bucket("e2e")), unit="s"),
            Panel("Time to first token", "Arrival at the gateway to the first streamed token; "
                  "includes the queue wait. Streaming requests only: the gateway cannot see the "
                  "first token of a non-streaming reply (see the vLLM panel for all requests).",
                  percentiles(bucket("ttft")), unit="s"),
            Panel("Time to first token inside vLLM (all requests)",
                  "vLLM's own vllm:time_to_first_token_seconds: every request, streaming or "
                  "not, from its arrival at the worker (so without the gateway's queue wait).",
                  percentiles("vllm:time_to_first_token_seconds_bucket"), unit="s"),
            Panel("Time per output token", "Decode time per token after the first (streaming "
                  "requests, as for TTFT).",
                  percentiles(bucket("tpot")), unit="s"),
        ),
    )
    queue = Row(
        "Queue",
        (
            Panel("Queue depth by policy", "Requests waiting in each gateway replica's queue, "
                  "labelled with the replica's scheduling policy.",
                  (Query(f"sum by (policy, instance) ({G['queue_depth']})",
                         "{{policy}} {{instance}}"),)),
            Panel("Queue wait by policy", "Time spent in the gateway's queue, per scheduling "
                  "policy (the LengthwiseQueueWaitP99High alert watches p99).",
                  percentiles(bucket("queue_wait"), by="policy", qs=(0.5, 0.99)), unit="s"),
        ),
    )
    workers = Row(
        "Workers",
        (
            Panel("In flight per worker", "Requests the gateways have in flight at each "
                  "worker (bounded by max_sequences_per_worker per gateway replica).",
                  (Query(f"sum by (worker) ({G['in_flight']})", "{{worker}}"),)),
            Panel("Predicted tokens in flight per worker", "Sum of predicted completion "
                  "tokens in flight; routing sends new work to the smallest.",
                  (Query(f"sum by (worker) ({G['in_flight_predicted']})", "{{worker}}"),)),
            Panel("Worker health", "1 = in rotation, 0 = taken out after failed health "
                  "checks (per gateway replica's view; min over replicas).",
                  (Query(f"min by (worker) ({G['worker_healthy']})", "{{worker}}"),),
                  kind="state-timeline", max=1),
        ),
    )
    return Dashboard(
        "lengthwise-gateway", "Lengthwise / Gateway overview",
        "Traffic, latency, queueing and worker state of the Lengthwise gateway.",
        (traffic, latency, queue, workers),
    )


def length_prediction() -> Dashboard:
    distribution = Row(
        "Predicted against actual",
        (
            Panel(
                "Predicted vs actual completion tokens (quantiles)",
                "Quantiles of the gateway's predicted lengths next to the lengths vLLM actually "
                "generated (vllm:request_generation_tokens, per request).",
                (
                    Query(quantile(0.5, bucket("predicted_tokens")), "predicted p50"),
                    Query(quantile(0.9, bucket("predicted_tokens")), "predicted p90"),
                    Query(quantile(0.5, "vllm:request_generation_tokens_bucket"), "actual p50"),
                    Query(quantile(0.9, "vllm:request_generation_tokens_bucket"), "actual p90"),
                ),
            ),
            Panel(
                "Mean predicted vs actual tokens per request",
                "Mean predicted completion length against the mean generated by the workers.",
                (
                    Query(f"sum(rate({G['predicted_tokens']}_sum[{RATE}])) / "
                          f"sum(rate({G['predicted_tokens']}_count[{RATE}]))", "predicted"),
                    Query(f"sum(rate(vllm:request_generation_tokens_sum[{RATE}])) / "
                          f"sum(rate(vllm:request_generation_tokens_count[{RATE}]))", "actual"),
                ),
            ),
            Panel(
                "Predicted length distribution",
                "How many requests were predicted in each token bucket.",
                (Query(f"sum by (le) (increase({bucket('predicted_tokens')}[{RATE}]))",
                       "{{le}}", format="heatmap"),),
                kind="heatmap",
            ),
            Panel(
                "Actual length distribution",
                "How many requests generated each number of tokens (vLLM's histogram).",
                (Query(f"sum by (le) (increase(vllm:request_generation_tokens_bucket[{RATE}]))",
                       "{{le}}", format="heatmap"),),
                kind="heatmap",
            ),
        ),
    )
    error = Row(
        "Prediction error",
        (
            Panel(
                "Predicted / actual over time",
                "Quantiles of predicted over actual completion tokens (1 = exact, above 1 = "
                "over-predicted). The LengthwisePredictionDrift alert watches the hourly median.",
                percentiles(bucket("prediction_ratio"), qs=(0.1, 0.5, 0.9))
                + (Query("lengthwise:prediction_error_ratio:p50_1h", "median, last hour"),),
            ),
            Panel(
                "Predictions within 2x of the actual length",
                "Share of requests whose predicted/actual ratio lies in [0.5, 2].",
                (
                    Query(f"(sum(rate({bucket('prediction_ratio')}{{le=\"2.0\"}}[{RATE}])) - "
                          f"sum(rate({bucket('prediction_ratio')}{{le=\"0.5\"}}[{RATE}]))) / "
                          f"sum(rate({G['prediction_ratio']}_count[{RATE}]))", "window"),
                    Query("lengthwise:prediction_within_2x:ratio_1h", "last hour"),
                ),
                unit="percentunit", max=1,
            ),
            Panel(
                "Predicted / actual distribution",
                "Requests per ratio bucket.",
                (Query(f"sum by (le) (increase({bucket('prediction_ratio')}[{RATE}]))",
                       "{{le}}", format="heatmap"),),
                kind="heatmap",
            ),
        ),
    )
    coverage_counter = counter("p90_coverage")
    coverage = Row(
        "Coverage of p90",
        (
            Panel(
                "Coverage of p90",
                "Share of single-sequence requests whose actual completion length was at most "
                f"the predicted p90, per model. A calibrated predictor covers {P90_TARGET:.0%} "
                "(the target line); well below it, the predictor underestimates and needs "
                "retraining (LengthwisePredictionCoverageLow watches the hourly figure).",
                (
                    Query(f"(sum by (model) (rate({coverage_counter}{{covered=\"true\"}}[{RATE}]))"
                          f" or sum by (model) (rate({coverage_counter}[{RATE}])) * 0)"
                          f" / sum by (model) (rate({coverage_counter}[{RATE}]))",
                          "{{model}} (window)"),
                    Query("lengthwise:prediction_p90_coverage:ratio_1h", "{{model}} (last hour)"),
                    Query(f"vector({P90_TARGET})", "target"),
                ),
                unit="percentunit", max=1,
            ),
            Panel(
                "Requests above and within the predicted p90",
                "Rate of single-sequence requests by whether they stayed within the p90.",
                (Query(f"sum by (covered) (rate({coverage_counter}[{RATE}]))",
                       "covered={{covered}}"),),
                unit="reqps",
            ),
        ),
    )
    return Dashboard(
        "lengthwise-prediction", "Lengthwise / Length prediction",
        "How well the length predictor's estimates match what the workers generate.",
        (distribution, error, coverage),
    )


def worker_memory() -> Dashboard:
    kv = Row(
        "KV cache",
        (
            Panel(
                "KV-cache usage per worker (vLLM)",
                "vLLM's own vllm:kv_cache_usage_perc (0..1). The LengthwiseKVCacheNearFull alert "
                "fires above 95%.",
                (Query(f"max by (instance) ({KV_CACHE_USAGE}{{job=\"{WORKER_JOB}\"}})",
                       "{{instance}}"),),
                unit="percentunit", max=1,
            ),
            Panel(
                "KV-cache usage per worker (as the gateway sees it)",
                "The same figure re-exported by the gateway, which scrapes each worker.",
                (Query(f"max by (worker) ({G['kv_cache_usage']})", "{{worker}}"),),
                unit="percentunit", max=1,
            ),
            Panel(
                "Requests running and waiting inside vLLM",
                "vLLM's own queue: with admission control most waiting happens in the gateway.",
                (
                    Query("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
                    Query("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
                ),
            ),
            Panel(
                "Preemptions",
                "Requests vLLM preempted for lack of KV cache.",
                (Query(f"sum by (instance) (rate(vllm:num_preemptions_total[{RATE}]))",
                       "{{instance}}"),),
                unit="short",
            ),
        ),
    )
    process = Row(
        "Process memory",
        (
            Panel(
                "Resident memory by process",
                "process_resident_memory_bytes of the gateway, of each vLLM worker's API server "
                "(vLLM's /metrics), and of each worker's model-runner process, which holds the "
                "weights (and, on CPU, the KV cache); the EDT endpoint reports that one.",
                (
                    Query(f"sum by (instance) (process_resident_memory_bytes{{job=\"{GATEWAY_JOB}\"}})",
                          "gateway {{instance}}"),
                    Query(f"sum by (instance) (process_resident_memory_bytes{{job=\"{WORKER_JOB}\"}})",
                          "vLLM API server {{instance}}"),
                    Query(f"sum by (instance) (process_resident_memory_bytes{{job=\"{EDT_JOB}\"}})",
                          "vLLM model runner {{instance}}"),
                ),
                unit="bytes",
            ),
            Panel(
                "CPU by process",
                "CPU cores in use (rate of process_cpu_seconds_total) of the same processes.",
                (
                    Query(f"sum by (job, instance) (rate(process_cpu_seconds_total[{RATE}]))",
                          "{{job}} {{instance}}"),
                ),
                unit="short",
            ),
        ),
    )
    return Dashboard(
        "lengthwise-worker-memory", "Lengthwise / Worker memory",
        "KV-cache usage of the vLLM workers, and the memory of the gateway and the workers.",
        (kv, process),
    )


def edt() -> Dashboard:
    temperature_bucket = f"{EDT_TEMPERATURE}_bucket"
    applied = Row(
        "Applied temperatures",
        (
            Panel(
                "Applied temperature distribution",
                "Sampled tokens per temperature bucket, for requests decoding with EDT "
                "(T = T0 * N^(theta/H), served by the EDT processor inside each worker; requests "
                "without EDT are not counted). The bucket le=0 holds steps EDT made greedy.",
                (Query(f"sum by (le) (increase({temperature_bucket}[{RATE}]))", "{{le}}",
                       format="heatmap"),),
                kind="heatmap",
            ),
            Panel(
                "Applied temperature quantiles",
                "p10, p50 and p90 of the temperature EDT applied per sampled token, and the mean.",
                percentiles(temperature_bucket, qs=(0.1, 0.5, 0.9))
                + (Query(f"sum(rate({EDT_TEMPERATURE}_sum[{RATE}])) / "
                         f"sum(rate({EDT_TEMPERATURE}_count[{RATE}]))", "mean"),),
            ),
            Panel(
                "Tokens sampled with EDT",
                "Tokens per second decoded with EDT, per worker, and the share EDT made greedy "
                "(entropy so low that the temperature floor applies).",
                (
                    Query(f"sum by (instance) (rate({EDT_TEMPERATURE}_count[{RATE}]))",
                          "tokens/s {{instance}}"),
                    Query(f"sum(rate({temperature_bucket}{{le=\"0.0\"}}[{RATE}])) / "
                          f"sum(rate({EDT_TEMPERATURE}_count[{RATE}]))", "greedy share"),
                ),
            ),
        ),
    )
    return Dashboard(
        "lengthwise-edt", "Lengthwise / EDT",
        "Temperatures the entropy-based dynamic temperature (EDT) logits processor applies "
        "inside the vLLM workers.",
        (applied,),
    )


DASHBOARDS = (gateway_overview, length_prediction, worker_memory, edt)


# ------------------------------------------------------------------ render --


def _target(query: Query, ref: str) -> dict:
    return {
        "datasource": DATASOURCE,
        "expr": query.expr,
        "legendFormat": query.legend,
        "format": query.format,
        "instant": query.instant,
        "range": not query.instant,
        "refId": ref,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    height = 8
    out: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(panel.queries)],
    }
    if panel.kind == "heatmap":
        out["options"] = {
            "calculate": False,
            "yAxis": {"unit": panel.unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": True},
        }
        out["fieldConfig"] = {"defaults": {}, "overrides": []}
        return out
    defaults: dict = {"unit": panel.unit}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "state-timeline":
        defaults["mappings"] = [
            {"type": "value", "options": {"0": {"text": "unhealthy", "color": "red"},
                                          "1": {"text": "healthy", "color": "green"}}}
        ]
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "red", "value": None}, {"color": "green", "value": 1}]}
        out["options"] = {"showValue": "never", "mergeValues": True, "rowHeight": 0.9}
    else:
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    out["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return out


def render_dashboard(dashboard: Dashboard) -> dict:
    panels: list[dict] = []
    next_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["lengthwise"], "title": "Lengthwise",
                   "asDropdown": True}],
        "panels": panels,
        "version": 1,
    }


def dashboard_json(dashboard: Dashboard) -> str:
    return json.dumps(render_dashboard(dashboard), indent=2, sort_keys=True) + "\n"


def _configmap(name: str, labels: dict[str, str], data: dict[str, str], header: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "lengthwise",
                                               **labels}},
        "data": data,
    }
    return header + yaml.safe_dump(doc, sort_keys=True, width=100, allow_unicode=True)


HEADER = "# Generated by deploy/grafana/generate.py from {source}; do not edit by hand.\n"


def generated_files() -> dict[Path, str]:
    """Every generated file, path -> content."""
    files: dict[Path, str] = {}
    dashboards = {f"{d.uid}.json": dashboard_json(d) for d in (f() for f in DASHBOARDS)}
    for name, text in dashboards.items():
        files[DASHBOARD_DIR / name] = text
    # Labelled for Grafana's dashboard sidecar (kube-prometheus-stack: grafana_dashboard=1).
    files[KUBERNETES_DIR / "grafana-dashboards-configmap.yaml"] = _configmap(
        "lengthwise-grafana-dashboards",
        {"grafana_dashboard": "1", "app.kubernetes.io/name": "lengthwise-dashboards"},
        dashboards,
        HEADER.format(source="deploy/grafana/generate.py"),
    )
    prometheus_data = {"prometheus.yml": (PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text()}
    for rules in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        prometheus_data[rules.name] = rules.read_text()
    # Mounted as one folder: rule_files' relative `rules/*.yml` becomes the flat
    # listing below when the ConfigMap is mounted with items (see the README).
    files[KUBERNETES_DIR / "prometheus-configmap.yaml"] = _configmap(
        "lengthwise-prometheus",
        {"app.kubernetes.io/name": "lengthwise-prometheus"},
        prometheus_data,
        HEADER.format(source="deploy/prometheus/"),
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a committed file differs from the generated one")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        print(f"{'out of date' if args.check else 'wrote'}: {shown}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
