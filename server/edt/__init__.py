"""Entropy-based dynamic temperature (EDT) sampling inside vLLM.

``params``: per-request parameters and validation (no torch import).
``formula``: the EDT formula on tensors. ``vllm_v1`` / ``vllm_mrv2``: the
logits processors for vLLM's two model runners.
"""
