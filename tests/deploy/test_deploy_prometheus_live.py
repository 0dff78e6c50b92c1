"""The observability stack for real: Debian's Prometheus scrapes the gateway
(`lengthwise serve`, the console script the images run), its real vLLM CPU
worker, and the EDT processor's endpoint inside that worker's model-runner
process, with the project's own scrape configuration and rules; after some traffic
every PromQL expression of every dashboard panel and every alert and recording
rule is evaluated through Prometheus's HTTP API. Each must parse; each panel must
return data.

Set LENGTHWISE_DASHBOARD_PLOT=<file.png> to also draw every panel from this run
(the plot in deploy/README.md comes from it).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lengthwise.worker.edt.temperature_metrics import METRIC_NAME as EDT_TEMPERATURE
from lengthwise.worker.process import free_port

pytestmark = [pytest.mark.slow]

SCRAPE_INTERVAL_S = 1
# Enough for every panel: chat and completions, streaming and not, some queueing.
REQUESTS = 12
# Grafana's $__rate_interval for a 1 s step and a 1 s scrape: max(step + scrape, 4 x scrape).
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
# Series that exist only after a rare event, which the traffic here does not cause.
EVENT_ONLY_METRICS = {
    "lengthwise_retries_total": "a request retried on another worker",
}


# ------------------------------------------------------------------ helpers --


def _get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def _wait_until(check, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"{what} not ready after {timeout_s:.0f} s\n{tail}", pytrace=False)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass(frozen=True)
class Gateway:
    base_url: str
    host_port: str


@dataclass(frozen=True)
class Prometheus:
    base_url: str

    def query(self, expr: str, at: float | None = None) -> dict:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("query", params)

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> dict:
        return self._api("query_range", {"query": expr, "start": f"{start:.3f}",
                                         "end": f"{end:.3f}", "step": f"{step_s}s"})

    def _api(self, endpoint: str, params: dict) -> dict:
        url = f"{self.base_url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            return _get_json(url)
        except urllib.error.HTTPError as exc:  # 400 = the expression does not parse
            return json.loads(exc.read() or b"{}") | {"http_status": exc.code}


# ----------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def gateway(vllm_worker, tmp_path_factory) -> Iterator[Gateway]:
    """`lengthwise serve` in front of the session's real vLLM CPU worker."""
    workdir = tmp_path_factory.mktemp("gateway")
    port = free_port()
    log = workdir / "gateway.log"
    console = Path(sys.executable).with_name("lengthwise")
    env = {
        **os.environ,
        # Quick health and KV-cache polling, so a 1 s scrape sees fresh values.
        "LENGTHWISE_HEALTH_INTERVAL_S": "0.5",
        "LENGTHWISE_ENGINE_STATS_INTERVAL_S": "0.5",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(console), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--worker", vllm_worker.base_url, "--policy", "sjf-aged",
             # Two sequences per worker: the rest waits in the gateway's queue,
             # so queue depth and queue wait have something to show.
             "--max-sequences-per-worker", "2",
             "--request-log", str(workdir / "requests.jsonl")],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _get_json(f"{base}/health")["status"] == "ok", 300,
                    "gateway", log)
        yield Gateway(base, f"127.0.0.1:{port}")
    finally:
        _stop(process)


def _edt_host_port(vllm_worker) -> str:
    if not vllm_worker.edt_metrics_url:
        pytest.fail("the test worker serves no EDT metrics: set "
                    "LENGTHWISE_TEST_WORKER_EDT_METRICS_URL when reusing a worker", pytrace=False)
    return urllib.parse.urlsplit(vllm_worker.edt_metrics_url).netloc


def _edt_token_count(vllm_worker) -> float:
    """Sampled tokens the EDT histogram has counted so far (scraped directly)."""
    with urllib.request.urlopen(vllm_worker.edt_metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) if f.name == EDT_TEMPERATURE
                for s in f.samples if s.name == f"{EDT_TEMPERATURE}_count")


def _scrape_config(deploy_dir: Path, gateway: Gateway, worker_host_port: str,
                   edt_host_port: str) -> dict:
    """The committed Compose scrape config, with the targets of this test run."""
    config = yaml.safe_load((deploy_dir / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
    config["global"]["evaluation_interval"] = f"{SCRAPE_INTERVAL_S}s"
    rules_dir = deploy_dir / "prometheus"
    config["rule_files"] = [str(rules_dir / pattern) for pattern in config["rule_files"]]
    targets = {"lengthwise-gateway": gateway.host_port, "vllm-worker": worker_host_port,
               "lengthwise-edt": edt_host_port}
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": [targets.pop(job["job_name"])]}]
    assert not targets, f"scrape config lacks jobs {sorted(targets)}"
    return config


@pytest.fixture(scope="module")
def prometheus(prometheus_binary, promtool, deploy_dir, gateway, vllm_worker,
               tmp_path_factory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    worker_host_port = urllib.parse.urlsplit(vllm_worker.base_url).netloc
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(
        _scrape_config(deploy_dir, gateway, worker_host_port, _edt_host_port(vllm_worker))))
    check = subprocess.run([promtool, "check", "config", str(config_path)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [prometheus_binary, f"--config.file={config_path}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
                    60, "prometheus", log)
        yield Prometheus(base)
    finally:
        _stop(process)


PROMPTS = [
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "Explain in two sentences what a hash table is.",
    "List five fruits, one per line.",
    "What is the capital of France? Answer in one word.",
    "Describe a sunrise in one long paragraph.",
    "Give me a short tip for writing clear emails.",
    "Count from one to ten in words.",
]


def _uses_edt(i: int) -> bool:
    return i % 4 < 2  # half the requests, streaming and not, chat and completions


def _send_traffic(gateway: Gateway, model: str) -> tuple[int, int]:
    """Chat and completions, streaming and not, half of them with EDT, a few at a time
    so that some wait in the queue. Returns how many succeeded, and the completion
    tokens of the EDT requests."""

    def one(i: int) -> tuple[bool, int]:
        prompt = PROMPTS[i % len(PROMPTS)]
        max_tokens = (4, 8, 16)[(i // 2) % 3]
        stream = i % 2 == 0
        if i % 3 == 2:  # completions for i = 2, 5, 8, 11: streaming and not
            path, body = "/v1/completions", {"prompt": prompt}
        else:
            path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
        body |= {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
                 "stream": stream}
        if _uses_edt(i):
            body["edt"] = {"theta": 1.0, "n": 0.8}
        if stream:
            body["stream_options"] = {"include_usage": True}
        # Generous: on a loaded 2-core machine the last queued request waits for all.
        with httpx.Client(base_url=gateway.base_url, timeout=600) as client:
            if not stream:
                resp = client.post(path, json=body)
                ok = resp.status_code == 200
                tokens = resp.json()["usage"]["completion_tokens"] if ok else 0
            else:
                with client.stream("POST", path, json=body) as resp:
                    lines = [line for line in resp.iter_lines() if line]
                ok = resp.status_code == 200 and lines[-1] == "data: [DONE]"
                usage = json.loads(lines[-2][len("data: "):]).get("usage") if ok else None
                tokens = usage["completion_tokens"] if usage else 0
        return ok, tokens if _uses_edt(i) else 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    return sum(ok for ok, _ in results), sum(tokens for _, tokens in results)


@dataclass(frozen=True)
class Traffic:
    start: float
    end: float
    edt_completion_tokens: int
    edt_tokens_counted: float


@pytest.fixture(scope="module")
def traffic(gateway, prometheus, vllm_worker) -> Traffic:
    # Let Prometheus see every target up before the traffic starts.
    _wait_until(
        lambda: len(prometheus.query("up == 1")["data"]["result"]) == 3, 30, "all targets up"
    )
    # The session's worker may have decoded EDT requests for other tests already.
    edt_before = _edt_token_count(vllm_worker)
    start = time.time()
    ok, edt_tokens = _send_traffic(gateway, vllm_worker.model)
    assert ok == REQUESTS, f"only {ok}/{REQUESTS} requests succeeded"
    # A few more scrapes and rule evaluations after the last request.
    time.sleep(4 * SCRAPE_INTERVAL_S)
    return Traffic(start - 2 * SCRAPE_INTERVAL_S, time.time(), edt_tokens,
                   _edt_token_count(vllm_worker) - edt_before)


@pytest.fixture(scope="module")
def traffic_window(traffic) -> tuple[float, float]:
    return traffic.start, traffic.end


# -------------------------------------------------------------- expressions --


def _panels(deploy_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted((deploy_dir / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        out += [(dashboard["uid"], p) for p in dashboard["panels"] if p["type"] != "row"]
    return out


def _rules(deploy_dir: Path) -> list[dict]:
    return [rule for path in sorted((deploy_dir / "prometheus" / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def _finite_points(result: dict) -> int:
    return sum(
        1 for series in result["data"]["result"] for _, value in series["values"]
        if math.isfinite(float(value))
    )


def test_every_dashboard_panel_returns_data(prometheus, traffic_window, deploy_dir):
    start, end = traffic_window
    empty, unparsable, plotted = [], [], {}
    for uid, panel in _panels(deploy_dir):
        points = 0
        for target in panel["targets"]:
            result = prometheus.query_range(_grafana_to_promql(target["expr"]), start, end, 1)
            if result.get("status") != "success":
                unparsable.append((uid, panel["title"], target["expr"], result.get("error")))
                continue
            points += _finite_points(result)
            plotted[(uid, panel["title"], target["legendFormat"])] = result["data"]["result"]
        if points == 0:
            empty.append(f"{uid} / {panel['title']}")
    assert not unparsable
    assert not empty, f"panels without data: {empty}"
    if os.environ.get("LENGTHWISE_DASHBOARD_PLOT"):
        _plot(plotted, Path(os.environ["LENGTHWISE_DASHBOARD_PLOT"]), start)


def test_every_rule_expression_parses_and_evaluates(prometheus, traffic_window, deploy_dir):
    _, end = traffic_window
    failures = []
    for rule in _rules(deploy_dir):
        result = prometheus.query(rule["expr"], at=end)
        if result.get("status") != "success":
            failures.append((rule.get("alert") or rule.get("record"), result.get("error")))
    assert not failures


def test_prometheus_loaded_every_rule_and_they_evaluate_cleanly(prometheus, traffic_window,
                                                                deploy_dir):
    groups = prometheus._api("rules", {})["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    expected = {rule.get("alert") or rule.get("record") for rule in _rules(deploy_dir)}
    assert expected <= set(loaded)
    unhealthy = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok"}
    assert not unhealthy
    # Recording rules produce series from the live metrics.
    for name in ("lengthwise:request_error_ratio:rate5m", "lengthwise:queue_wait_seconds:p99_5m",
                 "lengthwise:prediction_error_ratio:p50_1h"):
        assert prometheus.query(name)["data"]["result"], name


# Alerts whose condition must be false on this healthy stack, whatever the machine's
# speed (queue wait and prediction quality depend on load and on the predictor).
HEALTHY_STACK_QUIET = ("LengthwiseGatewayDown", "LengthwiseGatewayAbsent",
                       "LengthwiseNoHealthyWorker", "LengthwiseWorkerUnhealthy",
                       "LengthwiseVLLMWorkerDown", "LengthwiseHighErrorRate",
                       "LengthwiseQueueRejecting")


def test_availability_alerts_are_quiet_on_a_healthy_stack(prometheus, traffic_window, deploy_dir):
    """The conditions evaluate to nothing on the live label sets: e.g. the
    `unless on (job, instance)` join of LengthwiseNoHealthyWorker matches the real
    gateway's series (a label mismatch would make it fire here)."""
    _, end = traffic_window
    rules = {r["alert"]: r for r in _rules(deploy_dir) if "alert" in r}
    noisy = {}
    for name in HEALTHY_STACK_QUIET:
        result = prometheus.query(rules[name]["expr"], at=end)["data"]["result"]
        if result:
            noisy[name] = result
    assert not noisy


def test_every_metric_the_dashboards_and_rules_use_is_scraped(prometheus, traffic_window,
                                                              deploy_dir):
    names = set(prometheus._api("label/__name__/values", {})["data"])
    exprs = [t["expr"] for _, p in _panels(deploy_dir) for t in p["targets"]]
    exprs += [r["expr"] for r in _rules(deploy_dir)]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b(?:lengthwise_|vllm:|process_)[a-zA-Z0-9_:]+", expr):
            used.add(name)
    missing = used - names - set(EVENT_ONLY_METRICS)
    assert not missing, sorted(missing)


def test_gateway_targets_answer_up(prometheus, traffic_window):
    up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query("up")["data"]["result"]}
    assert up == {"lengthwise-gateway": "1", "vllm-worker": "1", "lengthwise-edt": "1"}


def test_edt_histogram_counts_every_token_of_the_edt_requests(traffic, prometheus):
    """One observation per sampled token of a request with EDT, none for the others
    (half the traffic runs without EDT at the same temperature)."""
    assert traffic.edt_completion_tokens > 0
    assert traffic.edt_tokens_counted == traffic.edt_completion_tokens
    result = prometheus.query(f"sum({EDT_TEMPERATURE}_count)")["data"]["result"]
    assert result and float(result[0]["value"][1]) >= traffic.edt_completion_tokens
    # EDT only cools: every applied temperature is at most the requests' T0 = 0.7.
    above = prometheus.query(
        f'sum({EDT_TEMPERATURE}_count) - sum({EDT_TEMPERATURE}_bucket{{le="0.7"}})'
    )["data"]["result"]
    assert float(above[0]["value"][1]) == 0


def test_edt_port_is_bound_by_the_model_runner_process_only(vllm_worker):
    """vLLM's API server (the worker's own port) and its engine core do not bind the EDT
    port: exactly one process listens on it, the one that runs the logits processors."""
    import psutil

    def listeners(port: int) -> set[int]:
        return {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                and c.pid is not None}

    edt_port = urllib.parse.urlsplit(vllm_worker.edt_metrics_url).port
    api_port = urllib.parse.urlsplit(vllm_worker.base_url).port
    (edt_pid,) = listeners(edt_port)
    (api_pid,) = listeners(api_port)
    assert edt_pid != api_pid
    # The model runner is a descendant of the API server (API server -> engine core
    # -> executor worker on the CPU build), not the API server itself.
    assert edt_pid in {p.pid for p in psutil.Process(api_pid).children(recursive=True)}


# -------------------------------------------------------------------- plot --


def _plot(results: dict, path: Path, t0: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list] = {}
    for (uid, title, legend), series_list in results.items():
        panels.setdefault((uid, title), []).append((legend, series_list))
    panels = {k: v for k, v in panels.items() if "distribution" not in k[1]}
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, ((uid, title), entries) in zip(axes.flat, panels.items()):
        for legend, series_list in entries:
            for series in series_list:
                labels = series["metric"]
                label = re.sub(r"\{\{(\w+)\}\}", lambda m, lb=labels: lb.get(m.group(1), ""),
                               legend)
                xs = [float(t) - t0 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=label[:28], linewidth=1, marker=".", markersize=2)
        ax.set_title(f"{title}"[:48], fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Lengthwise dashboards' queries, evaluated by Prometheus during the test run "
                 "(x: seconds since traffic start)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
