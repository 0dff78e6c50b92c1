"""Hashed word and character n-grams, TF-IDF weighted, reduced to an SVD basis and a ridge score.

Fitted on unique prompts (not prompt x model rows), so fitting takes seconds. The
ridge scores are the n-grams' own length estimate for a prompt, in log tokens and
relative to the model's average; LightGBM reads them beside the SVD coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from predictor.prompt_text import clip_text

WORD_PATTERN = r"(?u)\b\w+\b|[^\w\s]"


@dataclass(frozen=True)
class NgramConfig:
    word_hash_bits: int = 18
    char_hash_bits: int = 18
    #: off by default: character 3-5-grams cost about as much CPU as everything else in a
    #: request together. No committed report measures them; to measure them, add an arm
    #: with ``NgramConfig(char_ngrams=True)`` to ``lengthwise.bench.ablation.default_arms``
    char_ngrams: bool = False
    #: character n-grams cost most per character: they read a shorter head and tail
    char_max_chars: int = 1500
    min_df: int = 2
    svd_dims: int = 64
    ridge_alpha: float = 3.0


def _vectorizers(config: NgramConfig):
    from sklearn.feature_extraction.text import HashingVectorizer

    word = HashingVectorizer(
        n_features=2**config.word_hash_bits, ngram_range=(1, 2), alternate_sign=False,
        norm=None, lowercase=True, token_pattern=WORD_PATTERN,
    )
    char = HashingVectorizer(
        n_features=2**config.char_hash_bits, analyzer="char_wb", ngram_range=(3, 5),
        alternate_sign=False, norm=None, lowercase=True,
    )
    return word, (char if config.char_ngrams else None)


class NgramEncoder:
    """Fitted n-gram encoder: ``transform(texts) -> (svd coordinates, ridge scores)``."""

    def __init__(self, config: NgramConfig, columns: np.ndarray, idf: np.ndarray,
                 components: np.ndarray, ridge_coef: np.ndarray, ridge_intercept: np.ndarray):
        self.config = config
        self._word, self._char = _vectorizers(config)
        self.n_hashed = 2**config.word_hash_bits + (2**config.char_hash_bits if self._char else 0)
        self.columns = columns.astype(np.int64)
        self._column_map = np.full(self.n_hashed, -1, dtype=np.int64)
        self._column_map[self.columns] = np.arange(len(self.columns))
        self.idf = idf.astype(np.float32)
        # (kept columns x dims) so one prompt's projection is a gather of its n-grams' rows
        self.projection = np.ascontiguousarray(
            np.hstack([components.T, ridge_coef.T]).astype(np.float32))
        self.ridge_intercept = ridge_intercept.astype(np.float32)
        self.svd_dims = components.shape[0]
        self.ridge_targets = ridge_coef.shape[0]

    @property
    def feature_names(self) -> list[str]:
        return [f"svd_{i}" for i in range(self.svd_dims)] + [
            f"ngram_ridge_{i}" for i in range(self.ridge_targets)]

    def _hashed(self, texts: list[str]) -> sp.csr_matrix:
        parts = [self._word.transform(texts)]
        if self._char is not None:
            parts.append(self._char.transform(
                [clip_text(t, self.config.char_max_chars) for t in texts]))
        return sp.hstack(parts, format="csr") if len(parts) > 1 else parts[0].tocsr()

    def _weighted(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF rows (sublinear tf, l2-normalised) over the kept columns."""
        hashed = self._hashed(texts)
        mapped = self._column_map[hashed.indices]
        keep = mapped >= 0
        counts = np.repeat(np.arange(hashed.shape[0]), np.diff(hashed.indptr))[keep]
        matrix = sp.csr_matrix(
            ((1.0 + np.log(hashed.data[keep])) * self.idf[mapped[keep]], (counts, mapped[keep])),
            shape=(hashed.shape[0], len(self.columns)), dtype=np.float32,
        )
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.diags(1.0 / norms).dot(matrix).tocsr()

    def transform(self, texts: list[str]) -> np.ndarray:
        """SVD coordinates and ridge scores; the same numbers as ``_weighted(texts) @ projection``.

        Done row by row in numpy: building scipy matrices costs more than the
        arithmetic for the one-prompt batches of serving.
        """
        hashed = self._hashed(texts)
        out = np.zeros((len(texts), self.projection.shape[1]), dtype=np.float32)
        indptr, indices, data = hashed.indptr, hashed.indices, hashed.data
        for row in range(len(texts)):
            start, end = indptr[row], indptr[row + 1]
            columns = self._column_map[indices[start:end]]
            keep = columns >= 0
            columns = columns[keep]
            if len(columns) == 0:
                continue
            weights = (1.0 + np.log(data[start:end][keep])).astype(np.float32) * self.idf[columns]
            weights /= np.sqrt(weights @ weights)
            out[row] = weights @ self.projection[columns]
        out[:, self.svd_dims:] += self.ridge_intercept
        return out

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: list[str], targets: np.ndarray, groups_for_oof: int, config: NgramConfig,
            seed: int = 0) -> tuple[NgramEncoder, np.ndarray]:
        """Fits on unique prompts; returns the encoder and out-of-fold features for ``texts``.

        ``targets`` is (prompts x k): what the ridge scores learn. Out-of-fold ridge
        scores keep LightGBM from trusting scores that saw the very prompt.
        """
        from sklearn.decomposition import TruncatedSVD
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import KFold

        unfitted = cls(config, np.zeros(0, np.int64), np.zeros(0), np.zeros((1, 0)),
                       np.zeros((targets.shape[1], 0)), np.zeros(targets.shape[1]))
        hashed = unfitted._hashed(texts)
        df = np.bincount(hashed.indices, minlength=hashed.shape[1])
        columns = np.flatnonzero(df >= config.min_df)
        idf = (np.log((1 + hashed.shape[0]) / (1 + df[columns])) + 1.0).astype(np.float32)
        dims = min(config.svd_dims, max(1, len(columns) - 1), max(1, len(texts) - 1))
        placeholder = cls(config, columns, idf, np.zeros((dims, len(columns))),
                          np.zeros((targets.shape[1], len(columns))), np.zeros(targets.shape[1]))
        weighted = placeholder._weighted(texts)
        svd = TruncatedSVD(dims, random_state=seed, algorithm="randomized", n_iter=4)
        svd.fit(weighted)
        oof = np.zeros_like(targets, dtype=np.float64)
        folds = KFold(n_splits=min(groups_for_oof, len(texts)), shuffle=True, random_state=seed)
        for fit_idx, held_idx in folds.split(weighted):
            ridge = Ridge(alpha=config.ridge_alpha).fit(weighted[fit_idx], targets[fit_idx])
            oof[held_idx] = ridge.predict(weighted[held_idx]).reshape(len(held_idx), -1)
        ridge = Ridge(alpha=config.ridge_alpha).fit(weighted, targets)
        encoder = cls(config, columns, idf, svd.components_,
                      ridge.coef_.reshape(targets.shape[1], -1),
                      np.atleast_1d(ridge.intercept_))
        svd_part = np.asarray(weighted @ encoder.projection[:, :dims])
        return encoder, np.hstack([svd_part, oof]).astype(np.float32)

    # -- persistence -----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        np.savez(
            directory / "ngram_encoder.npz",
            columns=self.columns.astype(np.int32), idf=self.idf,
            projection=self.projection, ridge_intercept=self.ridge_intercept,
            svd_dims=np.int32(self.svd_dims),
        )

    @classmethod
    def load(cls, directory: Path, config: NgramConfig) -> NgramEncoder:
        with np.load(directory / "ngram_encoder.npz") as data:
            projection = data["projection"]
            dims = int(data["svd_dims"])
            return cls(config, data["columns"], data["idf"], projection[:, :dims].T,
                       projection[:, dims:].T, data["ridge_intercept"])
