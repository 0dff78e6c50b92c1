"""Chat-prompt cues for answer length, in groups that the ablation keeps or drops one by one.

Prompts as users write them state the answer they want: a size ("in one sentence",
"500 words", "list 10"), a register ("briefly", "in detail"), a question type
(yes/no, wh-, imperative) and an output kind (code, list, essay, extraction from a
given passage). Each group reads the clipped prompt text only and costs microseconds.

Groups (names are what ``FeatureConfig.chat_cues`` lists):

* ``length_request``: an explicit size, converted to an estimate in tokens, its bound
  (at most / at least) and brevity / verbosity words;
* ``question_type``: how the instruction opens and closes, and the output kind asked for;
* ``language``: the share of letters per script and of common English / other European
  function words (CASTILLO is nearly all English, so this mainly guards served traffic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "couple": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "hundred": 100, "few": 3, "several": 4,
}
#: rough tokens per requested unit of answer (English, BPE tokenizers of the 13 models)
TOKENS_PER_UNIT = {
    "word": 1.4, "sentence": 25.0, "paragraph": 110.0, "line": 12.0, "item": 35.0,
    "example": 45.0, "question": 20.0, "name": 6.0, "character": 0.3, "page": 600.0,
    "tweet": 45.0, "slide": 70.0, "chapter": 900.0, "stanza": 35.0, "step": 40.0,
}
_UNIT_ALIASES = {
    "words": "word", "word": "word", "sentence": "sentence", "sentences": "sentence",
    "paragraph": "paragraph", "paragraphs": "paragraph", "line": "line", "lines": "line",
    "bullet": "item", "bullets": "item", "points": "item", "point": "item", "items": "item",
    "item": "item", "tips": "item", "ways": "item", "ideas": "item", "reasons": "item",
    "suggestions": "item", "options": "item", "facts": "item", "things": "item",
    "benefits": "item", "features": "item", "types": "item", "strategies": "item",
    "examples": "example", "example": "example", "questions": "question",
    "question": "question", "names": "name", "name": "name", "characters": "character",
    "chars": "character", "page": "page", "pages": "page", "tweet": "tweet",
    "tweets": "tweet", "slide": "slide", "slides": "slide", "chapter": "chapter",
    "chapters": "chapter", "stanza": "stanza", "stanzas": "stanza", "verses": "stanza",
    "steps": "step", "step": "step",
}
_NUMBER = r"\d{1,5}|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
_UNIT = "|".join(sorted(_UNIT_ALIASES, key=len, reverse=True))
SIZE_PATTERN = re.compile(
    rf"\b({_NUMBER})(?:\s*-\s*|\s+)(?:to\s+\d{{1,5}}\s+|or\s+\w+\s+)?"
    rf"(?:(?:short|brief|simple|key|main|different|unique|creative|new|good|best|"
    rf"possible|bullet|great|important|more)\s+)?({_UNIT})\b",
    re.IGNORECASE,
)
LIST_PATTERN = re.compile(rf"\b(?:list|give(?: me)?|name|top|provide|suggest|generate)\s+"
                          rf"(?:me\s+)?({_NUMBER})\b", re.IGNORECASE)
UPPER_BOUND = re.compile(r"\b(at most|no more than|maximum|max\.?|under|less than|fewer than|"
                         r"within|up to|not exceed|limit(?:ed)? to)\b", re.IGNORECASE)
LOWER_BOUND = re.compile(r"\b(at least|minimum|min\.?|more than|over|no less than)\b",
                         re.IGNORECASE)
BREVITY = ("briefly", "brief", "short", "concise", "succinct", "in a nutshell", "tl;dr",
           "one word", "one sentence", "single sentence", "a sentence", "few words",
           "yes or no", "just the answer", "only the answer", "only output", "only return",
           "no explanation", "without explanation", "don't explain", "do not explain",
           "one line", "one-line", "keep it short", "summarize", "summary", "in short")
VERBOSITY = ("in detail", "detailed", "comprehensive", "thorough", "elaborate", "in depth",
             "in-depth", "step by step", "step-by-step", "extensive", "complete", "full code",
             "entire", "essay", "article", "blog post", "story", "report", "outline",
             "explain", "long", "as much as", "everything")

WH_WORDS = ("what", "who", "whom", "whose", "when", "where", "which", "why", "how")
YES_NO_OPENERS = ("is", "are", "was", "were", "do", "does", "did", "can", "could", "will",
                  "would", "should", "has", "have", "had", "may", "might", "must", "shall")
IMPERATIVE_VERBS = (
    "write", "create", "generate", "give", "list", "explain", "describe", "make", "tell",
    "provide", "implement", "design", "compose", "summarize", "summarise", "translate",
    "rewrite", "classify", "extract", "identify", "find", "name", "convert", "edit",
    "compute", "calculate", "suggest", "develop", "build", "draft", "outline", "compare",
    "analyze", "analyse", "evaluate", "imagine", "act", "pretend", "help", "show", "fix",
    "complete", "construct", "come", "brainstorm", "propose", "plan", "prepare",
)
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "code": ("write a function", "write a program", "write code", "implement", "python",
             "javascript", "```", "def ", "class ", "sql", "regex", "script", "snippet"),
    "list": ("list", "bullet", "enumerate", "top ", "ideas", "ways to", "tips", "steps"),
    "essay": ("essay", "article", "blog", "story", "report", "speech", "letter", "post",
              "chapter", "script for", "narrative", "proposal", "cover letter"),
    "yes_no": ("yes or no", "true or false", "is it true", "is it possible", "correct or"),
    "extraction": ("extract", "from the passage", "from the text", "from the paragraph",
                   "based on the", "according to", "given the following", "in the text",
                   "reference text", "from the article", "mentioned in"),
    "classification": ("classify", "categorize", "categorise", "which of the following",
                       "sentiment", "label", "is this", "identify whether", "odd one out"),
    "transformation": ("rewrite", "paraphrase", "translate", "correct the", "convert",
                       "rephrase", "edit the", "shorten", "improve the"),
}

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
ENGLISH_FUNCTION_WORDS = frozenset(
    ["the", "a", "an", "of", "to", "and", "in", "is", "are", "for", "on", "with", "that", "this", "it", "be", "as", "by", "or", "what", "how", "you", "i", "me", "my", "your", "can", "from", "at", "which", "do", "does", "please"])
OTHER_FUNCTION_WORDS = frozenset(
    ["el", "la", "los", "las", "de", "que", "y", "en", "un", "una", "es", "por", "para", "con", "del", "al", "se", "le", "les", "des", "et", "est", "une", "pour", "dans", "qui", "ne", "pas", "der", "die", "das", "und", "ist", "nicht", "ein", "eine", "zu", "mit", "den", "auf", "il", "di", "che", "non", "per", "sono", "come", "não", "uma", "com", "os", "em"])
# (name, first code point, last code point) of scripts with many web users
SCRIPTS = (("cjk", 0x3040, 0x9FFF), ("hangul", 0xAC00, 0xD7AF), ("cyrillic", 0x0400, 0x04FF),
           ("arabic_hebrew", 0x0590, 0x06FF))


def _number(token: str) -> float:
    token = token.lower()
    return float(token) if token.isdigit() else float(NUMBER_WORDS.get(token, 0))


def length_request(text: str, lower: str) -> list[float]:
    sizes = []
    for match in SIZE_PATTERN.finditer(text[:3000]):
        count = _number(match.group(1))
        unit = _UNIT_ALIASES[match.group(2).lower()]
        if 0 < count <= 20_000:
            sizes.append(count * TOKENS_PER_UNIT[unit])
    listed = [_number(m.group(1)) for m in LIST_PATTERN.finditer(text[:3000])]
    listed = [n for n in listed if 1 < n <= 200]
    estimate = max(sizes) if sizes else (max(listed) * TOKENS_PER_UNIT["item"] if listed else 0.0)
    return [
        math.log1p(estimate),
        float(len(sizes) + len(listed)),
        float(bool(UPPER_BOUND.search(lower))),
        float(bool(LOWER_BOUND.search(lower))),
        float(sum(lower.count(cue) for cue in BREVITY)),
        float(sum(lower.count(cue) for cue in VERBOSITY)),
    ]


LENGTH_REQUEST_NAMES = ("request_log_tokens", "request_count", "request_upper_bound",
                        "request_lower_bound", "request_brevity_cues", "request_verbosity_cues")


def _opening_word(sentence: str) -> str:
    match = _WORD.search(sentence)
    return match.group(0).lower() if match else ""


def question_type(text: str, lower: str) -> list[float]:
    stripped = text.strip()
    paragraphs = [p for p in re.split(r"\n\s*\n", stripped) if p.strip()] or [""]
    first_word = _opening_word(stripped)
    # the instruction often closes a prompt that opens with a passage to work on
    last_sentence = re.split(r"(?<=[.!?])\s+", stripped)[-1] if stripped else ""
    last_word = _opening_word(last_sentence)
    longest = max(len(p) for p in paragraphs)
    row = [
        float(first_word in WH_WORDS),
        float(first_word in YES_NO_OPENERS),
        float(first_word in IMPERATIVE_VERBS),
        float(last_word in WH_WORDS),
        float(last_word in YES_NO_OPENERS),
        float(stripped.endswith("?")),
        float(len(paragraphs)),
        longest / max(1, len(stripped)),
        float("input:" in lower or "context:" in lower or '"""' in text or "text:" in lower),
    ]
    row.extend(float(any(cue in lower for cue in cues)) for cues in OUTPUT_KINDS.values())
    return row


QUESTION_TYPE_NAMES = (
    "opens_wh", "opens_yes_no", "opens_imperative", "closes_wh", "closes_yes_no",
    "ends_question_mark", "paragraphs", "longest_paragraph_share", "has_input_block",
) + tuple(f"kind_{k}" for k in OUTPUT_KINDS)


def language(text: str, lower: str) -> list[float]:
    letters = [ch for ch in text if ch.isalpha()]
    n = max(1, len(letters))
    codes = [ord(ch) for ch in letters]
    row = [sum(1 for c in codes if c < 0x250) / n]  # Latin (basic and extended)
    row.extend(sum(1 for c in codes if lo <= c <= hi) / n for _, lo, hi in SCRIPTS)
    words = _WORD.findall(lower[:2000])
    m = max(1, len(words))
    row.append(sum(1 for w in words if w in ENGLISH_FUNCTION_WORDS) / m)
    row.append(sum(1 for w in words if w in OTHER_FUNCTION_WORDS) / m)
    return row


LANGUAGE_NAMES = ("script_latin",) + tuple(f"script_{name}" for name, _, _ in SCRIPTS) + (
    "english_function_words", "other_european_function_words")

GROUPS: dict[str, tuple[Callable[[str, str], list[float]], tuple[str, ...]]] = {
    "length_request": (length_request, LENGTH_REQUEST_NAMES),
    "question_type": (question_type, QUESTION_TYPE_NAMES),
    "language": (language, LANGUAGE_NAMES),
}


def cue_names(groups: tuple[str, ...]) -> list[str]:
    return [name for group in groups for name in GROUPS[group][1]]


def chat_cues(text: str, groups: tuple[str, ...]) -> np.ndarray:
    """One row of :func:`cue_names` ``(groups)`` for a clipped prompt text."""
    lower = text.lower()
    row: list[float] = []
    for group in groups:
        row.extend(GROUPS[group][0](text, lower))
    return np.asarray(row, dtype=np.float32)
