"""Cost models: interpolation on operator tables, composition of a step, linear fits."""

from __future__ import annotations

import csv

import pytest

from lengthwise.common.paths import shared_dir
from simulator.interpolation import NestedTable, Table1D
from simulator.latency import (
    BatchShape,
    LinearStepModel,
    fit_linear,
    load_cost_model,
    sample_batch_shapes,
)
from simulator.operator_tables import OperatorTableModel

TABLES = shared_dir() / "costmodels" / "llmservingsim_rtxpro6000_llama31_8b"


def test_table1d_interpolates_holds_and_extrapolates():
    t = Table1D([1, 2, 4], [10, 20, 30])
    assert t(2) == 20
    assert t(3) == 25
    assert t(0.5) == 10  # held flat below the grid
    assert t(6) == 40  # extrapolated from the last segment


def test_nested_table_on_a_sparse_grid():
    # axis-2 points differ under each axis-1 point, as in the attention table
    pts = {(0, 0): 0.0, (0, 10): 10.0, (10, 0): 100.0, (10, 5): 150.0, (10, 20): 300.0}
    t = NestedTable(pts)
    for k, v in pts.items():
        assert t(*k) == pytest.approx(v)
    # halfway on axis 1, x2 = 10: (10 + interp(10 under 10: 150 + 150*5/15 = 200)) / 2
    assert t(5, 10) == pytest.approx((10.0 + 200.0) / 2)


def _write_tables(folder):
    ops = ["layernorm", "qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn",
           "down_proj", "embedding", "final_layernorm"]
    with open(folder / "x_tp1_dense.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "tokens", "time_us"])
        for op in ops:
            for tok in (1, 100):
                w.writerow([op, tok, tok])  # 1 us per token per op
    with open(folder / "x_tp1_per_sequence.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "sequences", "time_us"])
        for s in (1, 10):
            w.writerow(["lm_head", s, 100])
            w.writerow(["sampler", s, 10 * s])
    with open(folder / "x_tp1_attention.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us"])
        for pc in (0, 100):
            for kp in ((0,) if pc == 0 else (0, 100)):
                for nd in (0, 10):
                    for kv in ((0,) if nd == 0 else (10, 1000)):
                        if pc == 0 and nd == 0:
                            continue
                        w.writerow([pc, kp, nd, kv, pc + kp + nd * kv / 10])


def test_operator_table_step_composition(tmp_path):
    _write_tables(tmp_path)
    model = OperatorTableModel(tmp_path, num_layers=4)
    # 5 decodes of context 100 each: T = 5 tokens
    step = model.step_time(BatchShape([], [], 5, 500))
    layer_dense = 8 * 5  # 7 ops, layernorm twice, 1 us/token
    attention = 5 * 100 / 10  # interpolated on kv_decode, then n_decode
    # attention at nd=5 interpolates between nd=0 (absent: held) ... check value directly
    attn = model.attention_us(0, 0, 5, 100)
    expected_us = 4 * (layer_dense + attn) + 2 * 5 + 100 + 10 * 5
    assert step == pytest.approx(expected_us * 1e-6)
    assert attn == pytest.approx(10 * 100 / 10 * 1.0)  # nd below grid holds at nd=10
    assert attention > 0
    # one prefill of 100 tokens after 100 cached, no decodes
    pre = model.step_time(BatchShape([100], [100], 0, 0))
    assert pre == pytest.approx((4 * (8 * 100 + 200) + 2 * 100 + 100 + 10) * 1e-6)


def test_two_prefills_fold_into_one_with_equal_attention_work(tmp_path):
    _write_tables(tmp_path)
    model = OperatorTableModel(tmp_path, num_layers=1)
    one = model.step_time(BatchShape([100], [50], 0, 0))
    # 50 + 50 tokens with contexts chosen so sum c(k + c/2) equals 100*(50+50)
    two = model.step_time(BatchShape([50, 50], [50, 100], 0, 0))
    assert two == pytest.approx(one + 10e-6)  # the extra sequence costs one sampler row


def test_real_operator_tables_are_monotone_in_batch_size():
    if not TABLES.exists():
        pytest.skip("shared cost model not present")
    model = load_cost_model(TABLES, num_layers=32)
    decode = [model.step_time(BatchShape([], [], n, n * 1024)) for n in (1, 8, 64, 256)]
    assert decode == sorted(decode)
    # a decode step of an 8B model reads ~16 GB of weights: ~10 ms on this GPU
    assert 0.005 < decode[0] < 0.02
    prefill = [model.step_time(BatchShape([c], [0], 0, 0)) for c in (16, 256, 2048)]
    assert prefill == sorted(prefill)
    # on a grid point, attention equals the profiled number
    assert model.attention_us(2048, 8192, 0, 0) == pytest.approx(1152.27, rel=1e-4)
    assert model.attention_us(0, 0, 64, 1024) == pytest.approx(221.237, rel=1e-4)


def test_linear_fit_recovers_known_coefficients(tmp_path):
    truth = LinearStepModel({"intercept": 0.004, "tokens": 2e-5, "seqs": 1e-5,
                             "prefill_attn": 1e-9, "decode_kv": 3e-8})
    shapes = sample_batch_shapes(300, 64, 1024, 4096, seed=1)
    fitted = fit_linear(shapes, [truth.step_time(s) for s in shapes])
    for k, v in truth.coefficients.items():
        assert fitted.coefficients[k] == pytest.approx(v, rel=1e-3)
    assert fitted.fit_quality["rel_err_p90"] < 1e-3
    path = tmp_path / "lin.json"
    fitted.save(path)
    again = load_cost_model(path)
    assert again.step_time(shapes[0]) == pytest.approx(fitted.step_time(shapes[0]))


def test_bad_cost_model_paths(tmp_path):
    with pytest.raises(ValueError):
        load_cost_model(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_cost_model(tmp_path, num_layers=2)  # no tables
    _write_tables(tmp_path)
    with pytest.raises(ValueError, match="num-layers"):
        load_cost_model(tmp_path)  # no meta naming a known model, no layer count
    (tmp_path / "x_tp1_moe.csv").write_text("tokens,activated_experts,time_us\n1,1,1\n")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        load_cost_model(tmp_path, num_layers=2)


def _write_meta(path, alpha):
    path.write_text(
        "model: meta-llama/Llama-3.1-8B\nhardware: TESTGPU\n"
        f"skew_fit:\n  enabled: true\n  per_tp:\n    1:\n      alpha_default: {alpha}\n")


def test_the_profilers_own_layout_loads_like_the_flattened_one(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    _write_tables(flat)
    _write_meta(flat / "perf_TESTGPU_meta-llama_Llama-3.1-8B_bf16_meta.yaml", 0.1)
    nested = tmp_path / "TESTGPU" / "meta-llama" / "Llama-3.1-8B" / "bf16"
    (nested / "tp1").mkdir(parents=True)
    for name in ("dense", "attention", "per_sequence"):
        (nested / "tp1" / f"{name}.csv").write_text((flat / f"x_tp1_{name}.csv").read_text())
    _write_meta(nested / "meta.yaml", 0.1)
    a, b = OperatorTableModel(flat), OperatorTableModel(nested)
    assert a.num_layers == b.num_layers == 32  # known from the meta's model name
    shape = BatchShape([100], [0], 8, 8 * 300, 900, 10)
    assert a.step_time(shape) == b.step_time(shape)
    assert a.describe()["hardware"] == "TESTGPU"


def test_skew_makes_unequal_contexts_cost_more_than_their_mean(tmp_path):
    _write_tables(tmp_path)
    _write_meta(tmp_path / "t_meta.yaml", 0.5)
    model = OperatorTableModel(tmp_path)
    uniform = BatchShape([], [], 10, 10 * 300, 300, 300)
    skewed = BatchShape([], [], 10, 10 * 300, 900, 10)
    t_mean = model.attention_us(0, 0, 10, 300)
    t_max = model.attention_us(0, 0, 10, 900)
    extra_us = model.num_layers * 0.5 * (t_max - t_mean)
    assert model.step_time(skewed) - model.step_time(uniform) == pytest.approx(extra_us * 1e-6)
    # without a measured coefficient nothing is added
    plain = OperatorTableModel(tmp_path, skew=False)
    assert plain.step_time(skewed) == plain.step_time(uniform)
    # a per-bucket coefficient wins over the pooled one
    (tmp_path / "t_tp1_skew_fit.csv").write_text(
        "raw_key,alpha\npc=0|n<=16|sr<=40%|kvB<=1k|kp=0,0.0\n")
    bucketed = OperatorTableModel(tmp_path)
    assert bucketed.step_time(skewed) == plain.step_time(skewed)
