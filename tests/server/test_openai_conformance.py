"""The official ``openai`` client against the gateway in front of the real vLLM CPU worker.

Greedy decoding (temperature 0) makes the worker deterministic, so each answer
through the gateway is compared with the same request sent to vLLM directly:
text, usage and finish_reason must be exactly vLLM's.
"""

from __future__ import annotations

import openai
import pytest

PROMPT = "Name three primary colors."


@pytest.fixture(scope="module")
def gw_and_direct(vllm_worker, length_predictor, tmp_path_factory):
    from harness import InProcessGateway, free_port

    from server.config import GatewayConfig

    cfg = GatewayConfig.model_validate({
        "workers": [vllm_worker.base_url], "port": free_port(),
        "request_log_path": tmp_path_factory.mktemp("conformance") / "requests.jsonl",
        "health_timeout_s": 5.0,
    })
    server = InProcessGateway(cfg, length_predictor).start()
    via = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                        timeout=120)
    direct = openai.OpenAI(base_url=vllm_worker.openai_base_url, api_key="unused",
                           max_retries=0, timeout=120)
    yield via, direct, vllm_worker.model, server
    server.stop()


def test_chat_non_streaming_matches_vllm(gw_and_direct):
    via, direct, model, _ = gw_and_direct
    kwargs = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12,
              "temperature": 0.0, "seed": 1}
    raw = via.chat.completions.with_raw_response.create(**kwargs)
    got = raw.parse()
    want = direct.chat.completions.create(**kwargs)
    assert float(raw.headers["x-lengthwise-predicted-tokens"]) >= 1
    assert float(raw.headers["x-lengthwise-queue-ms"]) >= 0
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason == "length"
    assert got.usage.model_dump() == want.usage.model_dump()
    assert got.usage.completion_tokens == 12


def test_chat_streaming_with_and_without_usage(gw_and_direct):
    via, direct, model, _ = gw_and_direct
    kwargs = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 10,
              "temperature": 0.0}
    want = direct.chat.completions.create(**kwargs)

    chunks = list(via.chat.completions.create(**kwargs, stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == want.choices[0].message.content
    assert finish == [want.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == want.usage.model_dump()

    plain = list(via.chat.completions.create(**kwargs, stream=True))
    assert all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == text


def test_completions_streaming_and_not_match_vllm(gw_and_direct):
    via, direct, model, _ = gw_and_direct
    kwargs = {"model": model, "prompt": "The capital of France is", "max_tokens": 8,
              "temperature": 0.0}
    want = direct.completions.create(**kwargs)
    got = via.completions.create(**kwargs)
    assert got.choices[0].text == want.choices[0].text
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage.model_dump() == want.usage.model_dump()

    chunks = list(via.completions.create(**kwargs, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.choices[0].text
    assert chunks[-1].usage.model_dump() == want.usage.model_dump()


def test_sampling_parameters_pass_through(gw_and_direct):
    via, direct, model, _ = gw_and_direct
    kwargs = {"model": model, "messages": [{"role": "user", "content": "Tell me a fact."}],
              "max_completion_tokens": 6, "temperature": 0.8, "top_p": 0.9, "n": 2, "seed": 7,
              "stop": ["\n\n"], "presence_penalty": 0.1, "frequency_penalty": 0.1,
              "logprobs": True, "top_logprobs": 2, "user": "conformance",
              "extra_body": {"top_k": 20}}
    got = via.chat.completions.create(**kwargs)
    want = direct.chat.completions.create(**kwargs)
    assert len(got.choices) == 2
    assert [c.message.content for c in got.choices] == [c.message.content for c in want.choices]
    assert got.usage.model_dump() == want.usage.model_dump()
    assert got.choices[0].logprobs.content[0].top_logprobs


def test_edt_extension_reaches_the_worker(gw_and_direct):
    via, _, model, _ = gw_and_direct
    got = via.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=5,
        temperature=0.7, seed=3, extra_body={"edt": {"theta": 1.0, "n": 0.8}})
    assert got.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError):
        via.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=5,
            extra_body={"edt": {"theta": 1.0, "n": 2.0}})


def test_errors_surface_as_openai_exceptions(gw_and_direct):
    via, _, model, _ = gw_and_direct
    with pytest.raises(openai.NotFoundError):
        via.chat.completions.create(model="no-such-model",
                                    messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):  # vLLM's own 400: beyond the context length
        via.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                    max_tokens=10**9)
    with pytest.raises(openai.BadRequestError):
        via.completions.create(model=model, prompt="x", max_tokens=4, temperature=-1)


def test_models_lists_the_workers_model(gw_and_direct):
    via, _, model, _ = gw_and_direct
    assert [m.id for m in via.models.list().data] == [model]
