"""Online learning of the served model's lengths: the learner on its own, and in the gateway
in front of a stand-in worker whose answer length the prompt decides (``LEN=n``)."""

from __future__ import annotations

import math
import random
import re

import httpx
import numpy as np
from harness import wait_until

from server.online_learning import OnlineLearningPredictor, OnlineLearningSettings

CHAT = "/v1/chat/completions"
TOPICS = ("the ocean", "a small town", "volcanoes", "tea", "the moon", "bicycles", "winter",
          "a lighthouse", "jazz", "bees", "chess", "rivers", "bread", "trains", "owls")


def length_prompt(rng: random.Random) -> tuple[str, int]:
    """A prose request whose true length follows the number of items it asks for."""
    items = rng.randint(1, 30)
    topic = rng.choice(TOPICS)
    return f"List {items} ideas about {topic}.", 12 * items


def test_refit_learns_a_served_models_lengths_and_keeps_the_base_for_others(length_predictor):
    rng = random.Random(0)
    learner = OnlineLearningPredictor(
        length_predictor, OnlineLearningSettings(refit_every=100, min_observations=100, nice=0))
    train = [length_prompt(rng) for _ in range(400)]
    for text, actual in train:
        served = learner.predict(text, "my-served-model").mean
        learner.observe("my-served-model", text, served, actual)
    assert learner.wait_for_refits(120)
    status = learner.status("my-served-model")
    assert status["calibrated"] and status["refits_accepted"] >= 1
    assert status["observations"] == 400

    test = [length_prompt(rng) for _ in range(100)]
    texts = [t for t, _ in test]
    truth = np.array([a for _, a in test], float)
    base = np.array([p.mean for p in length_predictor.predict_batch(texts, ["my-served-model"] * 100)])
    learned = np.array([p.mean for p in learner.predict_batch(texts, ["my-served-model"] * 100)])
    assert np.mean(np.abs(learned - truth)) < 0.5 * np.mean(np.abs(base - truth))
    # another model name is untouched by what was learned for this one
    other = learner.predict_batch(texts[:5], ["another-model"] * 5)
    assert [p.mean for p in other] == [p.mean for p in length_predictor.predict_batch(texts[:5], ["another-model"] * 5)]
    # a cap still caps the learned prediction
    assert learner.predict(texts[0], "my-served-model", max_tokens=7).mean <= 7


def test_memory_is_bounded_by_the_ring_buffer_and_the_model_limit(length_predictor):
    learner = OnlineLearningPredictor(
        length_predictor, OnlineLearningSettings(refit_every=10_000, min_observations=10_000,
                                                 buffer_size=50, max_models=2))
    for i in range(300):
        learner.observe(f"model-{i % 3}", f"prompt {i}", 10.0, float(i))
    assert learner.status("model-0")["observations"] == 50
    assert learner.status("model-1")["observations"] == 50
    assert learner.status("model-2")["observations"] == 0  # beyond max_models: not learned


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _send(client: httpx.Client, gw, text: str, wanted: int) -> float:
    resp = client.post(gw.url + CHAT, json={
        "model": "standin", "max_tokens": 2000,
        "messages": [{"role": "user", "content": f"{text} LEN={wanted}"}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == wanted
    return float(resp.headers["x-lengthwise-predicted-tokens"])


def test_gateway_learns_from_finished_requests_and_exports_rolling_tau(
        standin_factory, gateway_factory):
    worker = standin_factory(token_delay_s=0.0)
    gw = gateway_factory([worker.url], online_refit_every=40, online_min_observations=40,
                         online_window=60)
    rng = random.Random(1)
    with httpx.Client(timeout=30) as client:
        assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {worker.url}, 60)
        first = []
        for _ in range(60):
            text, wanted = length_prompt(rng)
            first.append((_send(client, gw, text, wanted), wanted))
        assert wait_until(lambda: (_metric(client.get(gw.url + "/metrics").text,
                                           "lengthwise_predictor_online_refits_total",
                                           model="standin", outcome="accepted") or 0) >= 1, 60)
        later = []
        for _ in range(60):
            text, wanted = length_prompt(rng)
            later.append((_send(client, gw, text, wanted), wanted))
        metrics = client.get(gw.url + "/metrics").text

    def mae(pairs):
        return float(np.mean([abs(p - a) for p, a in pairs]))

    assert mae(later) < 0.5 * mae(first)
    tau = _metric(metrics, "lengthwise_predictor_rolling_kendall_tau", model="standin")
    ratio = _metric(metrics, "lengthwise_predictor_rolling_error_ratio", model="standin")
    assert tau is not None and tau > 0.5
    assert ratio is not None and math.isfinite(ratio)


def test_online_learning_off_serves_the_trained_predictor_unchanged(
        standin_factory, gateway_factory, length_predictor):
    worker = standin_factory(token_delay_s=0.0)
    gw = gateway_factory([worker.url], online_learning=False)
    rng = random.Random(2)
    with httpx.Client(timeout=30) as client:
        assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {worker.url}, 60)
        for _ in range(50):
            text, wanted = length_prompt(rng)
            got = _send(client, gw, text, wanted)
            expected = length_predictor.predict(
                [{"role": "user", "content": f"{text} LEN={wanted}"}], "standin", 2000).mean
            assert got == float(f"{max(1.0, expected):.0f}")
        metrics = client.get(gw.url + "/metrics").text
    assert not re.search(r"^lengthwise_predictor_rolling_kendall_tau\{", metrics, re.MULTILINE)


CODE_TASKS = ("a python function", "a sql query", "a bash script", "a regular expression",
              "a javascript class", "a c++ template", "a rust macro", "a unit test")
PROSE_TASKS = ("a poem", "a short story", "a travel diary entry", "a fairy tale", "a love letter",
               "a song", "a eulogy", "a speech")
#: never observed: the rule must carry over to tasks the learner has not seen
UNSEEN_CODE_TASKS = ("a java method", "a go program", "a python class", "a sql index")
UNSEEN_PROSE_TASKS = ("a sonnet", "a limerick", "a fable", "a wedding toast")


def topic_prompt(rng: random.Random, unseen: bool = False) -> tuple[str, float]:
    """A served model unlike CASTILLO's: terse on code, verbose on prose, whatever the wording."""
    code = rng.random() < 0.5
    if unseen:
        task = rng.choice(UNSEEN_CODE_TASKS if code else UNSEEN_PROSE_TASKS)
    else:
        task = rng.choice(CODE_TASKS if code else PROSE_TASKS)
    length = rng.gauss(25, 5) if code else rng.gauss(300, 40)
    return f"please write {task} about {rng.choice(TOPICS)}.", max(1.0, length)


def test_learner_generalises_a_topic_rule_to_unseen_prompts(length_predictor):
    # The same template for both kinds, in lower case: lexical statistics alone cannot tell
    # them apart,
    # the base's topic features can, and CASTILLO's models tend to answer code at length.
    from scipy.stats import kendalltau

    rng = random.Random(3)
    learner = OnlineLearningPredictor(
        length_predictor, OnlineLearningSettings(refit_every=100, min_observations=100, nice=0))
    for _ in range(300):
        text, actual = topic_prompt(rng)
        learner.observe("terse-coder", text, learner.predict(text, "terse-coder").mean, actual)
        assert learner.wait_for_refits(120)  # every due refit runs: the same result each time
    assert learner.status("terse-coder")["refits_accepted"] >= 1
    held_out = [topic_prompt(random.Random(1000 + i), unseen=True) for i in range(80)]
    texts = [t for t, _ in held_out]
    truth = [a for _, a in held_out]
    base = [p.mean for p in length_predictor.predict_batch(texts, ["terse-coder"] * 80)]
    learned = [p.mean for p in learner.predict_batch(texts, ["terse-coder"] * 80)]
    # within a kind the order is noise; what can be learned is the kind: the share of
    # (code, prose) pairs put in the right order
    is_code = [any(c in t for c in UNSEEN_CODE_TASKS) for t in texts]

    def ordered_share(pred: list[float]) -> float:
        pairs = [(c, p) for c, kc in zip(pred, is_code) if kc for p, kp in zip(pred, is_code) if not kp]
        return sum(c < p for c, p in pairs) / len(pairs)

    assert ordered_share(learned) > 0.85
    assert ordered_share(base) < 0.8
    assert kendalltau(learned, truth).statistic > kendalltau(base, truth).statistic + 0.2
