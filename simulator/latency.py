"""Step latency models: how long one engine step takes for a given batch.

Units: tokens in, seconds out. ``step_time`` must return a positive number.

Three sources, all behind :class:`StepLatencyModel`:

1. :class:`simulator.operator_tables.OperatorTableModel`: per-operator GPU tables
   in the LLMServingSim profiler's format, composed the way a vLLM V1 step
   executes a decoder-only model.
2. :class:`LinearStepModel`: a linear model with documented coefficients,
   fitted to an operator table (``lengthwise simulate fit-cost-model``) or to a
   live worker (``lengthwise simulate calibrate``). Stored as JSON.
3. Calibration: :mod:`simulator.calibrate` measures a live vLLM worker and
   produces a :class:`LinearStepModel`.

``load_cost_model(path)`` picks the source: a directory is an operator table,
a ``.json`` file a linear model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

#: The shared folder's measured RTX PRO 6000 operator tables (Llama-3.1-8B, bf16, TP1),
#: relative to the shared data folder.
RTX_PRO_6000_TABLES = "costmodels/llmservingsim_rtxpro6000_llama31_8b"
#: KV cache of that card with Llama-3.1-8B, in tokens, as measured (about 480k): the
#: regime map's roomy GPU.
RTX_PRO_6000_KV_TOKENS = 480_000
#: KV cache of a 24 GB card with the same model, in tokens, as the RTX 4090 run logged:
#: the regime map's memory-bound GPU.
RTX_4090_KV_TOKENS = 41_408


@dataclass(slots=True)
class BatchShape:
    """What one engine step computes.

    ``prefill_chunks[i]`` new prompt tokens of request ``i`` whose KV already
    holds ``prefill_contexts[i]`` tokens; ``num_decode`` sequences generating one
    token each, attending to ``decode_kv_sum`` KV tokens in total.
    """

    prefill_chunks: list[int] = field(default_factory=list)
    prefill_contexts: list[int] = field(default_factory=list)
    num_decode: int = 0
    decode_kv_sum: int = 0
    #: longest and shortest decode context (0: unknown, the batch counts as uniform);
    #: attention over contexts of unequal length costs more than over their mean
    decode_kv_max: int = 0
    decode_kv_min: int = 0

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.prefill_chunks)

    @property
    def num_tokens(self) -> int:
        return sum(self.prefill_chunks) + self.num_decode

    @property
    def num_seqs(self) -> int:
        return len(self.prefill_chunks) + self.num_decode

    def prefill_attention_work(self) -> float:
        """Sum over prefills of query x key pairs: ``c * (k + c / 2)``."""
        return sum(c * (k + c * 0.5) for c, k in zip(self.prefill_chunks, self.prefill_contexts))


class StepLatencyModel(Protocol):
    """``step_time(batch)`` in seconds; postcondition: result > 0."""

    def step_time(self, batch: BatchShape) -> float: ...

    def describe(self) -> dict: ...


# --- source 2: linear model ---------------------------------------------------

#: Feature names of :class:`LinearStepModel`, in coefficient order.
LINEAR_FEATURES: tuple[str, ...] = (
    "intercept",  # fixed cost per step (weights read once, launch overheads), s
    "tokens",  # per scheduled token (dense GEMMs), s/token
    "seqs",  # per scheduled request (logits + sampling), s/request
    "prefill_attn",  # per query x key pair of prefill attention, s/pair
    "decode_kv",  # per KV token read by decode attention, s/token
)


def linear_features(batch: BatchShape) -> tuple[float, ...]:
    return (
        1.0,
        float(batch.num_tokens),
        float(batch.num_seqs),
        batch.prefill_attention_work(),
        float(batch.decode_kv_sum),
    )


@dataclass
class LinearStepModel:
    """``step = sum(coef[f] * feature_f(batch))`` over :data:`LINEAR_FEATURES`.

    Piecewise in the token count: below ``knee_tokens`` the step is
    memory-bound (reading the weights dominates, ``tokens`` matters little),
    above it compute-bound; ``coefficients`` apply below the knee and
    ``coefficients_above_knee`` (if given) above it, each fitted on its own
    regime. Coefficients are non-negative (fitted by NNLS).
    """

    coefficients: dict[str, float]
    coefficients_above_knee: dict[str, float] | None = None
    knee_tokens: int | None = None
    source: str = ""
    fit_quality: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for coefs in (self.coefficients, self.coefficients_above_knee or {}):
            unknown = set(coefs) - set(LINEAR_FEATURES)
            if unknown:
                raise ValueError(f"unknown linear-model features {sorted(unknown)}")
        self._lo = tuple(self.coefficients.get(f, 0.0) for f in LINEAR_FEATURES)
        hi = self.coefficients_above_knee
        self._hi = tuple(hi.get(f, 0.0) for f in LINEAR_FEATURES) if hi else self._lo

    def step_time(self, batch: BatchShape) -> float:
        x = linear_features(batch)
        coefs = self._lo if self.knee_tokens is None or x[1] <= self.knee_tokens else self._hi
        t = sum(c * v for c, v in zip(coefs, x))
        return max(1e-06, t)

    def describe(self) -> dict:
        return {"kind": "linear", **self.to_dict()}

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not k.startswith("_")}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "linear", **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LinearStepModel:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "linear":
            raise ValueError(f"{path}: not a linear cost model (kind={data.get('kind')!r})")
        return cls(
            coefficients=data["coefficients"],
            coefficients_above_knee=data.get("coefficients_above_knee"),
            knee_tokens=data.get("knee_tokens"),
            source=data.get("source", ""),
            fit_quality=data.get("fit_quality", {}),
        )


def fit_linear(
    batches: list[BatchShape],
    times_s: list[float],
    knee_tokens: int | None = None,
    source: str = "",
) -> LinearStepModel:
    """Fit non-negative coefficients, relative-error weighted (each sample / its time)."""
    import numpy as np
    from scipy.optimize import nnls

    if len(batches) != len(times_s) or len(batches) < len(LINEAR_FEATURES):
        raise ValueError("need at least as many measurements as features")
    X = np.array([linear_features(b) for b in batches], dtype=float)
    y = np.array(times_s, dtype=float)

    def solve(mask: np.ndarray) -> dict[str, float]:
        # Scale columns so NNLS is well conditioned, and rows by 1/y so the
        # fit minimises relative error (short decode steps matter as much as
        # long prefills).
        Xm, ym = X[mask], y[mask]
        w = 1.0 / ym
        scale = np.maximum(np.abs(Xm).max(axis=0), 1e-12)
        coef, _ = nnls((Xm / scale) * w[:, None], ym * w)
        return {f: float(c / s) for f, c, s in zip(LINEAR_FEATURES, coef, scale)}

    if knee_tokens is None:
        model = LinearStepModel(solve(np.ones(len(y), bool)), source=source)
    else:
        below = X[:, 1] <= knee_tokens
        if below.sum() < len(LINEAR_FEATURES) or (~below).sum() < len(LINEAR_FEATURES):
            raise ValueError("too few measurements on one side of the knee")
        model = LinearStepModel(solve(below), solve(~below), knee_tokens, source=source)
    pred = np.array([model.step_time(b) for b in batches])
    rel = np.abs(pred - y) / y
    model.fit_quality = {
        "samples": len(y),
        "rel_err_p50": float(np.percentile(rel, 50)),
        "rel_err_p90": float(np.percentile(rel, 90)),
        "rel_err_max": float(rel.max()),
    }
    return model


def sample_batch_shapes(
    n: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    max_context: int,
    seed: int = 0,
) -> list[BatchShape]:
    """Random but realistic step shapes (decode-only, prefill-only, mixed)."""
    import random

    rng = random.Random(seed)
    shapes = []
    for i in range(n):
        kind = i % 3
        nd = 0 if kind == 1 else rng.randint(1, max_num_seqs)
        budget = max_num_batched_tokens - nd
        chunks: list[int] = []
        ctxs: list[int] = []
        if kind != 0 and budget > 0:
            c = int(math.exp(rng.uniform(math.log(16), math.log(max(budget, 17)))))
            chunks = [min(c, budget)]
            ctxs = [rng.choice([0, 0, rng.randint(0, max_context)])]
        kv = nd * int(math.exp(rng.uniform(math.log(16), math.log(max_context))))
        shapes.append(BatchShape(chunks, ctxs, nd, kv))
    return shapes


def load_cost_model(
    path: str | Path, num_layers: int | None = None, step_overhead_s: float = 0.0
) -> StepLatencyModel:
    path = Path(path)
    if path.is_dir():
        from .operator_tables import OperatorTableModel

        return OperatorTableModel(path, num_layers, step_overhead_s=step_overhead_s)
    if path.suffix == ".json":
        return LinearStepModel.load(path)
    raise ValueError(f"{path}: expected an operator-table folder or a linear-model .json")
