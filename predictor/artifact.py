"""The versioned predictor artifact: train it, fingerprint its data, find or rebuild it.

Layout of ``cache_dir()/predictor/v<ARTIFACT_VERSION>/``: the model files
(:meth:`LengthModel.save`), ``baselines.json``, ``train_prompt_ids.txt`` and
``meta.json`` (data fingerprint, cleaning counts, feature set, params, metrics,
library versions).

The default artifact trains on the local CASTILLO copy minus a fixed held-out
group of prompts (:data:`HOLDOUT_FRACTION` of prompt ids, chosen by a salted hash),
so ``lengthwise predictor eval --split holdout`` reports figures on prompts it never
saw, while production still trains on 80% of the prompts. ``--no-holdout`` trains
on everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lengthwise.common.files import staged_directory
from lengthwise.common.paths import cache_dir
from predictor.errors import CastilloDataError

if TYPE_CHECKING:  # training needs the [train] extra (pandas); serving an artifact does not
    import pandas as pd

    from predictor.features import FeatureConfig
    from predictor.train import TrainParams

#: Bump when features, targets or training change, so cached artifacts are rebuilt.
ARTIFACT_VERSION = "5"
HOLDOUT_SALT = "lengthwise-eval-holdout"
HOLDOUT_FRACTION = 0.2
META_FILE = "meta.json"


def default_artifact_dir() -> Path:
    return cache_dir() / "predictor" / f"v{ARTIFACT_VERSION}"


def data_fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of the rows (order-independent), so any change in the data retrains."""
    columns = [c for c in ("sample_id", "prompt_id", "model", "prompt_text", "output_mean",
                           "output_std") if c in frame.columns]
    import pandas as pd

    row_hashes = np.sort(pd.util.hash_pandas_object(frame[columns], index=False).to_numpy())
    return hashlib.sha256(row_hashes.tobytes()).hexdigest()


def holdout_mask(frame: pd.DataFrame) -> pd.Series:
    import pandas as pd

    from predictor.loader import prompt_group_mask

    return pd.Series(prompt_group_mask(frame["prompt_id"], HOLDOUT_FRACTION, HOLDOUT_SALT),
                     index=frame.index)


def split_holdout(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of the default artifact's fixed prompt-group split."""
    mask = holdout_mask(frame).to_numpy()
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def _library_versions() -> dict[str, str]:
    import lightgbm
    import numpy
    import pandas as pd
    import scipy
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "pandas": pd.__version__, "scikit-learn": sklearn.__version__,
            "scipy": scipy.__version__, "lightgbm": lightgbm.__version__}


def train_artifact(frame: pd.DataFrame, directory: Path | None = None, *, holdout: bool = True,
                   source: str = "", feature_config: FeatureConfig | None = None,
                   params: TrainParams | None = None, served_profile: pd.DataFrame | None = None,
                   served_profile_info: dict | None = None) -> Path:
    """Cleans, trains and writes one artifact directory (atomically replaced); returns it.

    ``served_profile``: rows of a served model's own profile (CASTILLO schema, already
    cleaned for its cap) trained on beside CASTILLO's, the served model as one more model
    name. The fingerprint stays CASTILLO's, so ``ensure_trained`` keeps such an artifact."""
    import pandas as pd

    from predictor.baselines import Baselines
    from predictor.cleaning import remove_degenerate
    from predictor.features import FeatureConfig
    from predictor.train import TrainParams, train_length_model

    directory = Path(directory or default_artifact_dir())
    feature_config = feature_config or FeatureConfig()
    params = params or TrainParams()
    fingerprint = data_fingerprint(frame)
    held_out = 0
    if holdout:
        frame, held = split_holdout(frame)
        held_out = len(held)
    cleaned, cleaning = remove_degenerate(frame)
    if cleaned.empty:
        raise CastilloDataError("no training rows left after the hold-out split and cleaning")
    if served_profile is not None and served_profile.empty:
        served_profile = None
    trained_on = cleaned if served_profile is None else pd.concat(
        [cleaned, served_profile], ignore_index=True)
    result = train_length_model(trained_on, feature_config, params)

    with staged_directory(directory) as staging:
        result.model.save(staging)
        (staging / "baselines.json").write_text(json.dumps(Baselines.fit(cleaned).to_dict()))
        (staging / "train_prompt_ids.txt").write_text(
            "\n".join(sorted(cleaned["prompt_id"].unique())) + "\n")
        meta = {
            "artifact_version": ARTIFACT_VERSION,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": {
                "source": source,
                "fingerprint": fingerprint,
                "rows_loaded": int(held_out + len(frame)),
                "holdout": {"enabled": holdout, "salt": HOLDOUT_SALT,
                            "fraction": HOLDOUT_FRACTION, "rows_held_out": held_out},
                "cleaning": {**asdict(cleaning), "rows_out": cleaning.rows_out},
                "rows_trained": len(cleaned),
                # the p90 offset: heads fitted without a prompt group, scored on it
                "calibration": {"rows_fit": result.rows_fit,
                                "rows_held": result.rows_calibration},
                "prompts": int(cleaned["prompt_id"].nunique()),
                "served_model_profile": None if served_profile is None else {
                    **(served_profile_info or {}), "rows": len(served_profile)},
            },
            "feature_set": feature_config.name,
            "features": feature_config.to_dict(),
            "feature_names": result.model.featurizer.feature_names,
            "params": params.to_dict(),
            "models": result.model.models,
            "unknown_model_path": "agnostic boosters trained on the same rows without the "
                                  "model name (cross-model prediction)",
            "p90_log_offset": result.model.p90_log_offset,
            "metrics": {"calibration_split": result.calibration_metrics},
            "training_seconds": round(result.seconds, 2),
            "libraries": _library_versions(),
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def is_current(meta: dict | None) -> bool:
    """An artifact this code version can serve (its ``meta.json`` names this version)."""
    return meta is not None and meta.get("artifact_version") == ARTIFACT_VERSION


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _training_lock(directory: Path):
    # several processes (gateway workers, tests) may ask at once; one trains, the rest wait
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_trained(source: Path | str | None = None, directory: Path | None = None,
                   holdout: bool = True, feature_config: FeatureConfig | None = None,
                   params: TrainParams | None = None) -> Path:
    """The artifact directory, trained first if missing, stale in version, or on other data.

    With no CASTILLO reachable, or no ``[train]`` extra to read it with, an existing
    artifact is used as it is.
    """
    directory = Path(directory or default_artifact_dir())
    with _training_lock(directory):
        meta = read_meta(directory)
        try:
            from predictor.loader import load_castillo  # pandas: the [train] extra

            frame = load_castillo(source)
        except (CastilloDataError, ImportError):
            if meta is not None:
                return directory
            raise
        fingerprint = data_fingerprint(frame)
        if (meta is not None and meta.get("artifact_version") == ARTIFACT_VERSION
                and meta["data"]["fingerprint"] == fingerprint
                and meta["data"]["holdout"]["enabled"] == holdout):
            return directory
        train_artifact(frame, directory, holdout=holdout,
                       source=str(source or "default CASTILLO source"),
                       feature_config=feature_config, params=params)
        return directory
