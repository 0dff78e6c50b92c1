"""Where the length prediction happens on a request's path.

At low load (nothing queued, a free slot) the prediction cannot change where or when a
request runs, so the gateway sends it to the worker first and predicts while the worker
computes; when requests queue, the order needs the prediction first. Checked with a
predictor that looks, when it is called, at the gateway's in-flight count and at what
the (real, HTTP) stand-in worker has received.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
from harness import MODEL, InProcessGateway, StandinWorker, chat_body, free_port, wait_until

from server.config import GatewayConfig


class WorkerWatchingPredictor:
    """The real predictor, noting for each prompt, when it is asked: how many requests the
    gateway had sent to the worker, and whether the worker already had this one."""

    def __init__(self, inner: Any, worker: StandinWorker) -> None:
        self.inner = inner
        self.worker = worker
        self.gateway: InProcessGateway | None = None
        self.in_flight: dict[str, int] = {}
        self.worker_had_it: dict[str, bool] = {}
        self._lock = threading.Lock()

    def _note(self, prompt: Any) -> None:
        assert self.gateway is not None
        in_flight = self.gateway.gateway.dispatcher.in_flight
        text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
        had_it = text in json.dumps(self.worker.state()["received"])
        with self._lock:
            self.in_flight[text] = in_flight
            self.worker_had_it[text] = had_it

    def predict(self, prompt, model, max_tokens=None, sampling=None):
        self._note(prompt)
        return self.inner.predict(prompt, model, max_tokens, sampling)

    def predict_batch(self, prompts, models, max_tokens=None, samplings=None):
        for prompt in prompts:
            self._note(prompt)
        return self.inner.predict_batch(prompts, models, max_tokens, samplings)


def _gateway(predictor: WorkerWatchingPredictor, worker: StandinWorker, tmp_path, **settings) -> InProcessGateway:
    cfg = GatewayConfig.model_validate({
        "workers": [worker.url], "port": free_port(), "online_learning": False,
        "request_log_path": tmp_path / "requests.jsonl", "health_interval_s": 0.2, **settings})
    gateway = InProcessGateway(cfg, predictor)
    predictor.gateway = gateway
    return gateway.start()


def test_at_low_load_the_worker_has_the_request_before_it_is_predicted(length_predictor,
                                                                       tmp_path):
    worker = StandinWorker(token_delay_s=0.02).start()
    predictor = WorkerWatchingPredictor(length_predictor, worker)
    gw = _gateway(predictor, worker, tmp_path, worker_max_num_seqs=4)
    try:
        plain = httpx.post(gw.url + "/v1/chat/completions",
                           json=chat_body("plain request LEN=10"), timeout=10)
        streamed = httpx.post(gw.url + "/v1/chat/completions",
                              json=chat_body("streamed request LEN=10", stream=True), timeout=10)
        completion = httpx.post(gw.url + "/v1/completions",
                                json={"model": MODEL, "prompt": "completion request LEN=10"},
                                timeout=10)
    finally:
        gw.stop()
        worker.kill()
    for resp in (plain, streamed, completion):
        assert resp.status_code == 200, resp.text
    # each was already leased and sent (the only request in flight) when it was predicted
    assert predictor.in_flight == {"plain request LEN=10": 1, "streamed request LEN=10": 1,
                                   "completion request LEN=10": 1}
    # the header carries the request's own prediction, not a placeholder
    expected = length_predictor.predict(
        [{"role": "user", "content": "plain request LEN=10"}], MODEL, None,
        {}).point(gw.gateway.cfg.point_estimate.value)
    assert plain.headers["x-lengthwise-predicted-tokens"] == f"{max(1.0, expected):.0f}"


def test_when_requests_queue_each_is_predicted_before_it_reaches_the_worker(length_predictor,
                                                                           tmp_path):
    worker = StandinWorker(token_delay_s=0.02).start()
    predictor = WorkerWatchingPredictor(length_predictor, worker)
    gw = _gateway(predictor, worker, tmp_path, max_sequences_per_worker=1)
    try:
        first: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: first.setdefault("r", httpx.post(
            gw.url + "/v1/chat/completions", json=chat_body("first LEN=40"), timeout=10)))
        sender.start()
        assert wait_until(lambda: worker.state()["running"] == 1, 5.0)
        second = httpx.post(gw.url + "/v1/chat/completions", json=chat_body("second LEN=3"),
                            timeout=10)
        sender.join(10)
    finally:
        gw.stop()
        worker.kill()
    assert first["r"].status_code == 200 and second.status_code == 200
    assert float(second.headers["x-lengthwise-queue-ms"]) > 100  # it waited for the slot
    assert predictor.in_flight == {"first LEN=40": 1, "second LEN=3": 1}  # the first's lease
    assert predictor.worker_had_it["second LEN=3"] is False
