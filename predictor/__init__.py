"""Response-length prediction trained on CASTILLO statistics.

Modules, one job each:

* ``loader``: CASTILLO rows from a folder/file (parquet, JSON), the shared copy or the hub;
  grouped-by-prompt splits.
* ``cleaning``: the paper's degeneration rule.
* ``prompt_text``, ``lexical``, ``ngram_encoder``, ``minilm_encoder``, ``features``: the
  serving-time features (prompt text only; never the corpus label).
* ``model_names``: served model name -> CASTILLO model, else the model-agnostic path.
* ``train``, ``model``: LightGBM mean / p50 / p90 heads and their conformal p90 offset.
* ``artifact``: the versioned, fingerprinted artifact under ``cache_dir()/predictor``.
* ``api``: ``load_default_predictor()`` -> ``CastilloLengthPredictor`` (the gateway's entry).
* ``evaluate``, ``baselines``, ``ablation``, ``cli``: benchmarks and ``lengthwise predictor``.
"""
