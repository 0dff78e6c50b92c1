"""CASTILLO-style profiling of a served model: prompts in, CASTILLO-schema rows out.

``lengthwise profile`` samples every prompt several times with fixed decoding
settings from any OpenAI-compatible endpoint and writes one CASTILLO row per
prompt; ``lengthwise profile report`` reproduces CASTILLO's per-model analysis;
``lengthwise profile evaluate`` measures what the profile buys the predictor.
"""
