"""CASTILLO's per-model analysis for a profile, with the served model beside CASTILLO's models.

Per corpus: prompts, mean length, std of lengths, within-prompt std and coefficient of
variation (CV = std / mean over a prompt's samples), degeneration rate. CASTILLO's
models are summarised twice: as published (15,000-token cap, the paper's rule) and
with every sampled length clipped at the profile's ``max_tokens`` (the rule scaled to
that cap), which is the like-for-like comparison with a capped profile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from predictor.cleaning import degenerate_mask
from predictor.errors import CastilloDataError
from predictor.loader import load_castillo, normalize_rows
from predictor.profiling.degeneration import flag_degenerate, loops
from predictor.profiling.run import ROWS_FILE, RUN_FILE, SAMPLES_FILE, SKIPPED_FILE, read_jsonl

SHARED_CORPORA = ("DollyDataset", "Alpaca")


def load_profile(path: Path | str) -> pd.DataFrame:
    """A profile's rows (folder with rows.jsonl, or the file) as a normalized CASTILLO frame."""
    path = Path(path)
    rows = read_jsonl(path / ROWS_FILE if path.is_dir() else path)
    if not rows:
        raise ValueError(f"no finished profile rows in {path}")
    frame = normalize_rows(pd.DataFrame.from_records(rows), origin=str(path))
    return frame


def profile_cap(frame: pd.DataFrame) -> int:
    caps = frame["max_tokens"].dropna().unique() if "max_tokens" in frame.columns else []
    if len(caps) != 1:
        raise ValueError(f"a profile has one max_tokens cap, found {list(caps)}")
    return int(caps[0])


def clip_to_cap(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Rows as if generation had stopped at ``cap`` new tokens."""
    frame = frame.copy()
    frame["output_sizes"] = [np.minimum(np.asarray(s, float), cap) for s in frame["output_sizes"]]
    frame["output_mean"] = [float(s.mean()) for s in frame["output_sizes"]]
    frame["output_std"] = [float(s.std()) for s in frame["output_sizes"]]
    return frame


def _figures(frame: pd.DataFrame, degenerate: np.ndarray) -> dict:
    if frame.empty:
        return {"prompts": 0}
    means = frame["output_mean"].to_numpy(float)
    stds = frame["output_std"].to_numpy(float)
    pooled = np.concatenate([np.asarray(s, float) for s in frame["output_sizes"]])
    cv = np.divide(stds, means, out=np.zeros_like(stds), where=means > 0)
    return {
        "prompts": len(frame),
        "length_mean": float(pooled.mean()),
        "length_std": float(pooled.std()),
        "length_p50": float(np.percentile(pooled, 50)),
        "length_p90": float(np.percentile(pooled, 90)),
        "prompt_mean_std": float(means.std()),
        "within_prompt_std_mean": float(stds.mean()),
        "within_prompt_cv_mean": float(cv.mean()),
        "within_prompt_cv_median": float(np.median(cv)),
        "degeneration_rate": float(np.mean(degenerate)),
        "looping_rate": (float(np.mean([loops(str(t)) for t in frame["longest_response"]]))
                         if "longest_response" in frame.columns else None),
        "input_size_mean": float(frame["input_size"].mean()) if "input_size" in frame else None,
    }


def per_corpus(frame: pd.DataFrame, degenerate: np.ndarray) -> dict:
    out = {"all": _figures(frame, degenerate)}
    if "dataset" in frame.columns:
        for corpus in sorted(frame["dataset"].unique()):
            mask = (frame["dataset"] == corpus).to_numpy()
            out[corpus] = _figures(frame[mask], degenerate[mask])
    return out


def castillo_models(castillo: pd.DataFrame, cap: int) -> dict:
    out = {}
    clipped_all = clip_to_cap(castillo, cap)
    for model in sorted(castillo["model"].unique()):
        mask = (castillo["model"] == model).to_numpy()
        rows, clipped = castillo[mask].reset_index(drop=True), clipped_all[mask].reset_index(drop=True)
        published = np.logical_or(*degenerate_mask(rows))
        at_cap = np.logical_or(*flag_degenerate(clipped, cap))
        shared = clipped["dataset"].isin(SHARED_CORPORA).to_numpy()
        out[model] = {
            "published": _figures(rows, published),
            "clipped_to_profile_cap": _figures(clipped, at_cap),
            "clipped_dolly_alpaca": _figures(clipped[shared], at_cap[shared]),
        }
    return out


def _rank(value: float, others: list[float]) -> str:
    return f"{1 + sum(v > value for v in others)} of {len(others) + 1}"


def run_progress(directory: Path) -> dict:
    """How far a run got, from its logs: finished prompts and completions, and throughput."""
    samples = read_jsonl(directory / SAMPLES_FILE)
    out = {"rows": len(read_jsonl(directory / ROWS_FILE)),
           "skipped": len(read_jsonl(directory / SKIPPED_FILE)), "samples": len(samples)}
    if samples:
        tokens = sum(int(r["tokens"]) for r in samples)
        began = min(float(r["unix"]) - float(r["seconds"]) for r in samples)
        span = max(float(r["unix"]) for r in samples) - began
        out.update({"completion_tokens": tokens, "span_seconds": round(span, 1),
                    "tokens_per_second": round(tokens / span, 2) if span > 0 else None,
                    "mean_tokens_per_sample": round(tokens / len(samples), 1),
                    "mean_seconds_per_sample": round(float(np.mean([r["seconds"] for r in samples])), 1),
                    "cap_hit_share": round(float(np.mean([r["finish_reason"] == "length" for r in samples])), 3)})
    return out


def build_report(directory: Path | str, castillo_source: Path | str | None = None) -> dict:
    directory = Path(directory)
    progress = run_progress(directory) if directory.is_dir() else None
    if progress is not None and progress["rows"] == 0:
        run = directory / RUN_FILE
        info = __import__("json").loads(run.read_text()) if run.exists() else None
        out = {"served_model": {"prompts": 0, "note": "no prompt has all its samples yet"},
               "progress": progress, "run": info}
        if info is not None:  # CASTILLO's side of the comparison, at the run's cap
            try:
                out["castillo_models"] = castillo_models(load_castillo(castillo_source),
                                                         int(info["identity"]["max_tokens"]))
            except CastilloDataError as exc:
                out["castillo_error"] = str(exc)
        return out
    profile = load_profile(directory)
    cap = profile_cap(profile)
    cap_hit, high_variance = flag_degenerate(profile, cap)
    degenerate = cap_hit | high_variance
    skipped = read_jsonl(directory / SKIPPED_FILE) if directory.is_dir() else []
    model = str(profile["model"].iloc[0])
    served = {
        "model": model,
        "max_tokens": cap,
        "samples_per_prompt": int(profile["output_sizes"].map(len).median()),
        "decoding": {k: profile[k].iloc[0].item() for k in ("temp", "top_p", "top_k")},
        "prompts_skipped": len(skipped),
        "cap_hit_rate": float(np.mean(cap_hit)),
        "high_variance_rate": float(np.mean(high_variance)),
        "gen_time_mean_s": float(profile["gen_time"].mean()),
        "degeneration_rule": (f"CASTILLO's rule scaled to max_tokens={cap}: a completion hit the cap, "
                              f"or std > 2 x mean with longest > {cap} x 8499/15000"),
        "looping_rule": ("text check: under half of the longest response's last 60 words' "
                         "3-grams are distinct (predictor.profiling.degeneration.loops)"),
        "corpora": per_corpus(profile, degenerate),
    }
    try:
        castillo = load_castillo(castillo_source)
    except CastilloDataError as exc:  # no local copy and no network: the served model's figures stand alone
        return {"served_model": served, "castillo_models": {}, "castillo_error": str(exc)}
    models = castillo_models(castillo, cap)
    shared_mask = profile["dataset"].isin(SHARED_CORPORA).to_numpy()
    served_shared = _figures(profile[shared_mask], degenerate[shared_mask])
    comparison = {"basis": f"Dolly+Alpaca prompts, lengths clipped at {cap}",
                  model: served_shared}
    for name, figures in models.items():
        comparison[name] = figures["clipped_dolly_alpaca"]
    others = [f for n, f in comparison.items() if n not in ("basis", model) and f.get("prompts")]
    if served_shared.get("prompts"):
        served["placement_dolly_alpaca"] = {
            "length_mean_rank_longest_first": _rank(served_shared["length_mean"],
                                                    [f["length_mean"] for f in others]),
            "within_prompt_cv_rank_highest_first": _rank(served_shared["within_prompt_cv_mean"],
                                                         [f["within_prompt_cv_mean"] for f in others]),
        }
    run = directory / RUN_FILE
    return {"served_model": served, "progress": progress,
            "comparison_dolly_alpaca_clipped": comparison,
            "castillo_models": models,
            "run": __import__("json").loads(run.read_text()) if run.exists() else None}


def write_plots(directory: Path | str, folder: Path, castillo_source: Path | str | None = None) -> list[Path]:
    """Length histograms per corpus, and mean length / CV beside CASTILLO's models (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    profile = load_profile(directory)
    cap = profile_cap(profile)
    model = str(profile["model"].iloc[0])
    written = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for corpus in sorted(profile["dataset"].unique()):
        sizes = np.concatenate([np.asarray(s) for s in profile.loc[profile["dataset"] == corpus, "output_sizes"]])
        ax.hist(sizes, bins=40, range=(0, cap), histtype="step", density=True, label=corpus)
    ax.set(xlabel="completion tokens", ylabel="density", title=f"{model}: lengths per corpus (cap {cap})")
    ax.legend(fontsize=8)
    written.append(folder / "length_by_corpus.png")
    fig.tight_layout(); fig.savefig(written[-1], dpi=110); plt.close(fig)

    try:
        castillo = clip_to_cap(load_castillo(castillo_source), cap)
    except CastilloDataError:
        return written
    castillo = castillo[castillo["dataset"].isin(SHARED_CORPORA)]
    served = profile[profile["dataset"].isin(SHARED_CORPORA)]
    groups = {m.split("--")[-1]: castillo[castillo["model"] == m] for m in sorted(castillo["model"].unique())}
    groups[f"{model} (served)"] = served
    names = list(groups)
    cvs = [np.divide(g["output_std"], g["output_mean"]).replace([np.inf], np.nan).dropna().to_numpy()
           for g in groups.values()]
    means = [float(np.concatenate([np.asarray(s) for s in g["output_sizes"]]).mean()) if len(g) else 0.0
             for g in groups.values()]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    colors = ["tab:red" if "(served)" in n else "tab:blue" for n in names]
    a1.barh(names, means, color=colors)
    a1.set(xlabel=f"mean completion tokens (clipped at {cap})", title="Dolly+Alpaca mean length")
    a2.boxplot(cvs, orientation="horizontal", tick_labels=names, showfliers=False)
    a2.set(xlabel="within-prompt CV (std/mean)", title="Within-prompt variability")
    written.append(folder / "served_vs_castillo.png")
    fig.tight_layout(); fig.savefig(written[-1], dpi=110); plt.close(fig)
    return written
