"""Serving-time features, one code path for training and serving.

Only what a request carries is read: the prompt (text or chat messages), the served
model's name (handled in :mod:`predictor.model`), ``max_tokens`` (a cap, applied after
prediction) and sampling settings. The corpus label (``dataset``) never reaches here:
every function takes prompt texts only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from predictor.chat_cues import chat_cues, cue_names
from predictor.lexical import FEATURE_NAMES as LEXICAL_NAMES
from predictor.lexical import lexical_features
from predictor.ngram_encoder import NgramConfig, NgramEncoder
from predictor.prompt_text import DEFAULT_MAX_CHARS, clip_text

MINILM_PCA_DIMS = 16
#: chat cue groups of the default artifact: the ones the ablation kept
#: (reports/predictor_ablation.json); question_type and language bought no tau there
DEFAULT_CHAT_CUES: tuple[str, ...] = ("length_request",)


@dataclass(frozen=True)
class FeatureConfig:
    max_chars: int = DEFAULT_MAX_CHARS
    ngrams: bool = True
    ngram_ridge: bool = True
    ngram: NgramConfig = field(default_factory=NgramConfig)
    minilm: bool = False
    #: groups of :mod:`predictor.chat_cues`, in order
    chat_cues: tuple[str, ...] = DEFAULT_CHAT_CUES

    @property
    def name(self) -> str:
        parts = ["lexical"] + [f"chat_{group}" for group in self.chat_cues]
        if self.ngrams:
            parts.append("ngram_svd" if self.ngram.char_ngrams else "word_ngram_svd")
            if self.ngram_ridge:
                parts.append("ngram_ridge")
        if self.minilm:
            parts.append("minilm")
        return "+".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        data = dict(data)
        data["ngram"] = NgramConfig(**data.get("ngram", {}))
        # artifacts written before chat cues existed (v4) read none
        data["chat_cues"] = tuple(data.get("chat_cues", ()))
        return cls(**data)


def prompt_targets(prompt_codes: np.ndarray, model_codes: np.ndarray, log_mean: np.ndarray,
                   log_std: np.ndarray, n_prompts: int) -> np.ndarray:
    """Per-prompt (level, spread) targets for the text-only scorers.

    Level: the prompt's log length relative to each model's average, averaged over
    the models that answered it; so the text score is about the prompt, not the mix
    of models that happened to answer it. Spread: log(std) - log(mean), averaged.
    """
    model_mean = np.zeros(model_codes.max() + 1)
    np.add.at(model_mean, model_codes, log_mean)
    model_mean /= np.maximum(np.bincount(model_codes, minlength=len(model_mean)), 1)
    level = log_mean - model_mean[model_codes]
    spread = log_std - log_mean
    counts = np.maximum(np.bincount(prompt_codes, minlength=n_prompts), 1)
    out = np.zeros((n_prompts, 2))
    for j, values in enumerate((level, spread)):
        out[:, j] = np.bincount(prompt_codes, weights=values, minlength=n_prompts) / counts
    return out


class TextFeaturizer:
    """Fitted text features: lexical statistics, n-gram SVD + ridge scores, optional MiniLM."""

    def __init__(self, config: FeatureConfig, ngram: NgramEncoder | None = None,
                 minilm_pca: np.ndarray | None = None, minilm_ridge: np.ndarray | None = None,
                 encoder=None):
        """``encoder``: what embeds texts when ``config.minilm`` (anything with
        ``encode(texts) -> array``; default the packaged MiniLM). A study passes one that
        reuses embeddings it already computed."""
        self.config = config
        self.ngram = ngram
        self.minilm_pca = minilm_pca  # (384+1) x dims, last row the centring offset
        self.minilm_ridge = minilm_ridge  # (384+1) x 2, last row the intercept
        self._minilm = None
        if config.minilm:
            if encoder is None:
                from predictor.minilm_encoder import MiniLMEncoder

                encoder = MiniLMEncoder()
            self._minilm = encoder

    @property
    def feature_names(self) -> list[str]:
        names = list(LEXICAL_NAMES) + cue_names(self.config.chat_cues)
        if self.ngram is not None:
            ngram_names = self.ngram.feature_names
            names += ngram_names if self.config.ngram_ridge else ngram_names[: self.ngram.svd_dims]
        if self.config.minilm:
            names += [f"minilm_pca_{i}" for i in range(MINILM_PCA_DIMS)]
            names += ["minilm_ridge_0", "minilm_ridge_1"]
        return names

    def clip(self, texts: list[str]) -> list[str]:
        return [clip_text(t, self.config.max_chars) for t in texts]

    def transform(self, texts: list[str]) -> np.ndarray:
        """Feature rows for full prompt texts (clipped here, so a 1 MB prompt costs as 4 kB)."""
        clipped = self.clip(texts)
        blocks = [_cheap_block(clipped, texts, self.config)]
        if self.ngram is not None:
            block = self.ngram.transform(clipped)
            blocks.append(block if self.config.ngram_ridge else block[:, : self.ngram.svd_dims])
        if self._minilm is not None:
            blocks.append(self._minilm_features(self._minilm.encode(clipped)))
        return np.hstack(blocks).astype(np.float32)

    def _minilm_features(self, embeddings: np.ndarray) -> np.ndarray:
        ones = np.ones((len(embeddings), 1), np.float32)
        extended = np.hstack([embeddings, ones])
        return np.hstack([extended @ self.minilm_pca, extended @ self.minilm_ridge])

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: list[str], targets: np.ndarray, config: FeatureConfig,
            seed: int = 0, embedder=None) -> tuple[TextFeaturizer, np.ndarray]:
        """Fits on unique prompt texts; returns the featurizer and out-of-fold features.

        ``embedder``: see ``__init__``'s ``encoder``."""
        clipped = [clip_text(t, config.max_chars) for t in texts]
        blocks = [_cheap_block(clipped, texts, config)]
        ngram = None
        if config.ngrams:
            ngram, oof = NgramEncoder.fit(clipped, targets, 5, config.ngram, seed=seed)
            blocks.append(oof if config.ngram_ridge else oof[:, : ngram.svd_dims])
        featurizer = cls(config, ngram, encoder=embedder)
        if config.minilm:
            embeddings = featurizer._minilm.encode(clipped)
            pca, ridge, oof = _fit_minilm_heads(embeddings, targets, seed)
            featurizer.minilm_pca, featurizer.minilm_ridge = pca, ridge
            blocks.append(np.hstack([embeddings @ pca[:-1] + pca[-1], oof]))
        return featurizer, np.hstack(blocks).astype(np.float32)

    # -- persistence -----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        (directory / "features.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        if self.ngram is not None:
            self.ngram.save(directory)
        if self.config.minilm:
            np.savez(directory / "minilm_heads.npz", pca=self.minilm_pca, ridge=self.minilm_ridge)

    @classmethod
    def load(cls, directory: Path) -> TextFeaturizer:
        config = FeatureConfig.from_dict(json.loads((directory / "features.json").read_text()))
        ngram = NgramEncoder.load(directory, config.ngram) if config.ngrams else None
        pca = ridge = None
        if config.minilm:
            with np.load(directory / "minilm_heads.npz") as data:
                pca, ridge = data["pca"], data["ridge"]
        return cls(config, ngram, pca, ridge)


def _cheap_block(clipped: list[str], texts: list[str], config: FeatureConfig) -> np.ndarray:
    """Lexical statistics and chat cues: one row per text."""
    return np.vstack([np.concatenate([lexical_features(c, len(t)), chat_cues(c, config.chat_cues)])
                      for c, t in zip(clipped, texts)])


def _fit_minilm_heads(embeddings: np.ndarray, targets: np.ndarray, seed: int):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    pca = PCA(MINILM_PCA_DIMS, random_state=seed).fit(embeddings)
    pca_matrix = np.vstack([pca.components_.T, -pca.mean_ @ pca.components_.T]).astype(np.float32)
    oof = np.zeros_like(targets, dtype=np.float64)
    for fit_idx, held_idx in KFold(5, shuffle=True, random_state=seed).split(embeddings):
        head = Ridge(alpha=1.0).fit(embeddings[fit_idx], targets[fit_idx])
        oof[held_idx] = head.predict(embeddings[held_idx])
    head = Ridge(alpha=1.0).fit(embeddings, targets)
    ridge_matrix = np.vstack([head.coef_.T, head.intercept_]).astype(np.float32)
    return pca_matrix, ridge_matrix, oof.astype(np.float32)
