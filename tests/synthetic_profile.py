"""A synthetic profile of a served model, in CASTILLO's schema (``rows.jsonl``).

Its lengths follow the prompt's wording, unlike any CASTILLO model's: one-word asks
are tiny, lists medium, stories run to the cap. A predictor that learned this model
ranks its prompts far better than the model-agnostic one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

MODEL = "tiny-served"
TOPICS = ["rivers", "taxes", "owls", "chess", "bread", "volcanoes", "jazz", "glaciers", "tea",
          "bridges", "comets", "moss", "sailing", "clocks", "bees", "deserts", "violins", "salt",
          "maps", "ferns", "lighthouses", "wolves", "copper", "kites", "islands"]
STYLES = {"Answer in one word: what is {t}?": 3, "List five facts about {t}.": 60,
          "Write a long story about {t}.": 400}


def _row(i: int, text: str, natural: int, cap: int, rng: random.Random) -> dict:
    sizes = [min(cap, max(1, int(natural * rng.uniform(0.8, 1.2)))) for _ in range(10)]
    p25, p50, p75, p99 = np.percentile(sizes, [25, 50, 75, 99]).tolist()
    capped = max(sizes) >= cap
    return {"sample_id": f"s{i:015d}", "prompt_id": f"p{i:015d}", "model": MODEL,
            "dataset": "Synthetic", "prompt_text": text, "input_size": 8 + len(text.split()),
            "output_sizes": sizes, "output_mean": float(np.mean(sizes)),
            "output_std": float(np.std(sizes)),
            "output_percentiles": {"p25": p25, "p50": p50, "p75": p75, "p99": p99},
            "top_k": 20, "top_p": 0.8, "temp": 0.7, "category": None, "gen_time": 1.0,
            "longest_response": "x", "shortest_response": "x", "max_tokens": cap,
            "finish_reasons": ["length" if s >= cap else "stop" for s in sizes],
            "degenerate": capped, "degenerate_reason": "cap_hit" if capped else None}


def write_synthetic_profile(folder: Path, cap: int = 128, seed: int = 7) -> Path:
    """75 prompts (3 styles x 25 topics), 10 sampled lengths each; returns ``folder``."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for style, natural in STYLES.items():
        for topic in TOPICS:
            rows.append(_row(len(rows), style.format(t=topic), natural, cap, rng))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
