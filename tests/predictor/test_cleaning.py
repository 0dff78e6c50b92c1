import numpy as np
import pandas as pd

from predictor.cleaning import degenerate_mask, remove_degenerate


def _row(sizes):
    sizes = np.asarray(sizes, float)
    return {"prompt_id": "p", "model": "m", "prompt_text": "t", "output_sizes": sizes,
            "output_mean": sizes.mean(), "output_std": sizes.std()}


def test_rule_counts_cap_hits_and_high_variance_rows():
    frame = pd.DataFrame([
        _row([100] * 10),                       # normal
        _row([15000] + [100] * 9),              # hit the generation cap
        _row([9000] + [10] * 9),                # std > 2 x mean, max > 8,499
        _row([8000] + [10] * 9),                # std > 2 x mean but max <= 8,499: kept
        _row([9000] * 5 + [8000] * 5),          # long but steady: kept
    ])
    kept, report = remove_degenerate(frame)
    assert report.rows_in == 5
    assert report.rows_removed == 2
    assert report.removed_cap_hit == 1
    assert report.removed_high_variance == 1
    assert report.rows_out == len(kept) == 3


def test_rule_on_real_rows_removes_a_small_share(castillo_validate):
    cap_hit, high_variance = degenerate_mask(castillo_validate)
    kept, report = remove_degenerate(castillo_validate)
    assert report.rows_removed == int((cap_hit | high_variance).sum())
    assert 0 < report.rows_removed < 0.02 * len(castillo_validate)
    assert max(max(s) for s in kept["output_sizes"]) < 15000
