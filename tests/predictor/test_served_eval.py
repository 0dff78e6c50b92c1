"""``lengthwise profile evaluate``: what a served model's own profile buys the predictor.

A synthetic profile in CASTILLO's schema whose lengths follow the prompt's wording
(and differ from every CASTILLO model's), so a predictor that learned the served
model must rank its held-out prompts better than the model-agnostic one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from predictor.profiling.served_eval import evaluate_served_model

CAP = 128
TOPICS = ["rivers", "taxes", "owls", "chess", "bread", "volcanoes", "jazz", "glaciers", "tea",
          "bridges", "comets", "moss", "sailing", "clocks", "bees", "deserts", "violins", "salt",
          "maps", "ferns", "lighthouses", "wolves", "copper", "kites", "islands"]
# the served model's own habit: one-line asks are tiny, lists medium, stories run to the cap
STYLES = {"Answer in one word: what is {t}?": 3, "List five facts about {t}.": 60,
          "Write a long story about {t}.": 400}


def _row(i: int, text: str, natural: int, rng: random.Random) -> dict:
    sizes = [min(CAP, max(1, int(natural * rng.uniform(0.8, 1.2)))) for _ in range(10)]
    mean, std = float(np.mean(sizes)), float(np.std(sizes))
    p25, p50, p75, p99 = np.percentile(sizes, [25, 50, 75, 99]).tolist()
    return {"sample_id": f"s{i:015d}", "prompt_id": f"p{i:015d}", "model": "tiny-served",
            "dataset": "Synthetic", "prompt_text": text, "input_size": len(text.split()),
            "output_sizes": sizes, "output_mean": mean, "output_std": std,
            "output_percentiles": {"p25": p25, "p50": p50, "p75": p75, "p99": p99},
            "top_k": 20, "top_p": 0.8, "temp": 0.7, "category": None, "gen_time": 1.0,
            "longest_response": "x", "shortest_response": "x", "max_tokens": CAP,
            "finish_reasons": ["length" if s >= CAP else "stop" for s in sizes],
            "degenerate": max(sizes) >= CAP, "degenerate_reason": "cap_hit" if max(sizes) >= CAP else None}


@pytest.fixture
def synthetic_profile(tmp_path) -> Path:
    rng = random.Random(7)
    rows: list[dict] = []
    for style, natural in STYLES.items():
        for topic in TOPICS:
            rows.append(_row(len(rows), style.format(t=topic), natural, rng))
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_profile_improves_ranking_and_short_cap_rows_are_kept(synthetic_profile, small_rows,
                                                                   small_config, tmp_path):
    castillo = tmp_path / "castillo.parquet"
    small_rows.to_parquet(castillo)
    _features, params = small_config
    result = evaluate_served_model(synthetic_profile, castillo, test_fraction=0.3,
                                   params=params)
    data = result["data"]
    assert result["max_tokens"] == CAP and data["profile_prompts"] == 75
    # every story hits the cap, yet none is dropped: the cap bounds it, it is the real target
    assert data["profile_rows_cap_hit"] == 25 and data["profile_rows_high_variance"] == 0
    assert data["profile_train_prompts_after_cleaning"] == data["profile_train_prompts"]
    settings = result["settings"]
    assert set(settings) == {"castillo_only", "profile_only", "both"}
    assert settings["castillo_only"]["held_out_all"]["model_known_path"] is False
    assert settings["both"]["held_out_all"]["model_known_path"] is True
    agnostic = settings["castillo_only"]["held_out_all"]
    own = settings["profile_only"]["held_out_all"]
    assert own["kendall_tau_mean"] > 0.6
    assert own["kendall_tau_mean"] > (agnostic["kendall_tau_mean"] or 0.0) + 0.2
    assert own["mae_tokens"] < agnostic["mae_tokens"]
    assert settings["both"]["held_out_all"]["kendall_tau_mean"] > (agnostic["kendall_tau_mean"] or 0.0)
