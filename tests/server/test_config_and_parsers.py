"""Pure pieces of the gateway: configuration precedence and the vLLM /metrics parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import describe_settings, load_config
from server.engine_stats import EngineStats, parse_samples

VLLM_SCRAPE = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="SmolLM2-135M-Instruct"} 0.125
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="SmolLM2-135M-Instruct"} 3.0
vllm:num_requests_waiting{engine="0",model_name="odd } name \\" here"} 2.0
vllm:num_requests_waiting{engine="1",model_name="x"} 1.0 1700000000000
vllm:request_success_total{engine="0",finished_reason="stop"} 7.0
"""


def test_engine_stats_parse_a_vllm_scrape():
    stats = EngineStats.from_vllm_scrape(VLLM_SCRAPE)
    assert stats == EngineStats(kv_cache_usage=0.125, num_running=3.0, num_waiting=3.0)


def test_the_generated_token_counter_is_read_from_a_scrape():
    assert EngineStats.from_vllm_scrape(
        'vllm:generation_tokens_total{engine="0",model_name="m"} 1234.0\n'
        'vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9\n'
    ).generation_tokens == 1234.0
    assert EngineStats.from_vllm_scrape(VLLM_SCRAPE).generation_tokens is None


def test_engine_stats_accept_the_legacy_name_and_missing_values():
    assert EngineStats.from_vllm_scrape("vllm:gpu_cache_usage_perc 0.5\n").kv_cache_usage == 0.5
    assert EngineStats.from_vllm_scrape("garbage line\n{}\n") == EngineStats()
    assert parse_samples("a{b=\"c\"} notanumber\n", {"a"}) == {}


def test_config_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("port: 9000\npolicy: fcfs\nmax_sequences_per_worker: 3\n"
                    "workers: [http://a:1]\n")
    env = {"LENGTHWISE_POLICY": "sjf", "LENGTHWISE_API_KEYS": "k1, k2",
           "LENGTHWISE_WORKERS": "http://b:2,http://c:3/"}
    cfg = load_config(path, {"port": 9100, "host": None}, environ=env)
    assert cfg.port == 9100  # flag beats file
    assert cfg.policy.value == "sjf"  # env beats file
    assert cfg.max_sequences_per_worker == 3  # file beats default
    assert cfg.api_keys == ["k1", "k2"]
    assert cfg.workers == ["http://b:2", "http://c:3"]
    assert cfg.host == "127.0.0.1"  # a None flag does not override


def test_config_rejects_bad_settings(tmp_path):
    with pytest.raises(ValidationError):
        load_config(None, {"edt_n": 0.5}, environ={})  # an exponent without a strength
    with pytest.raises(ValidationError):
        load_config(None, {"workers": ["ftp://x"]}, environ={})
    with pytest.raises(ValidationError):
        load_config(None, {"no_such_setting": 1}, environ={})
    # An infinite weight or aging would make the policy's keys NaN (inf x 0, inf - inf).
    for name in ("prompt_token_weight", "aging_s_per_token"):
        for value in ("inf", "nan"):
            with pytest.raises(ValidationError):
                load_config(None, {}, environ={f"LENGTHWISE_{name.upper()}": value})
    toml = tmp_path / "gw.toml"
    toml.write_text('policy = "sjf-aged"\naging_s_per_token = 0.2\n')
    assert load_config(toml, environ={}).aging_s_per_token == 0.2


def test_every_setting_is_documented():
    text = describe_settings()
    from server.config import GatewayConfig

    for name, field in GatewayConfig.model_fields.items():
        assert field.description, name
        assert f"LENGTHWISE_{name.upper()}" in text


def test_every_setting_has_a_row_in_the_configuration_page():
    # docs/configuration.md is the user's reference; a new field must not slip past it.
    from server.config import GatewayConfig

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [n for n in GatewayConfig.model_fields if f"| `{n}`" not in page]
    assert missing == []
