"""Writing files so that a reader never sees half of one: atomic replaces and strict JSON.

Shared by every package that writes artifacts or benchmark reports (the predictor artifact,
the converted local model, reports/*.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf replaced by None, so the JSON is valid for strict parsers.

    A figure that could not be measured (an arm with no successful request, a Kendall tau over
    one model) is "no value", which JSON spells null; Python would write a bare ``NaN``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` through a sibling temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; reports are for everyone
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_report(path: Path | str, data: Any) -> Path:
    """Strict JSON (non-finite floats become null), indented, written atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, default=_plain) + "\n"
    return atomic_write_text(path, text)


def _plain(value: Any) -> Any:
    # numpy scalars and Paths appear in reports; anything else is a bug worth raising on.
    if hasattr(value, "item"):
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Build a directory beside ``target`` and swap it in only if the block succeeds.

    Readers (a gateway loading the predictor, vLLM loading the model) see either the old
    complete folder or the new complete one, never a half-written one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; these folders serve every local user
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
