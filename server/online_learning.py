"""Online learning of the served model's lengths: observe finished requests, refit, hot-swap.

The base predictor (CASTILLO-trained) answers an unseen served model through its
model-agnostic path. :class:`OnlineLearningPredictor` wraps it and, per served
model, learns a small correction from what the gateway observes:

* every finished request adds (prompt text, actual completion tokens per choice)
  to a bounded ring buffer of that model;
* every ``refit_every`` observations a background thread (nice'd, one LightGBM
  thread) fits a calibrator: a small LightGBM regression of the actual completion
  tokens (capped, as observed) on the base predictor's outputs and the base's own
  text features (its n-gram topic dimensions, so it can learn that *this* model
  loops on code, say), or lexical statistics when the base has none. Squared error
  on tokens, not log tokens: the target is then E[min(length, cap)], the order a
  capped queue needs, where a log-L1 fit predicts the cap for most prompts of a
  model that often hits it and ties them all;
* the refit is accepted only when it orders the newest ``validation_share`` of the
  buffer (at least ``min_validation`` requests) better than the current predictions
  (Kendall tau), and then swapped in with one reference assignment: requests never
  wait for a refit.

Rolling Kendall tau and the median predicted/actual ratio over the last ``window``
requests are exported per model; they are computed when Prometheus scrapes, never
on the request path.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from lengthwise.common.rank import kendall_tau
from predictor.lexical import lexical_features
from predictor.prompt_text import clip_text, render_prompt
from predictor.types import LengthFeedback, LengthPrediction, LengthPredictor, PromptOrMessages
from server.config import OnlineLearningSettings

log = logging.getLogger(__name__)

#: Characters of a prompt kept in the buffer (the features read no more).
KEPT_CHARS = 4000


@dataclass(frozen=True)
class Observation:
    text: str
    full_chars: int
    actual: float
    served_prediction: float
    cap: int | None


@dataclass
class _ModelState:
    buffer: deque
    window: deque
    since_refit: int = 0
    refits_accepted: int = 0
    refits_rejected: int = 0
    calibrator: Calibrator | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Calibrator:
    """Expected completion tokens from the base prediction and text features (immutable once built)."""

    def __init__(self, booster, observations: int):
        self.booster = booster
        self.observations = observations

    @staticmethod
    def features(texts: Sequence[str], full_chars: Sequence[int],
                 base: Sequence[LengthPrediction], text_features: np.ndarray | None) -> np.ndarray:
        head = np.array([[math.log1p(p.mean), math.log1p(p.p50), math.log1p(p.p90)] for p in base],
                        dtype=np.float32)
        if text_features is None:
            text_features = np.vstack([lexical_features(t, c) for t, c in zip(texts, full_chars)])
        return np.hstack([head, np.asarray(text_features, dtype=np.float32)])

    def predict_tokens(self, features: np.ndarray) -> np.ndarray:
        return np.maximum(self.booster.predict(features, num_threads=1), 1.0)


def prompt_for_learning(prompt: PromptOrMessages | Sequence[str] | None) -> PromptOrMessages | None:
    """What a request's prompt contributes: chat messages or one prompt text; else None.

    A completions request with several prompts reports one summed usage, which says
    nothing about each prompt's length, so it is not learned from.
    """
    if prompt is None:
        return None
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0] if len(prompt) == 1 else None
    return prompt


class OnlineLearningPredictor:
    """A :class:`LengthPredictor` that learns the served models' lengths from finished requests."""

    def __init__(self, base: LengthPredictor, settings: OnlineLearningSettings | None = None,
                 registry: CollectorRegistry | None = None):
        self.base = base
        self.settings = settings or OnlineLearningSettings()
        self._models: dict[str, _ModelState] = {}
        self._models_lock = threading.Lock()
        self._refit_running = threading.Event()
        self._gauges = _Gauges(registry) if registry is not None else None

    # --- LengthPredictor ------------------------------------------------------------

    def predict(self, prompt: PromptOrMessages, model: str, max_tokens: int | None = None,
                sampling: dict | None = None) -> LengthPrediction:
        return self.predict_batch([prompt], [model], [max_tokens], [sampling])[0]

    def predict_batch(self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
                      max_tokens: Sequence[int | None] | None = None,
                      samplings: Sequence[dict | None] | None = None) -> list[LengthPrediction]:
        base, text_rows = self.base_predictions(prompts, models, max_tokens, samplings)
        caps = list(max_tokens) if max_tokens is not None else [None] * len(base)
        out = list(base)
        # each calibrator read once: a refit may swap it in meanwhile
        calibrators = {i: state.calibrator for i, model in enumerate(models)
                       if (state := self._models.get(model)) is not None
                       and state.calibrator is not None}
        if not calibrators:
            return out
        rows = list(calibrators)
        texts = [render_prompt(prompts[i]) for i in rows]
        features = Calibrator.features([clip_text(t, KEPT_CHARS) for t in texts],
                                       [len(t) for t in texts], [base[i] for i in rows],
                                       None if text_rows is None else text_rows[rows])
        for j, i in enumerate(rows):
            mean = float(calibrators[i].predict_tokens(features[j:j + 1])[0])
            out[i] = _rescaled(base[i], mean, caps[i])
        return out

    def base_predictions(self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
                         max_tokens: Sequence[int | None] | None = None,
                         samplings: Sequence[dict | None] | None = None
                         ) -> tuple[list[LengthPrediction], np.ndarray | None]:
        """The base's predictions, and its text feature rows when it offers them
        (``CastilloLengthPredictor`` does; others get lexical statistics instead)."""
        with_features = getattr(self.base, "predict_batch_with_features", None)
        if with_features is not None:
            return with_features(prompts, models, max_tokens, samplings)
        return self.base.predict_batch(prompts, models, max_tokens, samplings), None

    # --- learning ---------------------------------------------------------------------

    def observe(self, model: str, prompt: PromptOrMessages | None, served_prediction: float,
                actual_per_choice: float, cap: int | None = None) -> None:
        """Record one finished request (cheap: an append; a refit starts in the background)."""
        if prompt is None or not math.isfinite(actual_per_choice) or actual_per_choice < 0:
            return
        state = self._state(model)
        if state is None:
            return
        text = render_prompt(prompt)
        obs = Observation(clip_text(text, KEPT_CHARS), len(text), float(actual_per_choice),
                          float(served_prediction), cap)
        with state.lock:
            state.buffer.append(obs)
            state.window.append((obs.served_prediction, obs.actual))
            state.since_refit += 1
            due = (state.since_refit >= self.settings.refit_every
                   and len(state.buffer) >= self.settings.min_observations)
        if due and not self._refit_running.is_set():
            self._refit_running.set()
            with state.lock:
                state.since_refit = 0
                snapshot = list(state.buffer)
            threading.Thread(target=self._refit, args=(model, state, snapshot),
                             name=f"lengthwise-refit-{model}", daemon=True).start()

    def wait_for_refits(self, timeout_s: float = 60.0) -> bool:
        """True once no refit is running (for benchmarks and tests that replay a stream)."""
        deadline = threading.Event()
        waited = 0.0
        while self._refit_running.is_set() and waited < timeout_s:
            deadline.wait(0.05)
            waited += 0.05
        return not self._refit_running.is_set()

    def status(self, model: str) -> dict:
        state = self._models.get(model)
        if state is None:
            return {"observations": 0, "calibrated": False}
        with state.lock:
            window = list(state.window)
        tau, ratio = rolling_figures(window)
        return {"observations": len(state.buffer), "calibrated": state.calibrator is not None,
                "refits_accepted": state.refits_accepted, "refits_rejected": state.refits_rejected,
                "rolling_kendall_tau": tau, "rolling_error_ratio": ratio}

    def _state(self, model: str) -> _ModelState | None:
        state = self._models.get(model)
        if state is not None:
            return state
        with self._models_lock:
            if model not in self._models:
                if len(self._models) >= self.settings.max_models:
                    return None  # bounded: names beyond the first few are not learned
                self._models[model] = _ModelState(deque(maxlen=self.settings.buffer_size),
                                                  deque(maxlen=self.settings.window))
                if self._gauges is not None:
                    self._gauges.track(model, self)
            return self._models[model]

    def _refit(self, model: str, state: _ModelState, snapshot: list[Observation]) -> None:
        try:
            _lower_thread_priority(self.settings.nice)
            calibrator, accepted, figures = fit_calibrator(self, model, snapshot,
                                                           state.calibrator, self.settings)
            if accepted:
                state.calibrator = calibrator  # the hot swap: one reference assignment
                state.refits_accepted += 1
            else:
                state.refits_rejected += 1
            if self._gauges is not None:
                self._gauges.refits.labels(model, "accepted" if accepted else "rejected").inc()
            log.info("online refit for %s on %d observations: %s (%s)", model, len(snapshot),
                     "accepted" if accepted else "rejected", figures)
        except Exception:  # a failed refit must never take the gateway down; the old model stays
            log.exception("online refit for %s failed", model)
        finally:
            self._refit_running.clear()


def fit_calibrator(learner: OnlineLearningPredictor, model: str, observations: list[Observation],
                   current: Calibrator | None, settings: OnlineLearningSettings
                   ) -> tuple[Calibrator, bool, dict]:
    """Fits on the older observations, validates on the newest; accepted if it orders them
    better than the current predictions do."""
    import lightgbm

    texts = [o.text for o in observations]
    base_preds, text_rows = learner.base_predictions(texts, [model] * len(texts),
                                                     [o.cap for o in observations])
    features = Calibrator.features(texts, [o.full_chars for o in observations], base_preds,
                                   text_rows)
    target = np.array([o.actual for o in observations])
    n_valid = min(len(observations) // 2,
                  max(settings.min_validation, int(len(observations) * settings.validation_share)))
    n_valid = max(1, n_valid)
    fit_x, fit_y = features[:-n_valid], target[:-n_valid]
    valid_x, valid_y = features[-n_valid:], target[-n_valid:]
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
              "min_data_in_leaf": max(5, len(fit_y) // 50), "feature_fraction": 0.9,
              "lambda_l2": 1.0, "max_bin": 63, "num_threads": 1, "deterministic": True,
              "force_row_wise": True, "verbose": -1, "seed": 0}
    booster = lightgbm.train(params, lightgbm.Dataset(fit_x, fit_y), num_boost_round=settings.rounds)
    candidate = Calibrator(booster, len(fit_y))
    caps = np.array([o.cap if o.cap else np.inf for o in observations[-n_valid:]], dtype=float)
    new_pred = np.minimum(candidate.predict_tokens(valid_x), caps)
    if current is not None:
        old_pred = np.minimum(current.predict_tokens(valid_x), caps)
    else:
        old_pred = np.array([p.mean for p in base_preds[-n_valid:]])

    def tau(pred: np.ndarray) -> float:
        value = kendall_tau(pred, valid_y)
        return -1.0 if math.isnan(value) else value

    new_tau, old_tau = tau(new_pred), tau(old_pred)
    accepted = new_tau > old_tau
    if accepted:
        # refit on everything, validation included: the newest requests matter most
        booster = lightgbm.train(params, lightgbm.Dataset(features, target),
                                 num_boost_round=settings.rounds)
        candidate = Calibrator(booster, len(target))
    return candidate, accepted, {"valid_tau_new": round(new_tau, 4),
                                 "valid_tau_current": round(old_tau, 4),
                                 "valid_requests": n_valid}


def rolling_figures(window: list[tuple[float, float]]) -> tuple[float, float]:
    """(Kendall tau of served prediction vs actual, median predicted/actual) over the window."""
    if len(window) < 3:
        return math.nan, math.nan
    pred = np.array([w[0] for w in window])
    actual = np.array([w[1] for w in window])
    ratio = np.median(pred / np.maximum(actual, 1.0))
    return kendall_tau(pred, actual), float(ratio)


def _rescaled(pred: LengthPrediction, mean: float, cap: int | None) -> LengthPrediction:
    # the calibrator learns the mean; p50/p90 keep their ratio to it
    scale = mean / max(pred.mean, 1e-9)
    limit = float(cap) if cap else math.inf
    return LengthPrediction(mean=min(mean, limit), p50=min(pred.p50 * scale, limit),
                            p90=min(pred.p90 * scale, limit), model_known=pred.model_known)


def _lower_thread_priority(increment: int) -> None:
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError:
        pass  # not permitted here: the refit still runs with one thread


class _Gauges:
    def __init__(self, registry: CollectorRegistry):
        self.tau = Gauge("lengthwise_predictor_rolling_kendall_tau",
                         "Kendall tau of the served prediction vs the actual completion tokens "
                         "over the last requests (online learning window).", ["model"],
                         registry=registry)
        self.ratio = Gauge("lengthwise_predictor_rolling_error_ratio",
                           "Median predicted/actual completion tokens over the last requests "
                           "(1 = unbiased; >1 over-predicts).", ["model"], registry=registry)
        self.observations = Gauge("lengthwise_predictor_online_observations",
                                  "Finished requests in the online-learning buffer.", ["model"],
                                  registry=registry)
        self.refits = Counter("lengthwise_predictor_online_refits",
                              "Background refits of the served model's calibrator.",
                              ["model", "outcome"], registry=registry)

    def track(self, model: str, learner: OnlineLearningPredictor) -> None:
        # computed at scrape time, never on the request path
        self.tau.labels(model).set_function(lambda: learner.status(model)["rolling_kendall_tau"])
        self.ratio.labels(model).set_function(lambda: learner.status(model)["rolling_error_ratio"])
        self.observations.labels(model).set_function(lambda: learner.status(model)["observations"])


def wrap_for_online_learning(base: LengthPredictor, enabled: bool,
                             settings: OnlineLearningSettings,
                             registry: CollectorRegistry | None,
                             ) -> tuple[LengthPredictor, LengthFeedback | None]:
    """The gateway's predictor and what takes the served requests' true lengths:
    ``(base, None)`` when online learning is off."""
    if not enabled:
        return base, None
    learner = OnlineLearningPredictor(base, settings, registry)
    return learner, learner


def prompt_of_request(parsed) -> PromptOrMessages | None:
    """The learnable prompt of a parsed chat or completions request (see :func:`prompt_for_learning`)."""
    messages = getattr(parsed, "messages", None)
    if messages is not None:
        return [m.model_dump(exclude_none=True) for m in messages]
    return prompt_for_learning(parsed.prompt_texts())
