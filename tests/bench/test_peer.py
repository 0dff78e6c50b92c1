"""The peer benchmark's own parts: its held-out prompts, the dataset vLLM's client reads,
and the pooled figures and ratios the report is judged by."""

from __future__ import annotations

import pytest

from lengthwise.bench.peer import (
    ArmRun,
    compare,
    figures,
    held_out_prompts,
    judge,
    scenario_report,
    write_sharegpt,
)
from predictor.artifact import HOLDOUT_FRACTION, HOLDOUT_SALT


def _run(arm: str, k: int, lat: list[float], ttft: list[float], tokens: list[int],
         duration: float) -> ArmRun:
    return ArmRun(arm, k, {}, lat, ttft, tokens, 0, duration)


def test_figures_pool_the_requests_of_every_round():
    runs = [_run("gateway", 0, [1.0, 3.0], [0.1, 0.3], [10, 30], 4.0),
            _run("gateway", 1, [2.0], [0.2], [20], 2.0)]
    f = figures(runs)
    assert f["requests_ok"] == 3 and f["e2e_mean"] == pytest.approx(2.0)
    assert f["output_throughput"] == pytest.approx(60 / 6.0)
    assert f["ttft_mean"] == pytest.approx(0.2)


def test_ratios_targets_and_the_spread_over_rounds():
    runs = [_run("gateway", 0, [1.0], [0.11], [100], 10.0),
            _run("direct", 0, [2.0], [0.10], [100], 10.0),
            _run("direct", 1, [2.0], [0.10], [100], 9.0),
            _run("gateway", 1, [1.5], [0.12], [100], 10.0)]
    report = scenario_report("burst", runs)
    assert report["ratios"]["e2e_mean"] == pytest.approx(1.25 / 2.0)
    assert report["ratio_spread_over_rounds"]["e2e_mean"] == {
        "min": pytest.approx(0.5), "max": pytest.approx(0.75)}
    assert report["targets"]["e2e_mean"]["met"]
    assert not report["targets"]["output_throughput"]["met"]  # 200/20 vs 200/19
    poisson = judge("poisson", compare(figures(runs[:1]), figures(runs[1:2])))
    assert poisson["ttft_mean_minus_direct_ms"]["value"] == pytest.approx(10.0)
    assert poisson["ttft_mean_minus_direct_ms"]["met"]


def test_the_prompts_are_held_out_and_a_trained_one_is_refused():
    items = held_out_prompts(50, seed=0, trained_prompt_ids=set())
    assert len(items) == 50 and len({p for p, _ in items}) == 50
    assert all(prompt and reference for prompt, reference in items)
    # every chosen prompt's CASTILLO id is in the artifact's held-out group
    import pandas as pd

    from lengthwise.common.paths import shared_dir
    from predictor.loader import prompt_group_mask

    rows = pd.concat(pd.read_parquet(p, columns=["prompt_id", "prompt_text"])
                     for p in sorted((shared_dir() / "castillo").glob("*.parquet")))
    ids = {t.strip(): pid for t, pid in zip(rows["prompt_text"], rows["prompt_id"])}
    chosen = [ids[prompt] for prompt, _ in items]
    assert prompt_group_mask(pd.Series(chosen), HOLDOUT_FRACTION, HOLDOUT_SALT).all()
    with pytest.raises(RuntimeError, match="trained on it"):
        held_out_prompts(50, seed=0, trained_prompt_ids=set(chosen))


def test_vllms_sharegpt_loader_reads_the_dataset_and_caps_by_the_reference(tmp_path):
    from vllm.benchmarks.datasets.datasets import ShareGPTDataset
    from vllm.tokenizers import get_tokenizer

    from lengthwise.worker.local_model import prepare_local_model

    items = [("Name three rivers in Europe.", "The Danube, the Rhine and the Seine."),
             ("Explain photosynthesis briefly to a child.", "Plants make food from light " * 8)]
    path = write_sharegpt(items, tmp_path / "d.json")
    tokenizer = get_tokenizer(str(prepare_local_model().path))
    samples = ShareGPTDataset(dataset_path=str(path), random_seed=0).sample(tokenizer, 2)
    by_prompt = {s.prompt: s.expected_output_len for s in samples}
    assert by_prompt[items[0][0]] == len(tokenizer(items[0][1]).input_ids)
    assert by_prompt[items[1][0]] > by_prompt[items[0][0]]
