"""Quality, diversity and length metrics for sampled answers.

* Quality: ROUGE-L F1 (``rouge-score``, Porter stemming) of each sample against
  the reference answer, averaged over samples then prompts.
* Diversity: Self-BLEU (``sacrebleu`` sentence BLEU, 0-100): each of a prompt's
  k samples scored against the other k-1 as references, averaged; lower is more
  diverse. Averaged over prompts.
* Trade-off: the EDT paper's combined "EDA" score could not be reconstructed
  from the sources available here, so we report a documented stand-in,
  the harmonic mean of quality Q = ROUGE-L F1 and diversity D = 1 - Self-BLEU/100,
  ``2QD / (Q + D)``; both in [0, 1], higher is better. It rewards a setting only
  when it is good at both, like the paper's score intends.
* Length: mean and coefficient of variation (std / mean) of completion tokens
  over all samples, and the mean within-prompt CV: the spread the scheduler's
  length predictor cannot explain from the prompt alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SettingScores:
    rouge_l_f1: float
    self_bleu: float
    tradeoff: float
    length_mean: float
    length_cv: float
    within_prompt_length_cv: float
    truncated_fraction: float


def rouge_l_f1(samples: Sequence[str], reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return statistics.fmean(scorer.score(reference, s)["rougeL"].fmeasure for s in samples)


def self_bleu(samples: Sequence[str]) -> float:
    """Mean BLEU of each sample against the others (0-100). Needs k >= 2."""
    from sacrebleu.metrics import BLEU

    if len(samples) < 2:
        raise ValueError("Self-BLEU needs at least two samples per prompt")
    bleu = BLEU(effective_order=True)
    scores = []
    for i, hyp in enumerate(samples):
        others = [s for j, s in enumerate(samples) if j != i]
        scores.append(bleu.sentence_score(hyp, others).score)
    return statistics.fmean(scores)


def tradeoff_score(rouge_l: float, self_bleu_score: float) -> float:
    quality, diversity = rouge_l, 1.0 - self_bleu_score / 100.0
    if quality + diversity <= 0:
        return 0.0
    return 2 * quality * diversity / (quality + diversity)


def coefficient_of_variation(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean > 0 else 0.0


def score_setting(
    samples_per_prompt: Sequence[Sequence[str]],
    references: Sequence[str],
    lengths_per_prompt: Sequence[Sequence[int]],
    truncated_per_prompt: Sequence[Sequence[bool]],
) -> SettingScores:
    rouge = statistics.fmean(
        rouge_l_f1(samples, ref) for samples, ref in zip(samples_per_prompt, references)
    )
    sbleu = statistics.fmean(self_bleu(samples) for samples in samples_per_prompt)
    all_lengths = [n for lengths in lengths_per_prompt for n in lengths]
    truncated = [t for flags in truncated_per_prompt for t in flags]
    return SettingScores(
        rouge_l_f1=rouge,
        self_bleu=sbleu,
        tradeoff=tradeoff_score(rouge, sbleu),
        length_mean=statistics.fmean(all_lengths),
        length_cv=coefficient_of_variation(all_lengths),
        within_prompt_length_cv=statistics.fmean(
            coefficient_of_variation(lengths) for lengths in lengths_per_prompt
        ),
        truncated_fraction=sum(truncated) / len(truncated),
    )
