"""Where shared data and cached artifacts live; the one place that decides paths.

``LENGTHWISE_SHARED_DIR`` points at the shared data folder (default: ``../shared``
beside the repository). ``LENGTHWISE_CACHE_DIR`` holds everything generated at
set-up and kept outside git: the trained predictor, the converted model
(default: ``<repo>/.cache``).

Command-line defaults: a report a command writes (``--output``) defaults to
``reports/<name>`` under the current directory, as vLLM writes its results where it is
run (:func:`report_path`); an input that names a file committed to the repository (a
calibrated cost model, an earlier report) resolves from the project root when it is not
found from the current directory (:func:`project_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    return Path(os.environ.get("LENGTHWISE_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def cache_dir() -> Path:
    path = Path(os.environ.get("LENGTHWISE_CACHE_DIR", REPO_ROOT / ".cache")).resolve()
    return path


def report_path(name: str) -> Path:
    """Default ``--output`` of every command: ``reports/<name>``, relative to the current
    directory."""
    return Path("reports") / name


def project_file(path: Path | str) -> Path:
    """An input path as given when it exists (absolute, or from the current directory),
    else the same relative path under the project root when that exists (the committed
    ``reports/`` files), else as given (so the error names what the user wrote)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    committed = REPO_ROOT / path
    return committed if committed.exists() else path
