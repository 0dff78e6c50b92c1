"""What online learning costs a request: the CASTILLO predictor alone vs. the learner on top of it.

The learner is given a calibrator first (real SmolLM2 profile prompts and lengths when the
profile is there, else synthetic), so every timed call takes the calibrated path. The two
are timed in alternating rounds over the same prompts, one call at a time, as the gateway
calls them. Also times one background refit. Prints the figures and writes
reports/online_path_cost.json.

Usage: .venv/bin/python scripts/bench_online_path.py [PROFILE_DIR]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

from predictor.api import load_default_predictor
from predictor.files import write_json_report
from predictor.locations import reports_dir
from server.online_learning import OnlineLearningPredictor, OnlineLearningSettings

ROUNDS = 5
MODEL = "served-model"


def observations(profile_dir: Path) -> list[tuple[str, float]]:
    rng = random.Random(0)
    if profile_dir.is_dir():
        from predictor.profiling.report import load_profile

        profile = load_profile(profile_dir)
        return [(text, float(rng.choice(list(sizes))))
                for text, sizes in zip(profile["prompt_text"], profile["output_sizes"])]
    words = ["river", "bread", "write", "explain", "list", "code", "python", "story", "poem", "summary", "history"]
    return [(" ".join(rng.choice(words) for _ in range(rng.randint(5, 80))), rng.uniform(10, 500))
            for _ in range(1000)]


def timed_ms(call, prompts: list[str]) -> list[float]:
    out = []
    for prompt in prompts:
        began = time.perf_counter()
        call(prompt)
        out.append((time.perf_counter() - began) * 1000.0)
    return out


def main() -> None:
    profile_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/profiles/smollm2-128")
    base = load_default_predictor()
    data = observations(profile_dir)
    train, probe = data[:800], [text for text, _ in data[800:1000]]
    # the 800th observation starts one refit (in the background, as in the gateway)
    learner = OnlineLearningPredictor(base, OnlineLearningSettings(
        refit_every=len(train), min_observations=len(train), nice=0))
    for text, actual in train[:-1]:
        learner.observe(MODEL, text, 0.0, actual, 128)
    began = time.perf_counter()
    learner.observe(MODEL, train[-1][0], 0.0, train[-1][1], 128)
    learner.wait_for_refits(600)
    refit_s = time.perf_counter() - began
    assert learner.status(MODEL)["calibrated"], "the refit was not accepted; nothing to time"

    base_ms: list[float] = []
    learner_ms: list[float] = []
    for _ in range(ROUNDS):
        base_ms += timed_ms(lambda p: base.predict(p, MODEL, 128), probe)
        learner_ms += timed_ms(lambda p: learner.predict(p, MODEL, 128), probe)

    def figures(values: list[float]) -> dict:
        return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
                "mean_ms": float(np.mean(values))}

    report = {"calls_each": len(base_ms), "rounds": ROUNDS, "observations": len(train),
              "prompts_from": str(profile_dir) if profile_dir.is_dir() else "synthetic",
              "base_predictor": figures(base_ms), "learner_calibrated": figures(learner_ms),
              "added_p50_ms": float(np.percentile(learner_ms, 50) - np.percentile(base_ms, 50)),
              "refit_seconds_800_observations": refit_s}
    for key in ("base_predictor", "learner_calibrated"):
        print(f"{key:20s} p50 {report[key]['p50_ms']:.3f} ms  p90 {report[key]['p90_ms']:.3f} ms")
    print(f"added at p50: {report['added_p50_ms']:.3f} ms; one refit on {len(train)} "
          f"observations: {refit_s:.2f} s (background thread)")
    print("wrote", write_json_report(reports_dir() / "online_path_cost.json", report))


if __name__ == "__main__":
    main()
