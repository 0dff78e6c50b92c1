"""One feature row through a LightGBM booster via LightGBM's own single-row fast path.

The gateway predicts one request at a time. ``Booster.predict`` rebuilds its
prediction config and re-checks the input on every call: about 90 us per head
for one row here, most of it set-up rather than tree walking. LightGBM's C API
has a path for exactly this case (``LGBM_BoosterPredictForMatSingleRowFastInit``
once, ``LGBM_BoosterPredictForMatSingleRowFast`` per row); the python package
does not wrap it, so it is called here through the package's own loaded library.

A fast config holds buffers and is not safe to share between threads (LightGBM's
own test gives each thread its own), and predictions may run in a thread pool, so
each scorer serialises its calls with a lock; a call takes microseconds.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class SingleRowScorer:
    """``booster.predict(row[None, :], num_threads=1)[0]``, for one float row, faster."""

    def __init__(self, booster: Any) -> None:
        from lightgbm.basic import _LIB, _safe_call

        self._lib, self._safe_call = _LIB, _safe_call
        self._booster = booster  # the fast config points into it: keep it alive
        self.num_features = booster.num_feature()
        # The same iterations Booster.predict uses by default.
        num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0),
            ctypes.c_int(num_iteration), ctypes.c_int(_DTYPE_FLOAT64),
            ctypes.c_int32(self.num_features), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(self._config),
        ))
        self._row = np.zeros(self.num_features, dtype=np.float64)
        self._row_pointer = self._row.ctypes.data_as(ctypes.c_void_p)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64(0)
        self._lock = threading.Lock()

    def predict(self, row: np.ndarray) -> float:
        if row.shape != (self.num_features,):
            raise ValueError(f"expected {self.num_features} features, got shape {row.shape}")
        with self._lock:
            self._row[:] = row
            self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self._config, self._row_pointer, ctypes.byref(self._out_len), self._out_pointer,
            ))
            return float(self._out[0])

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value:
            self._lib.LGBM_FastConfigFree(config)
