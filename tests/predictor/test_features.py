import numpy as np

from predictor.features import TextFeaturizer
from predictor.lexical import FEATURE_NAMES
from predictor.prompt_text import clip_text, render_prompt
from predictor.train import train_length_model


def test_messages_render_deterministically_and_keep_user_text_verbatim():
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "List three"},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "fruits."}]},
    ]
    assert render_prompt(messages) == render_prompt(list(messages))
    assert render_prompt(messages) == "[system] Be terse.\n\nList three\nfruits."
    assert render_prompt([{"role": "user", "content": "Hi"}]) == render_prompt("Hi")


def test_non_utf8_and_huge_text_are_bounded_and_valid():
    assert "\ufffd" in render_prompt(b"caf\xe9 \xff")
    clipped = clip_text("a\ud800b" * 400_000, 4000)
    assert len(clipped) <= 4001
    clipped.encode("utf-8")  # lone surrogates replaced


def test_features_never_read_the_corpus_label(small_rows, small_config):
    """Training without the ``dataset`` column works, and relabelling corpora changes nothing."""
    features, params = small_config
    without = small_rows.drop(columns=["dataset", "category"])
    trained = train_length_model(without, features, params)
    names = trained.model.featurizer.feature_names
    assert not any("dataset" in n or "category" in n or "corpus" in n for n in names)
    relabelled = small_rows.assign(dataset="Mbpp")
    other = train_length_model(relabelled, features, params)
    texts = small_rows["prompt_text"].head(50).tolist()
    models = small_rows["model"].head(50).tolist()
    a = trained.model.predict_texts(texts, models)
    b = other.model.predict_texts(texts, models)
    assert np.allclose(a.mean, b.mean) and np.allclose(a.p90, b.p90)


def test_full_length_survives_clipping_for_features(small_artifact):
    featurizer = TextFeaturizer.load(small_artifact)
    short, huge = featurizer.transform(["word " * 100, "word " * 200_000])
    log_chars = FEATURE_NAMES.index("log_chars")
    assert huge[log_chars] > short[log_chars] + 5
    assert np.isfinite(huge).all()


def test_fast_ngram_transform_matches_the_sparse_formula(small_artifact, small_rows):
    encoder = TextFeaturizer.load(small_artifact).ngram
    texts = small_rows["prompt_text"].head(25).tolist() + ["", "!!!"]
    fast = encoder.transform(texts)
    reference = np.asarray(encoder._weighted(texts) @ encoder.projection)
    reference[:, encoder.svd_dims:] += encoder.ridge_intercept
    assert np.allclose(fast, reference, atol=1e-4)


def test_fast_transform_matches_with_character_ngrams(small_rows):
    from predictor.ngram_encoder import NgramConfig, NgramEncoder

    texts = small_rows["prompt_text"].drop_duplicates().head(120).tolist()
    targets = np.random.default_rng(0).normal(size=(len(texts), 2))
    config = NgramConfig(word_hash_bits=12, char_hash_bits=12, char_ngrams=True, svd_dims=6)
    encoder, _ = NgramEncoder.fit(texts, targets, 3, config)
    probe = texts[:10] + ["x" * 5000, ""]
    reference = np.asarray(encoder._weighted(probe) @ encoder.projection)
    reference[:, encoder.svd_dims:] += encoder.ridge_intercept
    assert np.allclose(encoder.transform(probe), reference, atol=1e-4)
