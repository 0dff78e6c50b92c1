"""``lengthwise bench edt-quality``: quality, diversity and length of EDT vs fixed temperature.

One run on a real vLLM worker with the EDT processor loaded. Every setting
decodes the same prompts (Dolly summarization, closed_qa and
information_extraction, which have reference answers) with k samples each
(``n=k`` in one request, same seed per prompt across settings), then scores
them with ``lengthwise.bench.edt_metrics``. Writes ``reports/edt_quality.json`` and a
quality-diversity plot ``reports/edt_quality.png`` beside it.
"""

from __future__ import annotations

import asyncio
import itertools
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lengthwise.bench.edt_metrics import SettingScores, score_setting
from lengthwise.bench.edt_workload import ChatJob, Task, dolly_tasks, run_chat_jobs
from lengthwise.common.edt_params import DEFAULT_N, N_KEY, THETA_KEY, make_params
from lengthwise.common.files import write_json_report

DEFAULT_FIXED_TEMPERATURES = (0.3, 0.7, 1.0, 1.3)
DEFAULT_EDT_T0 = (1.0, 1.3)
DEFAULT_EDT_THETA = (0.5, 1.5)


@dataclass(frozen=True)
class Setting:
    name: str
    temperature: float
    theta: float = 0.0
    n: float = DEFAULT_N

    @property
    def is_edt(self) -> bool:
        return self.theta > 0

    def request_extra(self) -> dict:
        if not self.is_edt:
            return {}
        make_params(self.theta, self.n)  # refuse a bad grid before sending anything
        return {"vllm_xargs": {THETA_KEY: self.theta, N_KEY: self.n}}


def build_grid(
    fixed: Sequence[float], edt_t0: Sequence[float], edt_theta: Sequence[float], n: float
) -> list[Setting]:
    grid = [Setting(f"fixed T={t:g}", t) for t in fixed]
    grid += [
        Setting(f"EDT T0={t0:g} theta={theta:g}", t0, theta, n)
        for t0 in edt_t0
        for theta in edt_theta
    ]
    return grid


def pareto_front(rows: Sequence[dict]) -> list[str]:
    """Settings not beaten on both quality (ROUGE-L) and diversity (low Self-BLEU)."""
    front = []
    for row in rows:
        dominated = any(
            other["rouge_l_f1"] >= row["rouge_l_f1"]
            and other["self_bleu"] <= row["self_bleu"]
            and (other["rouge_l_f1"] > row["rouge_l_f1"] or other["self_bleu"] < row["self_bleu"])
            for other in rows
        )
        if not dominated:
            front.append(row["setting"])
    return front


def quality_above_fixed_curve(rows: Sequence[dict]) -> dict[str, float | None]:
    """Per EDT setting: its ROUGE-L minus the fixed-temperature curve's at the same Self-BLEU.

    The fixed curve is the piecewise-linear interpolation between neighbouring fixed
    temperatures ordered by Self-BLEU; positive means EDT buys quality at equal diversity.
    None where the EDT point's Self-BLEU lies outside the fixed settings' range.
    """
    fixed = sorted((r["self_bleu"], r["rouge_l_f1"]) for r in rows if r["kind"] == "fixed")
    out: dict[str, float | None] = {}
    for row in rows:
        if row["kind"] != "edt":
            continue
        x, gain = row["self_bleu"], None
        for (x0, y0), (x1, y1) in itertools.pairwise(fixed):
            if x0 <= x <= x1 and x1 > x0:
                gain = row["rouge_l_f1"] - (y0 + (y1 - y0) * (x - x0) / (x1 - x0))
                break
        out[row["setting"]] = gain
    return out


async def _evaluate_setting(
    setting: Setting,
    tasks: Sequence[Task],
    base_url: str,
    model: str,
    samples: int,
    max_tokens: int,
    concurrency: int,
    seed: int,
) -> tuple[SettingScores, float, int]:
    jobs = [
        ChatJob(
            prompt=task.prompt,
            max_tokens=max_tokens,
            temperature=setting.temperature,
            n=samples,
            seed=seed + i,  # same seed per prompt in every setting
            extra=setting.request_extra(),
        )
        for i, task in enumerate(tasks)
    ]
    start = time.perf_counter()
    completions = await run_chat_jobs(base_url, model, jobs, concurrency)
    elapsed = time.perf_counter() - start
    scores = score_setting(
        [c.texts for c in completions],
        [t.reference for t in tasks],
        [c.completion_tokens for c in completions],
        [[r == "length" for r in c.finish_reasons] for c in completions],
    )
    tokens = sum(sum(c.completion_tokens) for c in completions)
    return scores, elapsed, tokens


def evaluate(
    base_url: str,
    model: str,
    grid: Sequence[Setting],
    per_category: int,
    samples: int,
    max_tokens: int,
    concurrency: int,
    seed: int,
    progress=print,
    partial_path: Path | None = None,
) -> dict:
    """Run the grid; if ``partial_path`` is set, the rows so far are saved after each setting."""
    tasks = dolly_tasks(per_category, seed=seed)
    rows = []
    for setting in grid:
        scores, elapsed, tokens = asyncio.run(
            _evaluate_setting(
                setting, tasks, base_url, model, samples, max_tokens, concurrency, seed
            )
        )
        row = {
            "setting": setting.name,
            "kind": "edt" if setting.is_edt else "fixed",
            "temperature": setting.temperature,
            "theta": setting.theta,
            "n": setting.n if setting.is_edt else None,
            **asdict(scores),
            "wall_s": round(elapsed, 1),
            "completion_tokens": tokens,
        }
        rows.append(row)
        progress(
            f"{setting.name:28s} ROUGE-L {scores.rouge_l_f1:.4f}  Self-BLEU {scores.self_bleu:6.2f}"
            f"  trade-off {scores.tradeoff:.4f}  len {scores.length_mean:6.1f}"
            f" (CV {scores.length_cv:.3f}, within-prompt {scores.within_prompt_length_cv:.3f})"
            f"  {elapsed:5.0f} s"
        )
        if partial_path is not None:
            write_json_report(partial_path, {"partial": True, "settings": rows})
    best_fixed = max((r for r in rows if r["kind"] == "fixed"), key=lambda r: r["tradeoff"])
    best_edt = max((r for r in rows if r["kind"] == "edt"), key=lambda r: r["tradeoff"])
    front = pareto_front(rows)
    return {
        "benchmark": "edt_eval",
        "model": model,
        "worker": base_url,
        "workload": {
            "source": "dolly_validate.json",
            "categories": sorted({t.category for t in tasks}),
            "prompts": len(tasks),
            "samples_per_prompt": samples,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "seed": seed,
        },
        "metrics": {
            "quality": "ROUGE-L F1 vs reference (rouge-score, stemmed), mean over samples and prompts",
            "diversity": "Self-BLEU (sacrebleu sentence BLEU, 0-100) over the k samples of a prompt; lower = more diverse",
            "tradeoff": "harmonic mean of ROUGE-L F1 and 1 - Self-BLEU/100 (stand-in for the paper's EDA, whose definition we could not reconstruct)",
            "length": "completion tokens: mean, CV over all samples, mean within-prompt CV",
        },
        "settings": rows,
        "pareto_front": front,
        "best_fixed": best_fixed["setting"],
        "best_edt": best_edt["setting"],
        "edt_beats_fixed_on_tradeoff": best_edt["tradeoff"] > best_fixed["tradeoff"],
        "edt_on_pareto_front": [s for s in front if s.startswith("EDT")],
        "edt_rouge_l_above_fixed_curve": quality_above_fixed_curve(rows),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    fixed = sorted((r for r in report["settings"] if r["kind"] == "fixed"), key=lambda r: r["temperature"])
    edt = [r for r in report["settings"] if r["kind"] == "edt"]
    ax.plot(
        [100 - r["self_bleu"] for r in fixed],
        [r["rouge_l_f1"] for r in fixed],
        "o-",
        color="tab:blue",
        label="fixed temperature",
    )
    ax.scatter(
        [100 - r["self_bleu"] for r in edt],
        [r["rouge_l_f1"] for r in edt],
        marker="s",
        color="tab:red",
        label="EDT",
        zorder=3,
    )
    for r in fixed + edt:
        label = f"T={r['temperature']:g}" if r["kind"] == "fixed" else f"{r['temperature']:g}/θ{r['theta']:g}"
        ax.annotate(label, (100 - r["self_bleu"], r["rouge_l_f1"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("diversity: 100 - Self-BLEU (higher = more diverse)")
    ax.set_ylabel("quality: ROUGE-L F1")
    w = report["workload"]
    ax.set_title(
        f"EDT vs fixed temperature, {report['model']}\n"
        f"{w['prompts']} Dolly prompts x {w['samples_per_prompt']} samples, max_tokens {w['max_tokens']}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, json_path: Path, png_path: Path | None) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(json_path, report)
    if png_path is not None:
        plot(report, png_path)
