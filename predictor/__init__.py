"""Response-length prediction trained on CASTILLO statistics.

Modules, one job each:

* ``loader``: CASTILLO rows from a folder/file (parquet, JSON), the shared copy or the hub;
  grouped-by-prompt splits. ``splits``: the study's test split and validation folds.
* ``cleaning``: the paper's degeneration rule.
* ``prompt_text``, ``lexical``, ``chat_cues``, ``ngram_encoder``, ``minilm_encoder``,
  ``features``: the serving-time features (prompt text only; never the corpus label).
* ``model_names``: served model name -> CASTILLO model, else the model-agnostic path.
* ``train``, ``train_objectives``, ``model``: LightGBM mean / p50 / p90 heads and their
  conformal p90 offset.
* ``capped_mean``: the expected length of a request capped by ``max_tokens``.
* ``artifact``: the versioned, fingerprinted artifact under ``cache_dir()/predictor``.
* ``api``: ``load_default_predictor()`` -> ``CastilloLengthPredictor`` (the gateway's entry).
* ``refine``: the optional second stage for queued requests (``SecondStage.refine_batch``).
* ``evaluate``, ``breakdown``, ``baselines``, ``cli``: figures (per corpus, per model,
  corpus-balanced) and ``lengthwise predictor``; the ablation is ``lengthwise bench ablation``.
"""
