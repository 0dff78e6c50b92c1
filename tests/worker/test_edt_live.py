"""EDT on the real vLLM CPU worker, through vLLM's OpenAI API and ``vllm_xargs``."""

from __future__ import annotations

import openai
import pytest

PROMPTS = [
    "Write two sentences about the sea.",
    "Name three uses of copper and explain one of them.",
    "Describe a busy market in the morning.",
]
MAX_TOKENS = 40
SEED = 1234


@pytest.fixture(scope="module")
def client(vllm_worker):
    with openai.OpenAI(base_url=vllm_worker.openai_base_url, api_key="unused") as c:
        yield c


def complete(client, model: str, prompt: str, temperature: float, xargs: dict | None = None):
    extra_body = {"vllm_xargs": xargs} if xargs is not None else None
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=temperature,
        seed=SEED,
        extra_body=extra_body,
    )
    return resp.choices[0].message.content


def test_theta_zero_is_exactly_fixed_temperature(client, vllm_worker):
    for prompt in PROMPTS:
        fixed = complete(client, vllm_worker.model, prompt, 0.9)
        edt_off = complete(client, vllm_worker.model, prompt, 0.9, {"edt_theta": 0.0, "edt_n": 0.8})
        assert edt_off == fixed


def test_huge_theta_is_exactly_greedy(client, vllm_worker):
    differs_from_sampling = False
    for prompt in PROMPTS:
        greedy = complete(client, vllm_worker.model, prompt, 0.0)
        edt = complete(client, vllm_worker.model, prompt, 1.0, {"edt_theta": 1e6})
        sampled = complete(client, vllm_worker.model, prompt, 1.0)
        assert edt == greedy
        differs_from_sampling |= sampled != greedy
    # Otherwise the equality above would not show that EDT did anything.
    assert differs_from_sampling


@pytest.mark.parametrize(
    "xargs", [{"edt_theta": -1.0}, {"edt_theta": 1.0, "edt_n": 1.0}, {"edt_theta": "warm"}]
)
def test_invalid_edt_arguments_are_a_400(client, vllm_worker, xargs):
    with pytest.raises(openai.BadRequestError):
        complete(client, vllm_worker.model, PROMPTS[0], 1.0, xargs)
