"""EDT against an independent float64 reference, through both vLLM runner interfaces.

Each processor is called exactly as its runner calls it: the V1 processor with
``BatchUpdate`` state changes and logits already divided by T0 (it runs after
the sampler's temperature step); the Model Runner V2 processor with slot-indexed
``add_request`` and a ``LogitsContext`` on unscaled logits (it runs before the
runner's temperature step, which we then apply as the runner does: divide by T0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.config import SchedulerConfig, VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

from lengthwise.worker.edt.formula import edt_temperature
from lengthwise.worker.edt.vllm_mrv2 import EntropyDynamicTemperatureLogitsProcessorV2
from lengthwise.worker.edt.vllm_v1 import EntropyDynamicTemperatureLogitsProcessor

VOCAB = 257
MAX_REQS = 8
FLOOR = 1e-4  # documented: below T0 * 1e-4, T = 0 (greedy)


# ---------------------------------------------------------------- reference
def reference_temperature(z: np.ndarray, theta: float, n: float, t0: float) -> float:
    """T = T0 * N**(theta / H): H in nats over softmax(z), float64; 0 (greedy) below the floor."""
    z = np.asarray(z, dtype=np.float64)
    finite = np.isfinite(z)
    p = np.zeros_like(z)
    p[finite] = np.exp(z[finite] - z[finite].max())
    p /= p.sum()
    nz = p > 0
    entropy = float(-(p[nz] * np.log(p[nz])).sum())
    ratio = n ** (theta / entropy) if entropy > 0 else 0.0
    return t0 * ratio if ratio >= FLOOR else 0.0


def reference_tempered(z: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if temperature == 0.0:  # greedy: only the (first) argmax survives
        out = np.full_like(z, -np.inf)
        out[int(np.argmax(z))] = 0.0
        return out
    return z / temperature


def assert_matches(got: torch.Tensor, want: np.ndarray) -> None:
    got64 = got.double().numpy()
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got64), finite)
    if finite.sum() == 1:  # greedy row: one survivor, its value is irrelevant
        return
    np.testing.assert_allclose(got64[finite], want[finite], rtol=2e-5, atol=1e-4)


def random_logits(rows: int, seed: int, spread: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=gen) * spread
    # A few sharply peaked rows exercise the low-entropy end and the floor.
    logits[0, 3] += 40.0
    return logits


def vllm_config(additional_config: dict | None = None) -> VllmConfig:
    return VllmConfig(
        scheduler_config=SchedulerConfig(
            max_num_seqs=MAX_REQS, max_model_len=512, is_encoder_decoder=False
        ),
        additional_config=additional_config or {},
    )


def params(temperature: float, theta: float | None = None, n: float | None = None):
    extra: dict = {}
    if theta is not None:
        extra["edt_theta"] = theta
    if n is not None:
        extra["edt_n"] = n
    return SamplingParams(temperature=temperature, extra_args=extra or None)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


# ---------------------------------------------------------------- formula
@pytest.mark.parametrize("theta,n,t0", [(0.5, 0.8, 1.0), (2.0, 0.8, 0.7), (1.0, 0.5, 1.3)])
def test_formula_matches_float64_reference(theta, n, t0):
    logits = random_logits(6, seed=1)
    logits[2, :100] = float("-inf")  # masked tokens count as probability 0
    got = edt_temperature(logits, theta, n, t0)
    for row in range(logits.shape[0]):
        want = reference_temperature(logits[row].numpy(), theta, n, t0)
        assert got[row].item() == pytest.approx(want, rel=2e-5)


def test_formula_floor_is_greedy_at_low_entropy():
    logits = torch.full((2, VOCAB), float("-inf"))
    logits[0, 7] = 3.0  # one-hot after masking: H = 0
    logits[1, :2] = torch.tensor([9.0, 0.0])  # H ~ 0.0012 nats: T below T0 * 1e-4
    temperature = edt_temperature(logits, theta=1.0, n=0.8, t0=0.9)
    assert temperature.tolist() == [0.0, 0.0]
    assert reference_temperature(logits[1].numpy(), 1.0, 0.8, 0.9) == 0.0


def test_formula_theta_zero_is_fixed_temperature():
    logits = random_logits(3, seed=2)
    assert torch.allclose(edt_temperature(logits, 0.0, 0.8, 0.6), torch.full((3,), 0.6))


# ---------------------------------------------------------------- V1 runner
def v1_step(proc: EntropyDynamicTemperatureLogitsProcessor, z: torch.Tensor, t0s: list[float]):
    """Run the V1 sampler's order: divide by T0 (greedy rows by 1), then the processor."""
    temps = torch.tensor([t if t >= 1e-5 else 1.0 for t in t0s]).unsqueeze(1)
    scaled = z.clone().div_(temps)
    before = scaled.clone()
    out = proc.apply(scaled)
    return before, out


def test_v1_processor_matches_reference_and_leaves_other_rows_untouched():
    proc = EntropyDynamicTemperatureLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    setting = [
        (0.7, 1.0, None),  # EDT, default n
        (1.0, None, None),  # plain sampling
        (0.0, 5.0, None),  # greedy stays greedy: EDT ignored
        (1.2, 0.5, 0.6),  # EDT with its own n
        (0.9, 0.0, None),  # theta 0 = fixed temperature
    ]
    added = [(i, params(t, th, n), [1, 2], []) for i, (t, th, n) in enumerate(setting)]
    proc.update_state(BatchUpdate(batch_size=len(setting), removed=[], added=added, moved=[]))
    z = random_logits(len(setting), seed=3)
    before, out = v1_step(proc, z, [s[0] for s in setting])
    for row, (t0, theta, n) in enumerate(setting):
        if theta and t0 >= 1e-5:
            temp = reference_temperature(z[row].numpy(), theta, n or 0.8, t0)
            assert_matches(out[row], reference_tempered(z[row].numpy(), temp))
        else:
            assert same_bits(out[row], before[row]), f"row {row} was modified"


def test_v1_processor_follows_moves_swaps_and_removals():
    proc = EntropyDynamicTemperatureLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    added = [(0, params(1.0, 2.0), None, []), (1, params(1.0), None, []), (2, params(1.0), None, [])]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=added, moved=[]))
    # Swap rows 0 and 2: the EDT request now sits in row 2.
    proc.update_state(
        BatchUpdate(batch_size=3, removed=[], added=[], moved=[(0, 2, MoveDirectionality.SWAP)])
    )
    z = random_logits(3, seed=4)
    before, out = v1_step(proc, z, [1.0, 1.0, 1.0])
    assert same_bits(out[0], before[0]) and same_bits(out[1], before[1])
    assert not torch.equal(out[2], before[2])
    # Remove row 1, condense row 2 into it (a one-way move), shrink the batch.
    proc.update_state(
        BatchUpdate(
            batch_size=2,
            removed=[1],
            added=[],
            moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)],
        )
    )
    z = random_logits(2, seed=5)
    before, out = v1_step(proc, z, [1.0, 1.0])
    assert same_bits(out[0], before[0])
    temp = reference_temperature(z[1].numpy(), 2.0, 0.8, 1.0)
    assert_matches(out[1], reference_tempered(z[1].numpy(), temp))
    # Remove the EDT request: nothing is touched any more.
    proc.update_state(BatchUpdate(batch_size=1, removed=[1], added=[], moved=[]))
    z = random_logits(1, seed=6)
    before, out = v1_step(proc, z, [1.0])
    assert same_bits(out, before)


def test_v1_worker_default_applies_unless_request_opts_out():
    config = vllm_config({"edt": {"theta": 1.5, "n": 0.7}})
    proc = EntropyDynamicTemperatureLogitsProcessor(config, torch.device("cpu"), False)
    added = [(0, params(1.0), None, []), (1, params(1.0, 0.0), None, [])]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=added, moved=[]))
    z = random_logits(2, seed=7)
    before, out = v1_step(proc, z, [1.0, 1.0])
    temp = reference_temperature(z[0].numpy(), 1.5, 0.7, 1.0)
    assert_matches(out[0], reference_tempered(z[0].numpy(), temp))
    assert same_bits(out[1], before[1])


@pytest.mark.parametrize(
    "extra",
    [
        {"edt_theta": -0.1},
        {"edt_theta": 1.0, "edt_n": 1.0},
        {"edt_theta": 1.0, "edt_n": 0.0},
        {"edt_theta": "hot"},
        {"edt_theta": True},
        {"edt_theta": float("nan")},
        {"edt_n": 1.5},
    ],
)
def test_both_processors_reject_invalid_parameters(extra):
    sp = SamplingParams(temperature=1.0, extra_args=extra)
    with pytest.raises(ValueError):
        EntropyDynamicTemperatureLogitsProcessor.validate_params(sp)
    with pytest.raises(ValueError):
        EntropyDynamicTemperatureLogitsProcessorV2.validate_params(sp)


# ---------------------------------------------------------------- Model Runner V2
def mrv2_processor(additional_config: dict | None = None):
    state = LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=MAX_REQS,
        vocab_size=VOCAB,
        all_token_ids=None,
        prompt_len=None,
        prefill_len=None,
        total_len=None,
    )
    return EntropyDynamicTemperatureLogitsProcessorV2(vllm_config(additional_config), state)


def mrv2_context(slots: list[int]) -> LogitsContext:
    mapping = torch.tensor(slots, dtype=torch.int32)
    return LogitsContext(
        expanded_idx_mapping=mapping,
        idx_mapping=mapping,
        idx_mapping_np=np.array(slots, dtype=np.int32),
        expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
        input_ids=torch.zeros(len(slots), dtype=torch.int32),
        pos=torch.zeros(len(slots), dtype=torch.int64),
        seq_lens_upper_bound_np=np.ones(len(slots), dtype=np.int32),
    )


def test_mrv2_processor_matches_reference_then_runner_temperature():
    proc = mrv2_processor()
    slot_setting = {5: (0.7, 1.0, None), 2: (1.0, None, None), 0: (0.0, 3.0, None), 7: (1.3, 0.4, 0.5)}
    for slot, (t0, theta, n) in slot_setting.items():
        enabled = proc.add_request(slot, params(t0, theta, n))
        assert enabled == bool(theta and t0 >= 1e-5)
    proc.apply_staged_writes()
    slots = [7, 2, 5, 0]  # batch order differs from slot order, as in the runner
    z = random_logits(len(slots), seed=8)
    before = z.clone()
    out = proc.apply(z.clone(), mrv2_context(slots))
    for row, slot in enumerate(slots):
        t0, theta, n = slot_setting[slot]
        if theta and t0 >= 1e-5:
            temp = reference_temperature(before[row].numpy(), theta, n or 0.8, t0)
            runner_scaled = out[row] / t0  # the runner's own division by T0
            assert_matches(runner_scaled, reference_tempered(before[row].numpy(), temp))
        else:
            assert same_bits(out[row], before[row]), f"slot {slot} was modified"


def test_mrv2_recycled_slot_forgets_previous_request():
    proc = mrv2_processor()
    proc.add_request(3, params(1.0, 2.0))
    proc.apply_staged_writes()
    proc.add_request(3, params(1.0))  # slot reused by a request without EDT
    proc.apply_staged_writes()
    z = random_logits(1, seed=9)
    before = z.clone()
    out = proc.apply(z, mrv2_context([3]))
    assert same_bits(out, before)


def test_mrv2_speculative_rows_share_their_request_parameters():
    proc = mrv2_processor({"edt": {"theta": 0.8}})
    proc.add_request(1, params(1.0))  # worker default applies
    proc.add_request(4, params(1.0, 0.0))  # opted out
    proc.apply_staged_writes()
    # Two logits rows for slot 1 (a draft token plus bonus), one for slot 4.
    ctx = mrv2_context([1, 4])
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor([1, 1, 4], dtype=torch.int32),
        idx_mapping=ctx.idx_mapping,
        idx_mapping_np=ctx.idx_mapping_np,
        expanded_local_pos=torch.tensor([0, 1, 0], dtype=torch.int32),
        input_ids=torch.zeros(3, dtype=torch.int32),
        pos=torch.zeros(3, dtype=torch.int64),
        seq_lens_upper_bound_np=ctx.seq_lens_upper_bound_np,
    )
    z = random_logits(3, seed=10)
    before = z.clone()
    out = proc.apply(z, ctx)
    for row in (0, 1):
        temp = reference_temperature(before[row].numpy(), 0.8, 0.8, 1.0)
        assert_matches(out[row], reference_tempered(before[row].numpy(), temp))
    assert same_bits(out[2], before[2])


def test_past_the_floor_both_runners_keep_exactly_the_first_argmax_like_greedy():
    z = torch.full((1, VOCAB), -5.0)
    z[0, 11] = z[0, 40] = 20.0  # an exact tie at the top, as bf16 logits often have
    v1 = EntropyDynamicTemperatureLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    v1.update_state(
        BatchUpdate(batch_size=1, removed=[], added=[(0, params(1.0, 1e6), None, [])], moved=[])
    )
    _, out_v1 = v1_step(v1, z, [1.0])
    mrv2 = mrv2_processor()
    mrv2.add_request(0, params(1.0, 1e6))
    mrv2.apply_staged_writes()
    out_mrv2 = mrv2.apply(z.clone(), mrv2_context([0]))
    for out in (out_v1, out_mrv2):
        assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [11]
