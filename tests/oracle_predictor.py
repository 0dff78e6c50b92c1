"""A length predictor that knows the stand-in worker's answer lengths.

The stand-in generates exactly ``LEN=<n>`` tokens when the prompt says so (else
its default length). Tests of scheduling properties (starvation, overload) need
the queue to rank requests by a known size, so this predictor reads the same
marker: it is the simulator's "oracle" predictor, a real ``LengthPredictor``
whose answers are exact for this workload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from predictor.types import LengthPrediction, PromptOrMessages

LEN_RE = re.compile(r"LEN=(\d+)")


class OraclePredictor:
    def __init__(self, default_len: int = 8) -> None:
        self.default_len = default_len

    def predict(
        self, prompt: PromptOrMessages, model: str, max_tokens: int | None = None,
        sampling: dict | None = None,
    ) -> LengthPrediction:
        text = prompt if isinstance(prompt, str) else json.dumps(list(prompt))
        found = LEN_RE.search(text)
        length = float(int(found.group(1)) if found else self.default_len)
        if max_tokens is not None:
            length = min(length, float(max_tokens))
        return LengthPrediction(mean=length, p50=length, p90=length, model_known=True)

    def predict_batch(
        self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
        max_tokens: Sequence[int | None] | None = None,
        samplings: Sequence[dict | None] | None = None,
    ) -> list[LengthPrediction]:
        caps = list(max_tokens) if max_tokens is not None else [None] * len(prompts)
        return [self.predict(p, m, c) for p, m, c in zip(prompts, models, caps)]
