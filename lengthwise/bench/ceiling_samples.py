"""How much can shortest-predicted-first buy on the live benchmark's workload, at best?

`lengthwise bench live` measures sjf against fcfs with the gateway's CASTILLO-trained
predictor. This script asks what *any* length predictor could reach on the same prompts,
the same sampling and the same worker, by ranking with three sources of increasing
knowledge:

- ``predictor``: the gateway's predictor, exactly as the gateway calls it;
- ``prompt_mean``: the mean length of the *other* samples of the same prompt (leave one
  out), which estimates ranking by the prompt's true mean: shortest expected processing
  time first, the best a request-only ranking can do in expectation on one server (near it
  on several slots), because the answer's length also depends on the sampled tokens;
- ``oracle``: the true length of the very answer being ranked (unreachable).

It samples ``--samples`` answers per bench prompt from the worker (sample 0 uses the
bench's own per-request seed), then replays bursts through the calibrated simulator
(the same scheduling code as the gateway) under fcfs and sjf-aged with each source:

- the bench's burst (one answer per prompt) at several gateway admission limits;
- a larger burst where every sample is a request (``--samples`` times the prompts).

Run it with ``lengthwise bench ceiling`` (``--help`` lists the three sources of answers:
a worker, ``--from-samples`` an earlier report, or ``--castillo MODEL``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

from lengthwise.bench.ceiling import PromptSamples, ordering_ceiling
from lengthwise.bench.live import Workload, load_prompts, request_bodies
from lengthwise.common.files import write_json_report
from simulator.calibrate import load_request_overhead
from simulator.fidelity import ClientArrivals, LiveSetup
from simulator.latency import load_cost_model

MODEL = "SmolLM2-135M-Instruct"
#: keeps sample k's seeds clear of every other sample's (and of the bench's, k = 0)
SEED_STRIDE = 100_003


# --------------------------------------------------------------------------- sampling


async def _sample_one(session: aiohttp.ClientSession, url: str, body: dict,
                      gate: asyncio.Semaphore) -> tuple[int, int, str]:
    async with gate, session.post(url, json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"worker answered {resp.status}: {data}")
        usage = data["usage"]
        return (int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
                str(data["choices"][0]["finish_reason"]))


async def sample_lengths(worker: str, bodies: list[dict], samples: int,
                         concurrency: int) -> list[dict]:
    """``samples`` answers per body; sample 0 keeps the bench's seed."""
    url = worker.rstrip("/") + "/v1/chat/completions"
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    rows = [{"prompt_index": i, "prompt_tokens": None, "lengths": [], "finish": []}
            for i in range(len(bodies))]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for k in range(samples):
            started = time.monotonic()
            jobs = []
            for body in bodies:
                b = {**body, "stream": False, "seed": body["seed"] + k * SEED_STRIDE}
                b.pop("stream_options", None)
                jobs.append(_sample_one(session, url, b, gate))
            for row, (prompt_tokens, length, finish) in zip(rows, await asyncio.gather(*jobs)):
                row["prompt_tokens"] = prompt_tokens
                row["lengths"].append(length)
                row["finish"].append(finish)
            print(f"sample {k + 1}/{samples}: {time.monotonic() - started:.0f} s", flush=True)
    return rows


def predictor_means(bodies: list[dict], max_tokens: int) -> list[float]:
    """The gateway's ranking value for each body (its default point estimate, the mean)."""
    from predictor.api import load_served_predictor

    predictor = load_served_predictor()
    keys = ("temperature", "top_p", "seed")
    return [predictor.predict(b["messages"], b["model"], max_tokens,
                              {k: b[k] for k in keys if k in b}).mean for b in bodies]


# --------------------------------------------------------------------------- analysis


def castillo_samples(model: str, requests: int, seed: int) -> dict:
    """CASTILLO's own answers instead of the worker's: ``requests`` held-out prompts of
    ``model`` (ten answers each), ranked by the gateway's predictor."""
    from predictor.api import load_served_predictor
    from simulator.workload import load_castillo_rows

    rows = load_castillo_rows(None, model=model, heldout_only=True)
    rows = random.Random(seed).sample(rows, min(requests, len(rows)))
    preds = load_served_predictor().predict_batch([r.prompt_text for r in rows],
                                                  [r.model for r in rows])
    return {
        "settings": {"source": "CASTILLO held-out prompts (degenerate rows removed)",
                     "model": model, "requests": len(rows), "max_tokens": None,
                     "bench_seed": seed, "samples_per_prompt": len(rows[0].output_sizes)},
        "predictor_mean": [p.mean for p in preds],
        "prompts": [{"prompt_id": r.prompt_id, "prompt_tokens": r.input_size,
                     "lengths": list(r.output_sizes)} for r in rows],
    }


def _castillo_setup() -> tuple[LiveSetup, object, str]:
    """The roomy GPU deployment: RTX PRO 6000 tables, Llama-3.1-8B, plain vLLM's 256 slots."""
    from lengthwise.common.paths import shared_dir
    from server.policy import EngineQueueMode
    from simulator.latency import RTX_PRO_6000_KV_TOKENS, RTX_PRO_6000_TABLES
    from simulator.replica import EngineConfig

    tables = shared_dir() / RTX_PRO_6000_TABLES
    engine = EngineConfig(kv_cache_tokens=RTX_PRO_6000_KV_TOKENS,
                          queue_mode=EngineQueueMode.PRIORITY)
    setup = LiveSetup(engine=engine, max_model_len=32_768, admission_max_sequences=None,
                      client_arrivals=ClientArrivals.BURST)
    return setup, load_cost_model(tables, 32), str(tables)


def analyse(samples: dict, cost_model: Path, admissions: list[int]) -> dict:
    if samples["settings"].get("source", "").startswith("CASTILLO"):
        setup, latency, cost_model = _castillo_setup()
    else:
        latency = load_cost_model(cost_model, None)
        setup = LiveSetup.bench_defaults(client_arrivals=ClientArrivals.BURST)
        overhead = load_request_overhead(cost_model)
        if overhead is not None:
            setup = replace(setup, overhead=overhead)
    prompts = [PromptSamples(row["prompt_tokens"], tuple(row["lengths"]), pred)
               for row, pred in zip(samples["prompts"], samples["predictor_mean"])]
    settings = samples["settings"]
    report = ordering_ceiling(prompts, settings["max_tokens"], setup, latency, admissions,
                              shuffle_seed=settings["bench_seed"])
    return {"settings": {**settings, "cost_model": str(cost_model),
                         "engine_max_num_seqs": setup.engine.max_num_seqs}, **report}


def _print(report: dict) -> None:
    lengths = report["lengths"]
    cap_hit = "" if lengths["cap_hit_rate"] is None else f"cap hit {lengths['cap_hit_rate']:.0%}, "
    print(f"{lengths['answers']} answers, mean {lengths['mean']:.0f} tokens, {cap_hit}"
          f"variance between prompts "
          f"{lengths['share_of_variance_between_prompts']:.0%}")
    for key in ("bench_burst", "every_answer_burst"):
        part = report[key]
        taus = ", ".join(f"{k} {v:.2f}" for k, v in part["kendall_tau_vs_answer"].items())
        print(f"{key}: {part['requests']} requests; tau vs the answer: {taus}")
        for row in part["rows"]:
            ratios = "  ".join(f"{k} {v:.3f}" for k, v in row["e2e_mean_over_fcfs"].items())
            print(f"  admission {row['admission_max_sequences']}: mean E2E / fcfs: {ratios}")
    sets = report["bench_burst_by_answer_set"]
    print(f"bench burst over {sets['answer_sets']} answer sets, admission "
          f"{sets['admission_max_sequences']}: mean E2E / fcfs, mean [min, max]:")
    for name, v in sets["e2e_mean_over_fcfs"].items():
        print(f"  {name:16s} {v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]")
    for row in sets["prompt_mean_by_answers_known"]:
        print(f"  prompt mean of {row['answers_known']} other answers: "
              f"{row['sjf_prompt_mean_over_fcfs']:.3f} (tau {row['kendall_tau']:.2f})")


def run_ceiling(*, worker: str | None, output: Path, requests: int = 96, max_tokens: int = 256,
                samples_per_prompt: int = 6, concurrency: int = 16,
                admissions: list[int] = (16, 8, 4), cost_model: Path,
                castillo: str | None = None, from_samples: Path | None = None) -> dict:
    """Sample (or reuse, or take CASTILLO's) answers, replay the bursts, write ``output``."""
    if castillo:
        samples = castillo_samples(castillo, requests, seed=Workload().seed)
    elif from_samples:
        samples = json.loads(from_samples.read_text())["samples"]
    else:
        if worker is None:
            raise ValueError("sampling answers needs --worker (or --castillo / --from-samples)")
        w = Workload(num_requests=requests, arrivals="burst", max_tokens=max_tokens)
        bodies = request_bodies(w, MODEL, load_prompts(w.num_requests, w.seed))
        preds = predictor_means(bodies, w.max_tokens)
        rows = asyncio.run(sample_lengths(worker, bodies, samples_per_prompt, concurrency))
        samples = {
            "settings": {"model": MODEL, "requests": w.num_requests, "max_tokens": w.max_tokens,
                         "temperature": w.temperature, "top_p": w.top_p, "bench_seed": w.seed,
                         "samples_per_prompt": samples_per_prompt, "seed_stride": SEED_STRIDE,
                         "worker": worker},
            "predictor_mean": preds,
            "prompts": rows,
        }
    report = analyse(samples, cost_model, list(admissions))
    report["samples"] = samples
    write_json_report(output, report)
    _print(report)
    return report
