"""The EDT formula on a batch of logits, as tensor operations.

EDT (Zhang et al., 2024) decodes each step at temperature

    T = T0 * N ** (theta / H)

where H is the entropy of the request's next-token distribution. Settled here:

* **H** is the Shannon entropy in nats of softmax(logits) over the *full*
  vocabulary, taken after vLLM's penalties, logit bias, bad-words and
  allowed-token masks (masked tokens carry probability 0 and contribute 0) and
  before temperature, top-k, top-p and min-p.
* Since 0 < N < 1 and theta >= 0, T <= T0: EDT only ever cools. Where the model
  is unsure (high H) T approaches T0; where it is sure (low H) T falls fast.
* **Floor.** As H -> 0 the formula sends T to 0 and the logits multiplier
  T0/T to infinity (overflow, then NaN). Where T would fall below
  T0 * MIN_TEMPERATURE_RATIO (1e-4) we take the formula's limit, T = 0:
  the row keeps only its argmax (first index among exact ties, as vLLM's greedy
  sampling does), everything else becomes -inf. A temperature that low is
  greedy in all but name anyway (a logit gap of 0.01 becomes 100 nats / T0),
  and only an explicit argmax makes it exactly greedy when logits tie exactly,
  which bf16 logits often do. The floor binds when
  H < theta * ln(1/N) / ln(10^4), e.g. H < 0.024 nats for theta = 1, N = 0.8;
  so a very large theta means greedy decoding. Above the floor the multiplier
  is at most 10^4, far from fp32 overflow for logits of magnitude ~50.

The runners only need the multiplier ``T0 / T = exp(theta * ln(1/N) / H)``, which
scales logits that have (V1 runner) or have not yet (Model Runner V2) been
divided by T0; see ``vllm_v1`` and ``vllm_mrv2``.
"""

from __future__ import annotations

import math

import torch

MIN_TEMPERATURE_RATIO = 1e-4
MAX_LOG_MULTIPLIER = math.log(1.0 / MIN_TEMPERATURE_RATIO)
# Keeps theta/H finite when a row is one-hot (H = 0); the clamp above then binds.
_ENTROPY_TINY = 1e-30


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise Shannon entropy (nats) of softmax(logits); -inf entries count as p = 0.

    H = logsumexp(z) - sum(p * z): no per-element log, unlike sum(-p log p).
    -inf is clamped to the dtype's lowest finite value so that 0 * z stays 0.
    """
    probs = torch.softmax(logits, dim=-1)
    finite = logits.clamp(min=torch.finfo(logits.dtype).min)
    return torch.logsumexp(logits, dim=-1) - torch.linalg.vecdot(probs, finite)


def log_multiplier(entropy: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """ln(T0 / T) = coefficient / H, with coefficient = theta * ln(1/N) (0 = EDT off)."""
    return coefficient / entropy.clamp_min(_ENTROPY_TINY)


def is_below_floor(log_mult: torch.Tensor) -> torch.Tensor:
    return log_mult >= MAX_LOG_MULTIPLIER


def apply_edt_(
    scores: torch.Tensor,
    entropy: torch.Tensor,
    coefficient: torch.Tensor,
    host_check: bool = False,
) -> torch.Tensor:
    """Scale each row of ``scores`` in place by T0 / T; rows past the floor become greedy.

    Rows with coefficient 0 are multiplied by exactly 1.0 and never masked, so
    they stay bit-for-bit unchanged. ``host_check`` skips the greedy masking when
    no row needs it; that reads a flag back to the host, free on CPU tensors but
    a device sync on GPU, so the GPU runner leaves it off.
    """
    log_mult = log_multiplier(entropy, coefficient)
    greedy = is_below_floor(log_mult)
    scores.mul_(torch.exp(log_mult.clamp(max=MAX_LOG_MULTIPLIER)).unsqueeze(1))
    if host_check and not bool(greedy.any()):
        return scores
    top = scores.argmax(dim=1, keepdim=True)
    drop = torch.ones_like(scores, dtype=torch.bool).scatter_(1, top, False)
    return scores.masked_fill_(drop & greedy.unsqueeze(1), float("-inf"))


def applied_temperature(
    entropy: torch.Tensor, coefficient: torch.Tensor, t0: torch.Tensor | float
) -> torch.Tensor:
    """T = T0 * exp(-coefficient / H) per row, 0 where the floor makes the row greedy."""
    log_mult = log_multiplier(entropy, coefficient)
    temperature = t0 * torch.exp(-log_mult)
    return torch.where(is_below_floor(log_mult), torch.zeros_like(temperature), temperature)


def edt_temperature(
    logits: torch.Tensor,
    theta: torch.Tensor | float,
    n: torch.Tensor | float,
    t0: torch.Tensor | float,
) -> torch.Tensor:
    """Per-row EDT temperature T = T0 * N**(theta/H) for unscaled ``logits`` [rows, vocab].

    0 where the floor applies (greedy).
    """
    theta_t = torch.as_tensor(theta, dtype=logits.dtype, device=logits.device)
    n_t = torch.as_tensor(n, dtype=logits.dtype, device=logits.device)
    t0_t = torch.as_tensor(t0, dtype=logits.dtype, device=logits.device)
    return applied_temperature(entropy_nats(logits), theta_t * torch.log(1.0 / n_t), t0_t)
