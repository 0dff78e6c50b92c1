"""Where shared data and cached artifacts live; the one place that decides paths.

``LENGTHWISE_SHARED_DIR`` points at the shared data folder (default: ``../shared``
beside the repository). ``LENGTHWISE_CACHE_DIR`` holds everything generated at
set-up and kept outside git: the trained predictor, the converted model
(default: ``<repo>/.cache``).
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


def reports_dir() -> Path:
    return REPO_ROOT / "reports"
