"""The two reference predictors every evaluation reports beside the model.

* per-model training mean: what a scheduler knowing only the model would guess;
* input length only: output mean by prompt-length bin (20 quantile bins of input tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

INPUT_BINS = 20


def input_length(frame: pd.DataFrame) -> np.ndarray:
    """Prompt tokens after the chat template when the rows carry them, else characters / 4."""
    if "input_size" in frame.columns:
        return frame["input_size"].to_numpy(float)
    return frame["prompt_text"].str.len().to_numpy(float) / 4.0


@dataclass(frozen=True)
class Baselines:
    per_model_mean: dict[str, float]
    global_mean: float
    input_edges: list[float]
    input_bin_means: list[float]

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Baselines:
        truth = frame["output_mean"].to_numpy(float)
        sizes = input_length(frame)
        edges = np.unique(np.quantile(sizes, np.linspace(0, 1, INPUT_BINS + 1)[1:-1]))
        bins = np.searchsorted(edges, sizes, side="right")
        means = [float(truth[bins == b].mean()) if (bins == b).any() else float(truth.mean())
                 for b in range(len(edges) + 1)]
        per_model = frame.groupby("model")["output_mean"].mean()
        return cls({str(k): float(v) for k, v in per_model.items()}, float(truth.mean()),
                   edges.tolist(), means)

    def predict_per_model_mean(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["model"].map(self.per_model_mean).fillna(self.global_mean).to_numpy(float)

    def predict_input_length(self, frame: pd.DataFrame) -> np.ndarray:
        bins = np.searchsorted(np.asarray(self.input_edges), input_length(frame), side="right")
        return np.asarray(self.input_bin_means)[bins]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Baselines:
        return cls(**data)
