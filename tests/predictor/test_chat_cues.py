import math

import pytest

from predictor.chat_cues import GROUPS, chat_cues, cue_names
from predictor.prompt_text import feature_text

ALL = tuple(GROUPS)


def cues(text):
    return dict(zip(cue_names(ALL), chat_cues(text, ALL)))


@pytest.mark.parametrize("text, tokens", [
    ("Summarize this article in one sentence.", 25),
    ("Write a 500-word essay on rivers.", 700),
    ("Write a story of 300 words about a cat.", 420),
    ("List 10 ideas for a birthday party.", 350),
    ("Give me three short tips for sleeping better.", 105),
])
def test_explicit_length_requests_become_token_estimates(text, tokens):
    assert math.expm1(cues(text)["request_log_tokens"]) == pytest.approx(tokens, rel=0.01)


def test_no_request_no_estimate_and_register_words_count():
    plain = cues("What is the capital of France?")
    assert plain["request_log_tokens"] == 0 and plain["request_count"] == 0
    assert plain["opens_wh"] == 1 and plain["ends_question_mark"] == 1
    assert cues("Briefly, in a concise way: why is the sky blue?")["request_brevity_cues"] >= 2
    assert cues("Explain in detail, step by step, how TCP works.")["request_verbosity_cues"] >= 2
    assert cues("Answer in no more than 50 words.")["request_upper_bound"] == 1
    assert cues("Is water wet?")["opens_yes_no"] == 1
    assert cues("Write a Python function that sorts a list.")["kind_code"] == 1


def test_script_shares_tell_languages_apart():
    assert cues("Bonjour, comment ça va ?")["script_latin"] == pytest.approx(1.0)
    assert cues("请用一句话介绍你自己")["script_cjk"] > 0.9
    assert cues("Расскажи о себе")["script_cyrillic"] > 0.9
    assert cues("the cat and the dog")["english_function_words"] > 0.3


def test_features_read_the_system_prompt_and_the_last_user_turn():
    history = [
        {"role": "user", "content": "Tell me a long story about dragons."},
        {"role": "assistant", "content": "Once upon a time " * 200},
    ]
    question = {"role": "user", "content": "Thanks! What is 2+2?"}
    assert feature_text(history + [question]) == "Thanks! What is 2+2?"
    system = {"role": "system", "content": "Answer in one sentence."}
    assert feature_text([system] + history + [question]) == (
        "Answer in one sentence.\n\nThanks! What is 2+2?")
    assert feature_text("plain") == "plain"
