"""Reads prompts to profile from JSON/JSONL instruction records, CASTILLO parquet, or plain text."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from predictor.errors import CastilloDataError

DOLLY = "DollyDataset"
ALPACA = "Alpaca"


@dataclass(frozen=True)
class ProfilePrompt:
    prompt_id: str
    text: str
    #: CASTILLO's corpus label; for analysis only, never a predictor feature
    dataset: str
    category: str = "undefined"


def prompt_id_for(text: str) -> str:
    """16 hex digits of SHA-256 of the prompt text: equal texts share one id across files."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]


def instruction_text(record: dict) -> str:
    """Dolly's ``instruction`` + ``context`` or Alpaca's ``instruction`` + ``input``, as one user turn."""
    instruction = str(record.get("instruction") or "").strip()
    extra = str(record.get("context") or record.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _corpus_of_record(record: dict, fallback: str) -> str:
    if "context" in record:
        return DOLLY
    if "input" in record:
        return ALPACA
    return fallback


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    if path.suffix.lower() == ".jsonl" or (stripped.startswith("{") and "\n{" in stripped):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    document = json.loads(text)
    if isinstance(document, dict):
        document = document.get("rows", document.get("data", [document]))
    if not isinstance(document, list):
        raise CastilloDataError(f"{path}: expected a list of prompt records")
    return document


def read_prompt_file(path: Path | str) -> list[ProfilePrompt]:
    path = Path(path)
    if not path.is_file():
        raise CastilloDataError(f"no such prompt file: {path}")
    suffix = path.suffix.lower()
    out: list[ProfilePrompt] = []
    if suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if "prompt_text" not in frame.columns:
            raise CastilloDataError(f"{path}: parquet prompt files need a prompt_text column")
        datasets = frame["dataset"] if "dataset" in frame.columns else [path.stem] * len(frame)
        categories = frame["category"] if "category" in frame.columns else ["undefined"] * len(frame)
        for text, dataset, category in zip(frame["prompt_text"], datasets, categories):
            if isinstance(text, str) and text.strip():
                out.append(ProfilePrompt(prompt_id_for(text), text, str(dataset), str(category)))
    elif suffix in (".json", ".jsonl"):
        for record in _records(path):
            if not isinstance(record, dict) or "instruction" not in record:
                raise CastilloDataError(f"{path}: JSON prompt records need an 'instruction' field")
            text = instruction_text(record)
            if text:
                out.append(ProfilePrompt(prompt_id_for(text), text,
                                         _corpus_of_record(record, path.stem),
                                         str(record.get("category") or "undefined")))
    else:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                out.append(ProfilePrompt(prompt_id_for(line.strip()), line.strip(), path.stem))
    return out


def read_prompt_files(paths: Iterable[Path | str], seed: int = 0) -> list[ProfilePrompt]:
    """Unique prompts of all files, corpora interleaved round-robin (each shuffled by ``seed``).

    Interleaving keeps every corpus represented when a long run is stopped early.
    """
    by_corpus: dict[str, list[ProfilePrompt]] = {}
    seen: set[str] = set()
    for path in paths:
        for prompt in read_prompt_file(path):
            if prompt.prompt_id not in seen:
                seen.add(prompt.prompt_id)
                by_corpus.setdefault(prompt.dataset, []).append(prompt)
    rng = random.Random(seed)
    queues = []
    for corpus in sorted(by_corpus):
        items = by_corpus[corpus]
        rng.shuffle(items)
        queues.append(items)
    out: list[ProfilePrompt] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out
