"""Reads CASTILLO rows (the public Hugging Face row schema) from a folder, a file, or the hub.

Sources, in the order :func:`load_castillo` tries them when none is named:
``shared_dir()/castillo`` when present, then the Hugging Face dataset
``danfperam/castillo`` (needs the ``hub`` extra and a network).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lengthwise.common.paths import shared_dir
from predictor.errors import CastilloDataError

HUB_DATASET = "danfperam/castillo"
HUB_CONFIGS = ("sanitized", "original", "degenerate")
HUB_SPLITS = ("train", "validate", "test")
PERCENTILE_KEYS = ("p25", "p50", "p75", "p99")
#: Columns the predictor needs; everything else in a row is carried along untouched.
REQUIRED_COLUMNS = ("prompt_id", "model", "prompt_text", "output_sizes", "output_mean")
DATA_SUFFIXES = (".parquet", ".json", ".jsonl")


def default_castillo_dir() -> Path:
    return shared_dir() / "castillo"


def data_files(path: Path) -> list[Path]:
    """The CASTILLO files a path names: the file itself, or the data files in a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        if files:
            return files
        raise CastilloDataError(f"no parquet or JSON files in {path}")
    raise CastilloDataError(f"no such CASTILLO file or folder: {path}")


def read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix in (".json", ".jsonl"):
        frame = _read_json(path)
    else:
        raise CastilloDataError(f"unsupported CASTILLO file type: {path}")
    return normalize_rows(frame, origin=str(path))


def _read_json(path: Path) -> pd.DataFrame:
    # JSON Lines (the hub's export format) or one JSON array / {"rows": [...]} document.
    with path.open("rb") as handle:
        head = handle.read(1 << 16).lstrip()
    if path.suffix.lower() == ".jsonl" or (head[:1] == b"{" and b"\n{" in head):
        return pd.read_json(path, lines=True, dtype=False)
    document = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    if isinstance(document, dict):
        document = document.get("rows", document.get("data", [document]))
    return pd.DataFrame.from_records(document)


def read_path(path: Path | str) -> pd.DataFrame:
    """All rows of a CASTILLO file or folder, in one frame (duplicate ``sample_id`` rows dropped)."""
    frames = [read_file(p) for p in data_files(Path(path))]
    frame = pd.concat(frames, ignore_index=True)
    if "sample_id" in frame.columns:
        frame = frame.drop_duplicates("sample_id").reset_index(drop=True)
    return frame


def load_hub(config: str = "original", splits: Sequence[str] = ("train", "validate")) -> pd.DataFrame:
    """Rows of ``danfperam/castillo`` from the Hugging Face hub (``pip install 'lengthwise[hub]'``)."""
    if config not in HUB_CONFIGS:
        raise CastilloDataError(f"unknown CASTILLO config {config!r}; one of {HUB_CONFIGS}")
    try:
        import datasets  # optional dependency: the ``hub`` extra
    except ImportError as exc:
        raise CastilloDataError("loading from the hub needs the 'hub' extra (datasets)") from exc
    frames = []
    for split in splits:
        if split not in HUB_SPLITS:
            raise CastilloDataError(f"unknown CASTILLO split {split!r}; one of {HUB_SPLITS}")
        try:
            part = datasets.load_dataset(HUB_DATASET, config, split=split)
        except Exception as exc:  # network, auth or cache failures all mean "not reachable"
            raise CastilloDataError(f"could not load {HUB_DATASET}/{config}/{split}: {exc}") from exc
        frames.append(normalize_rows(part.to_pandas(), origin=f"hub:{config}/{split}"))
    frame = pd.concat(frames, ignore_index=True)
    if "sample_id" in frame.columns:
        frame = frame.drop_duplicates("sample_id").reset_index(drop=True)
    return frame


def load_castillo(source: Path | str | None = None, hub_config: str = "original") -> pd.DataFrame:
    """CASTILLO rows from ``source`` (file or folder), else the shared copy, else the hub."""
    if source is not None:
        return read_path(source)
    local = default_castillo_dir()
    if local.is_dir():
        return read_path(local)
    return load_hub(hub_config)


def _as_percentiles(value) -> dict[str, float]:
    # parquet gives a dict (struct), JSON a dict or a JSON string, numpy a record.
    if isinstance(value, str):
        value = json.loads(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    if not isinstance(value, dict):
        value = dict(value)
    return {k: float(value[k]) for k in PERCENTILE_KEYS if k in value and value[k] is not None}


def _as_sizes(value) -> np.ndarray:
    if isinstance(value, str):
        value = json.loads(value)
    return np.asarray(list(value), dtype=np.float64)


def normalize_rows(frame: pd.DataFrame, origin: str = "") -> pd.DataFrame:
    """Checks the schema and brings list/struct columns to one in-memory form."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CastilloDataError(f"{origin}: not CASTILLO rows, missing columns {missing}")
    frame = frame.copy()
    frame["prompt_id"] = frame["prompt_id"].astype(str)
    frame["model"] = frame["model"].astype(str)
    frame["prompt_text"] = frame["prompt_text"].fillna("").astype(str)
    frame["output_sizes"] = [_as_sizes(v) for v in frame["output_sizes"]]
    frame["output_mean"] = frame["output_mean"].astype(float)
    if "output_std" not in frame.columns:
        frame["output_std"] = [float(np.std(s)) if len(s) else 0.0 for s in frame["output_sizes"]]
    if "output_percentiles" in frame.columns:
        frame["output_percentiles"] = [_as_percentiles(v) for v in frame["output_percentiles"]]
    else:
        frame["output_percentiles"] = [
            dict(zip(PERCENTILE_KEYS, np.percentile(s, [25, 50, 75, 99]).tolist()))
            for s in frame["output_sizes"]
        ]
    return frame.reset_index(drop=True)


def _bucket(prompt_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_group_mask(prompt_ids: Iterable[str], fraction: float, salt: str) -> np.ndarray:
    """True for rows whose prompt falls in the ``fraction`` side of a salted hash of ``prompt_id``.

    A hash (not a shuffled list) keeps each prompt's side fixed when rows are added
    or reordered, so the held-out set stays held out as the data grows.
    """
    return np.fromiter((_bucket(p, salt) < fraction for p in prompt_ids), dtype=bool)


def grouped_split(
    frame: pd.DataFrame, test_fraction: float = 0.2, salt: str = "lengthwise-split"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) with every prompt wholly on one side; reproducible for a given salt."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be between 0 and 1")
    test = prompt_group_mask(frame["prompt_id"], test_fraction, salt)
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)
