"""Cheap lexical statistics of a prompt: size, shape, task-type and requested-format cues."""

from __future__ import annotations

import math
import re

import numpy as np

# Cues for what drives answer length: task type (code vs prose), requested format
# and requested size. Counted on the clipped text, so cost is bounded.
CUES: dict[str, tuple[str, ...]] = {
    "code": ("def ", "import ", "return ", "class ", "```", "function", "python", "code", "sql",
             "java", "script", "implement", "program", "algorithm", "print("),
    "tests": ("assert", "test", ">>>", "example", "input:", "output:", "sample"),
    "solution": ("begin solution", "end solution", "solution", "your code", "complete the"),
    "list": ("list", "enumerate", "bullet", "tips", "ways", "steps", "ideas", "reasons"),
    "long_form": ("essay", "story", "article", "blog", "explain", "describe", "detail", "guide",
                  "tutorial", "write", "generate", "create", "compose", "elaborate"),
    "short_form": ("one word", "single word", "short", "brief", "concise", "one sentence",
                   "yes or no", "classify", "which of", "extract", "true or false", "name the",
                   "who ", "when ", "where ", "what is", "how many"),
    "rewrite": ("rewrite", "paraphrase", "translate", "summar", "edit", "correct", "convert"),
    "format": ("json", "table", "markdown", "csv", "format", "html", "xml"),
    "reasoning": ("why", "how ", "compare", "difference", "analy", "step by step", "reason"),
    "creative": ("poem", "song", "lyrics", "haiku", "letter", "email", "dialogue", "speech"),
    "chat": ("hi", "hello", "please", "thank", "can you", "could you", "i want", "help me"),
}
SIZE_REQUEST = re.compile(
    r"(\d{1,5})\s*(words?|sentences?|paragraphs?|lines?|items?|examples?|tips|ways|points|"
    r"steps|ideas|questions|characters|pages?|bullet)",
    re.IGNORECASE,
)

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars", "log_clipped_words", "log_lines", "digit_share", "non_ascii_share",
    "upper_share", "punct_share", "questions", "code_fences", "indented_lines",
    "log_last_line_chars", "log_first_line_chars", "requested_size", "log_requested_size",
    "empty",
) + tuple(f"cue_{name}" for name in CUES)


def lexical_features(text: str, full_chars: int) -> np.ndarray:
    """One row of :data:`FEATURE_NAMES` for a clipped text whose full length is ``full_chars``."""
    n = max(1, len(text))
    lower = text.lower()
    lines = text.split("\n")
    stripped = text.strip()
    digits = sum(map(str.isdigit, text))
    upper = sum(map(str.isupper, text))
    non_ascii = n - len(text.encode("ascii", errors="ignore"))
    punct = sum(text.count(c) for c in ".,;:!?()[]{}=<>\"'")
    sizes = [int(m.group(1)) for m in SIZE_REQUEST.finditer(lower[:2000])]
    requested = float(max(sizes)) if sizes else 0.0
    last_line = stripped.rsplit("\n", 1)[-1] if stripped else ""
    first_line = stripped.split("\n", 1)[0] if stripped else ""
    row = [
        math.log1p(full_chars),
        math.log1p(len(text.split())),
        math.log1p(len(lines)),
        digits / n,
        non_ascii / n,
        upper / n,
        punct / n,
        float(text.count("?")),
        float(text.count("```")),
        float(sum(1 for line in lines if line.startswith(("    ", "\t")))),
        math.log1p(len(last_line)),
        math.log1p(len(first_line)),
        requested,
        math.log1p(requested),
        float(not stripped),
    ]
    row.extend(float(sum(lower.count(cue) for cue in cues)) for cues in CUES.values())
    return np.asarray(row, dtype=np.float32)
