"""The completion endpoints' fast lane (server/fast_lane.py): the same answers as through
FastAPI, errors included, with the real app in front of the HTTP stand-in worker."""

from __future__ import annotations

import httpx
import pytest
from harness import (
    MODEL,
    InProcessGateway,
    StandinWorker,
    assert_openai_error,
    chat_body,
    free_port,
)

from server.config import GatewayConfig


class BrokenPredictor:
    """A predictor with a bug: the gateway must answer in OpenAI format, never a 500."""

    def predict(self, prompt, model, max_tokens=None, sampling=None):
        raise RuntimeError("predictor bug")

    def predict_batch(self, prompts, models, max_tokens=None, samplings=None):
        raise RuntimeError("predictor bug")


@pytest.fixture
def worker():
    w = StandinWorker().start()
    yield w
    w.kill()


def _gateway(worker: StandinWorker, predictor, tmp_path, **settings) -> InProcessGateway:
    cfg = GatewayConfig.model_validate({
        "workers": [worker.url], "port": free_port(), "online_learning": False,
        "request_log_path": tmp_path / "requests.jsonl", **settings})
    return InProcessGateway(cfg, predictor).start()


def test_an_unexpected_error_on_a_completion_is_a_503_in_openai_format(worker, tmp_path):
    gw = _gateway(worker, BrokenPredictor(), tmp_path)
    try:
        for path, body in (("/v1/chat/completions", chat_body()),
                           ("/v1/completions", {"model": MODEL, "prompt": "Hello"})):
            resp = httpx.post(gw.url + path, json=body, timeout=30)
            err = assert_openai_error(resp, 503)
            assert err["code"] == "internal_error"
            assert "RuntimeError" in err["message"]
            assert resp.headers["retry-after"] == "1"
    finally:
        gw.stop()


def test_other_methods_on_the_completion_paths_still_get_the_frameworks_answer(
        worker, tmp_path, length_predictor):
    gw = _gateway(worker, length_predictor, tmp_path)
    try:
        resp = httpx.get(gw.url + "/v1/chat/completions", timeout=30)
        assert assert_openai_error(resp, 404)["code"] == "method_not_allowed"
        ok = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(max_tokens=4), timeout=30)
        assert ok.status_code == 200, ok.text
        assert "x-lengthwise-predicted-tokens" in ok.headers
    finally:
        gw.stop()


def test_keys_are_still_checked_on_the_fast_lane(worker, tmp_path, length_predictor):
    gw = _gateway(worker, length_predictor, tmp_path, api_keys=["sk-right"])
    try:
        missing = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(), timeout=30)
        assert_openai_error(missing, 401)
        wrong = httpx.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi"},
                           headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
        assert_openai_error(wrong, 401)
        right = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(max_tokens=4),
                           headers={"Authorization": "Bearer sk-right"}, timeout=30)
        assert right.status_code == 200, right.text
    finally:
        gw.stop()
