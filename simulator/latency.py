"""Step latency models: how long one engine step takes for a given batch.

Units: tokens in, seconds out. ``step_time`` must return a positive number.

Three sources, all behind :class:`StepLatencyModel`:

1. :class:`OperatorTableModel`: per-operator tables in the LLMServingSim
   profiler's format (``*_dense.csv``, ``*_attention.csv``,
   ``*_per_sequence.csv``), composed the way a vLLM V1 step executes a
   decoder-only model (see the class docstring).
2. :class:`LinearStepModel`: a linear model with documented coefficients,
   fitted to an operator table (``lengthwise simulate fit-cost-model``) or to a
   live worker (``lengthwise simulate calibrate``). Stored as JSON.
3. Calibration: :mod:`simulator.calibrate` measures a live vLLM worker and
   produces a :class:`LinearStepModel`.

``load_cost_model(path)`` picks the source: a directory is an operator table,
a ``.json`` file a linear model.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

#: The shared folder's measured RTX PRO 6000 operator tables (Llama-3.1-8B, bf16, TP1),
#: relative to the shared data folder.
RTX_PRO_6000_TABLES = "costmodels/llmservingsim_rtxpro6000_llama31_8b"


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


# --- interpolation helpers ---------------------------------------------------


def _bracket(keys: list[float], x: float) -> tuple[int, int, float]:
    """Indices ``(lo, hi)`` and the weight of ``hi`` for linear interpolation.

    Below the first key the value is held flat (tables start at their smallest
    meaningful size); above the last key it is extrapolated linearly from the
    last two keys, because batches larger than the profiled grid do occur.
    """
    n = len(keys)
    if n == 1 or x <= keys[0]:
        return 0, 0, 0.0
    if x >= keys[-1]:
        lo, hi = n - 2, n - 1
    else:
        hi = bisect.bisect_right(keys, x)
        lo = hi - 1
    k0, k1 = keys[lo], keys[hi]
    return lo, hi, (x - k0) / (k1 - k0)


@dataclass(frozen=True, slots=True)
class Table1D:
    xs: list[float]
    ys: list[float]

    def __call__(self, x: float) -> float:
        lo, hi, w = _bracket(self.xs, x)
        ys = self.ys
        return ys[lo] + (ys[hi] - ys[lo]) * w


class NestedTable:
    """Interpolates a sparse grid over several axes, one axis at a time.

    The profiler's attention grid is not rectangular: it is the union of a
    power-of-two grid and a 1.5x "skew" grid, and which ``(n_decode,
    kv_decode)`` points exist depends on ``(prefill_chunk, kv_prefill)``. So we
    bracket the first axis among its values, then bracket the next axis among
    the values that exist under each bracketing point, and so on (recursive
    multilinear interpolation).
    """

    def __init__(self, points: dict[tuple[float, ...], float]) -> None:
        if not points:
            raise ValueError("empty table")
        self.depth = len(next(iter(points)))
        self._root = self._build(list(points.items()), 0)

    def _build(self, items: list[tuple[tuple[float, ...], float]], axis: int):
        if axis == self.depth - 1:
            items = sorted((k[axis], v) for k, v in items)
            return Table1D([k for k, _ in items], [v for _, v in items])
        groups: dict[float, list] = defaultdict(list)
        for k, v in items:
            groups[k[axis]].append((k, v))
        keys = sorted(groups)
        return (keys, [self._build(groups[k], axis + 1) for k in keys])

    def __call__(self, *x: float) -> float:
        return self._eval(self._root, x, 0)

    def _eval(self, node, x: tuple[float, ...], axis: int) -> float:
        if axis == self.depth - 1:
            return node(x[axis])
        keys, children = node
        lo, hi, w = _bracket(keys, x[axis])
        v0 = self._eval(children[lo], x, axis + 1)
        if w == 0.0:
            return v0
        v1 = self._eval(children[hi], x, axis + 1)
        return v0 + (v1 - v0) * w


# --- source 1: operator tables -----------------------------------------------

#: Dense operators executed once per decoder layer, and how many times.
#: A Llama layer runs input_layernorm and post_attention_layernorm: 2 x layernorm.
LAYER_OPS: dict[str, int] = {
    "layernorm": 2,
    "qkv_proj": 1,
    "rotary_emb": 1,
    "o_proj": 1,
    "gate_up_proj": 1,
    "act_fn": 1,
    "down_proj": 1,
}
#: Dense operators executed once per step (not per layer).
MODEL_OPS: tuple[str, ...] = ("embedding", "final_layernorm")
#: Operators timed by the number of sequences (logits are computed for one
#: position of every scheduled request in V1, partial prefills included).
SEQUENCE_OPS: tuple[str, ...] = ("lm_head", "sampler")


def _find(folder: Path, suffix: str) -> Path:
    hits = sorted(folder.glob(f"*{suffix}"))
    if not hits:
        raise FileNotFoundError(f"no *{suffix} in {folder}")
    return hits[0]


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class OperatorTableModel:
    """Step time from per-operator GPU profiles (LLMServingSim format).

    A vLLM V1 step is one forward pass over the flattened batch of ``T``
    scheduled tokens (prefill chunks plus one token per decode), then logits
    and sampling for the ``S`` scheduled requests::

        step = num_layers * (dense_layer(T) + attention(pc, kp, nd, kvd))
               + embedding(T) + final_layernorm(T) + lm_head(S) + sampler(S)
               + step_overhead

    * ``dense_layer(T)``: the layer's dense operators (:data:`LAYER_OPS`),
      each interpolated in ``T``.
    * ``attention``: one layer's attention for a batch with prefill chunk
      tokens ``pc`` over ``kp`` cached tokens and ``nd`` decodes of mean
      context ``kvd``. The table profiles *one* prefill; several prefills in
      one step are folded into one with the same total chunk ``pc = sum c_i``
      and a cached length ``kp`` that preserves the query x key work
      ``sum c_i (k_i + c_i / 2)`` (clamped at 0).
    * ``step_overhead``: fixed host-side time per step (scheduling, input
      preparation); 0 by default because the tables time GPU operators only.

    Results are cached by the exact integer shape, so repeated shapes (common
    in decode-only steady states) cost one dict lookup.
    """

    def __init__(self, folder: str | Path, num_layers: int, step_overhead_s: float = 0.0) -> None:
        folder = Path(folder)
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.folder = folder
        self.num_layers = num_layers
        self.step_overhead_s = step_overhead_s
        dense = _read_rows(_find(folder, "_dense.csv"))
        by_op: dict[str, dict[float, float]] = defaultdict(dict)
        for row in dense:
            by_op[row["layer"]][float(row["tokens"])] = float(row["time_us"])
        missing = [op for op in (*LAYER_OPS, *MODEL_OPS) if op not in by_op]
        if missing:
            raise ValueError(f"dense table lacks operators {missing}")
        self._layer_dense = self._combine({op: by_op[op] for op in LAYER_OPS}, LAYER_OPS)
        self._model_dense = self._combine({op: by_op[op] for op in MODEL_OPS}, None)
        per_seq = _read_rows(_find(folder, "_per_sequence.csv"))
        seq_ops: dict[str, dict[float, float]] = defaultdict(dict)
        for row in per_seq:
            seq_ops[row["layer"]][float(row["sequences"])] = float(row["time_us"])
        self._per_seq = self._combine({op: seq_ops[op] for op in SEQUENCE_OPS if op in seq_ops}, None)
        attn_rows = _read_rows(_find(folder, "_attention.csv"))
        points = {
            (
                float(r["prefill_chunk"]),
                float(r["kv_prefill"]),
                float(r["n_decode"]),
                float(r["kv_decode"]),
            ): float(r["time_us"])
            for r in attn_rows
        }
        self._attention = NestedTable(points)
        self._cache: dict[tuple[int, int, int, int, int], float] = {}
        self._dense_cache: dict[tuple[int, int], float] = {}
        self._decode_tables: dict[int, Table1D] = {}

    @staticmethod
    def _combine(tables: dict[str, dict[float, float]], counts: dict[str, int] | None) -> Table1D:
        """Sum several operators onto the union of their grids (each interpolated)."""
        xs = sorted({x for t in tables.values() for x in t})
        fns = {op: Table1D(sorted(t), [t[k] for k in sorted(t)]) for op, t in tables.items()}
        ys = [sum((counts[op] if counts else 1) * fn(x) for op, fn in fns.items()) for x in xs]
        return Table1D(xs, ys)

    def attention_us(self, pc: float, kp: float, nd: float, kvd: float) -> float:
        if pc == 0 and kp == 0 and nd >= 1 and nd == int(nd):
            return max(0.0, self._decode_attention(int(nd))(kvd))
        return max(0.0, self._attention(pc, kp, nd, kvd))

    def _decode_attention(self, nd: int) -> Table1D:
        """Decode-only attention for ``nd`` sequences as a 1-D table over KV length.

        Equal to the nested interpolation (linear in n_decode at each KV grid
        point), precomputed once per batch size because decode-only steps are
        the bulk of a simulation.
        """
        table = self._decode_tables.get(nd)
        if table is None:
            keys, children = self._attention._root  # type: ignore[misc]
            lo, hi, w = _bracket(keys, 0.0)
            _kp_keys, kp_children = children[lo]
            n_keys, n_children = kp_children[0]
            lo, hi, w = _bracket(n_keys, float(nd))
            a, b = n_children[lo], n_children[hi]
            xs = sorted(set(a.xs) | set(b.xs))
            table = Table1D(xs, [a(x) + (b(x) - a(x)) * w for x in xs])
            self._decode_tables[nd] = table
        return table

    def step_time(self, batch: BatchShape) -> float:
        pc = sum(batch.prefill_chunks)
        nd = batch.num_decode
        n_prefills = len(batch.prefill_chunks)
        if n_prefills == 0:
            kp = 0
        elif n_prefills == 1:
            kp = batch.prefill_contexts[0]
        else:
            kp = max(0, round((batch.prefill_attention_work() - pc * pc * 0.5) / pc))
        kvd = round(batch.decode_kv_sum / nd) if nd else 0
        seqs = n_prefills + nd
        key = (pc, kp, nd, kvd, seqs)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        tokens = pc + nd
        dense_key = (tokens, seqs)
        dense = self._dense_cache.get(dense_key)
        if dense is None:
            dense = (
                self.num_layers * self._layer_dense(tokens)
                + self._model_dense(tokens)
                + self._per_seq(seqs)
            )
            self._dense_cache[dense_key] = dense
        total_us = dense + self.num_layers * self.attention_us(pc, kp, nd, kvd)
        seconds = max(total_us * 1e-6 + self.step_overhead_s, 1e-6)
        if len(self._cache) < 2_000_000:
            self._cache[key] = seconds
        return seconds

    def describe(self) -> dict:
        return {
            "kind": "operator-table",
            "path": str(self.folder),
            "num_layers": self.num_layers,
            "step_overhead_s": self.step_overhead_s,
        }


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
        if num_layers is None:
            raise ValueError("--num-layers is required with an operator-table cost model")
        return OperatorTableModel(path, num_layers, step_overhead_s)
    if path.suffix == ".json":
        return LinearStepModel.load(path)
    raise ValueError(f"{path}: expected an operator-table folder or a linear-model .json")
