"""Step time from LLMServingSim's per-operator GPU profiles (any hardware x model folder).

The profiler (casys-kaist/LLMServingSim, ``llmservingsim/profiler``) times one
decoder layer's operators inside vLLM and writes, per tensor-parallel degree:

* ``dense.csv`` (``layer, tokens, time_us``): the dense operators by token count;
* ``attention.csv`` (``prefill_chunk, kv_prefill, n_decode, kv_decode, time_us``):
  one layer's attention on a sparse 4-D grid;
* ``per_sequence.csv`` (``layer, sequences, time_us``): ``lm_head`` and ``sampler``;
* optionally ``skew_fit.csv``: the per-bucket skew coefficients (below);
* ``meta.yaml``: how it was profiled, including the pooled skew coefficient.

Two layouts load: the profiler's own (``meta.yaml`` and ``tp<N>/<category>.csv``
under a hardware/model/variant folder) and the flattened one the shared folder
uses (``perf_<HW>_<org>_<model>_<variant>_meta.yaml`` and
``..._tp<N>_<category>.csv``). Mixture-of-experts tables (``moe.csv``) are not
modelled and are refused with a clear error.

Composition of one vLLM V1 step (a forward pass over the flattened batch of
``T`` scheduled tokens, then logits and sampling for its ``S`` requests)::

    step = L * (dense_layer(T) + attention) + embedding(T) + final_layernorm(T)
           + lm_head(S) + sampler(S) + step_overhead

* ``dense_layer(T)``: every per-layer dense operator of the table, each
  interpolated in ``T``; a pre-norm decoder layer runs its ``layernorm`` twice
  (before attention and before the MLP).
* ``attention``: the table at ``(pc, kp, nd, kvd)``: prefill chunk tokens over
  ``kp`` cached tokens plus ``nd`` decodes of mean context ``kvd``. The table
  profiles *one* prefill; several prefills in one step are folded into one with
  the same total chunk ``pc = sum c_i`` and a cached length ``kp`` that keeps the
  query x key work ``sum c_i (k_i + c_i / 2)``.
* **Skew**: a decode batch whose contexts differ costs more than a uniform batch
  at their mean (FlashAttention's varlen kernel pays tile padding and SM
  imbalance). As LLMServingSim does, ``attention = t(kvd) + alpha * (t(kv_max) -
  t(kvd))``, with ``alpha`` from the profile's skew fit: the bucket of the batch
  (prefill chunk, decode count, skew rate, longest context, prefill context) in
  ``skew_fit.csv`` when the folder has it, else the pooled ``alpha_default`` of
  ``meta.yaml``, else 0 (nothing measured, nothing added). The coefficient is
  the profiler's measurement on the GPU, not a parameter fitted to any run.
* ``L``: the real model's layer count (the profile times one layer);
  :data:`MODEL_LAYERS` knows common models, else give ``num_layers``.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from .interpolation import NestedTable, Table1D, _bracket
from .latency import BatchShape

#: Decoder layers of models whose tables are likely to be met (the profile times one layer).
MODEL_LAYERS: dict[str, int] = {
    "Llama-3.1-8B": 32,
    "Llama-3.1-70B": 80,
    "Llama-3.2-1B": 16,
    "Llama-3.2-3B": 28,
    "Llama-3.3-70B": 80,
    "Mistral-7B": 32,
    "Qwen2.5-7B": 28,
    "Qwen2.5-14B": 48,
    "Qwen2.5-32B": 64,
}
#: Dense operators that run once per step, not once per layer.
MODEL_OPS: tuple[str, ...] = ("embedding", "final_layernorm")
#: Operators timed by the number of sequences (V1 computes logits for one position of
#: every scheduled request, partial prefills included).
SEQUENCE_OPS: tuple[str, ...] = ("lm_head", "sampler")
#: How many times a per-layer operator runs in a pre-norm decoder layer (others: once).
LAYER_OP_COUNTS: dict[str, int] = {"layernorm": 2}
#: The skew buckets LLMServingSim uses when the meta predates ``bucket_axes``.
_DEFAULT_SKEW_AXES: dict = {
    "n_bins": (0, 2, 4, 8, 16, 32, 64, 128, 1_000_000),
    "n_labels": ("n<=2", "n<=4", "n<=8", "n<=16", "n<=32", "n<=64", "n<=128", "n>128"),
    "kv_big_bins": (0, 1024, 4096, 16384, 1_000_000_000),
    "kv_big_labels": ("kvB<=1k", "kvB<=4k", "kvB<=16k", "kvB>16k"),
    "skew_rate_bins": (-0.01, 0.05, 0.15, 0.40, 0.70, 1.01),
    "skew_rate_labels": ("sr<=5%", "sr<=15%", "sr<=40%", "sr<=70%", "sr>70%"),
    "kp_bins": (-1, 0, 2048, 1_000_000_000),
    "kp_labels": ("kp=0", "kp<=2k", "kp>2k"),
}


@dataclass(frozen=True)
class TableFolder:
    """Where one tensor-parallel degree's tables are, in either layout."""

    folder: Path
    tp: int
    dense: Path
    attention: Path
    per_sequence: Path
    meta: Path | None
    skew_fit: Path | None

    @classmethod
    def find(cls, folder: str | Path, tp: int = 1) -> TableFolder:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"operator-table folder not found: {folder}")
        nested = folder / f"tp{tp}"
        if (nested / "dense.csv").is_file():
            def cat(name: str) -> Path | None:
                path = nested / f"{name}.csv"
                return path if path.is_file() else None
            meta = folder / "meta.yaml"
            meta_path = meta if meta.is_file() else None
        else:
            def cat(name: str) -> Path | None:
                hits = sorted(folder.glob(f"*_tp{tp}_{name}.csv")) or (
                    sorted(folder.glob(f"*_{name}.csv")) if tp == 1 else [])
                return hits[0] if hits else None
            metas = sorted(folder.glob("*meta.yaml"))
            meta_path = metas[0] if metas else None
        if cat("moe") is not None:
            raise ValueError(f"{folder}: mixture-of-experts tables (moe.csv) are not modelled")
        found = {name: cat(name) for name in ("dense", "attention", "per_sequence")}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(f"{folder}: no tp{tp} {', '.join(missing)} table")
        return cls(folder, tp, found["dense"], found["attention"], found["per_sequence"],
                   meta_path, cat("skew_fit"))

    def read_meta(self) -> dict:
        if self.meta is None:
            return {}
        return yaml.safe_load(self.meta.read_text(encoding="utf-8")) or {}


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def model_layers(model: str | None) -> int | None:
    """The layer count of a known model name (``meta-llama/Llama-3.1-8B`` or a part of it)."""
    if not model:
        return None
    name = model.split("/")[-1]
    for known, layers in MODEL_LAYERS.items():
        if re.search(rf"(^|[-_]){re.escape(known)}($|[-_])", name, re.IGNORECASE):
            return layers
    return None


def _label(bins, labels, value) -> str:
    for i, label in enumerate(labels):
        if value <= bins[i + 1]:
            return label
    return labels[-1]


@dataclass(frozen=True)
class SkewFit:
    """The profile's skew coefficient: per bucket when measured, else pooled."""

    alpha_default: float = 0.0
    by_bucket: dict | None = None
    axes: dict | None = None

    @classmethod
    def from_meta(cls, meta: dict, tp: int, bucket_csv: Path | None) -> SkewFit:
        block = meta.get("skew_fit") or {}
        if not block.get("enabled"):
            return cls()
        per_tp = block.get("per_tp") or {}
        entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
        alpha = float(entry.get("alpha_default", block.get("alpha_default", 0.0)))
        buckets = None
        if bucket_csv is not None:
            buckets = {}
            for row in _read_rows(bucket_csv):
                key = row.get("raw_key") or (
                    f"pc={int(float(row['pc']))}|{row['n_label']}|{row['skew_rate_label']}"
                    f"|{row['kv_big_label']}|{row['kp_label']}")
                buckets[key] = float(row["alpha"])
        axes = entry.get("bucket_axes") or block.get("bucket_axes") or _DEFAULT_SKEW_AXES
        return cls(alpha, buckets, axes)

    def alpha(self, pc: int, n: int, kv_mean: int, kv_max: int, kv_min: int, kp: int) -> float:
        if not self.by_bucket:
            return self.alpha_default
        axes = self.axes or _DEFAULT_SKEW_AXES
        gap = kv_max - kv_min
        rate = min(1.0, max(0.0, (kv_mean - kv_min) / gap)) if gap > 0 else 0.5
        key = (f"pc={pc}|{_label(axes['n_bins'], axes['n_labels'], n)}"
               f"|{_label(axes['skew_rate_bins'], axes['skew_rate_labels'], rate)}"
               f"|{_label(axes['kv_big_bins'], axes['kv_big_labels'], kv_max)}"
               f"|{_label(axes['kp_bins'], axes['kp_labels'], kp)}")
        return self.by_bucket.get(key, self.alpha_default)


class OperatorTableModel:
    """Step time from one operator-table folder (see the module docstring).

    Results are cached by the exact integer shape, so repeated shapes (common in
    decode-only steady states) cost one dict lookup.
    """

    def __init__(self, folder: str | Path, num_layers: int | None = None, *, tp: int = 1,
                 step_overhead_s: float = 0.0, skew: bool = True) -> None:
        tables = TableFolder.find(folder, tp)
        meta = tables.read_meta()
        self.model_name = meta.get("model")
        self.hardware = meta.get("hardware") or meta.get("gpu")
        if num_layers is None:
            num_layers = model_layers(self.model_name)
            if num_layers is None:
                raise ValueError(f"{folder}: unknown model {self.model_name!r}; give its "
                                 "decoder layer count (--num-layers)")
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.folder = Path(folder)
        self.tables = tables
        self.num_layers = num_layers
        self.step_overhead_s = step_overhead_s
        self.skew = SkewFit.from_meta(meta, tp, tables.skew_fit) if skew else SkewFit()
        by_op: dict[str, dict[float, float]] = defaultdict(dict)
        for row in _read_rows(tables.dense):
            by_op[row["layer"]][float(row["tokens"])] = float(row["time_us"])
        missing = [op for op in MODEL_OPS if op not in by_op]
        if missing:
            raise ValueError(f"dense table lacks operators {missing}")
        layer_ops = {op: LAYER_OP_COUNTS.get(op, 1) for op in by_op if op not in MODEL_OPS}
        if not layer_ops:
            raise ValueError("dense table has no per-layer operators")
        self.layer_ops = layer_ops
        self._layer_dense = self._combine({op: by_op[op] for op in layer_ops}, layer_ops)
        self._model_dense = self._combine({op: by_op[op] for op in MODEL_OPS}, None)
        seq_ops: dict[str, dict[float, float]] = defaultdict(dict)
        for row in _read_rows(tables.per_sequence):
            seq_ops[row["layer"]][float(row["sequences"])] = float(row["time_us"])
        present = {op: seq_ops[op] for op in SEQUENCE_OPS if op in seq_ops}
        if not present:
            raise ValueError("per-sequence table has neither lm_head nor sampler")
        self._per_seq = self._combine(present, None)
        points = {
            (float(r["prefill_chunk"]), float(r["kv_prefill"]), float(r["n_decode"]),
             float(r["kv_decode"])): float(r["time_us"])
            for r in _read_rows(tables.attention)
        }
        self._attention = NestedTable(points)
        self._cache: dict[tuple[int, ...], float] = {}
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
        skew = self.skew
        kvx = (batch.decode_kv_max if nd > 1 and batch.decode_kv_max > kvd
               and (skew.alpha_default or skew.by_bucket) else 0)
        kvn = batch.decode_kv_min if kvx and skew.by_bucket else 0
        seqs = n_prefills + nd
        key = (pc, kp, nd, kvd, seqs, kvx, kvn)
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
        attn = self.attention_us(pc, kp, nd, kvd)
        if kvx:
            alpha = self.skew.alpha(pc, nd, kvd, kvx, kvn, kp)
            if alpha:
                t_max = self.attention_us(pc, kp, nd, kvx)
                if t_max > attn:
                    attn += alpha * (t_max - attn)
        total_us = dense + self.num_layers * attn
        seconds = max(total_us * 1e-6 + self.step_overhead_s, 1e-6)
        if len(self._cache) < 2_000_000:
            self._cache[key] = seconds
        return seconds

    def describe(self) -> dict:
        return {
            "kind": "operator-table",
            "path": str(self.folder),
            "hardware": self.hardware,
            "model": self.model_name,
            "tp": self.tables.tp,
            "num_layers": self.num_layers,
            "skew_alpha_default": self.skew.alpha_default,
            "skew_buckets": len(self.skew.by_bucket or {}),
            "step_overhead_s": self.step_overhead_s,
        }
