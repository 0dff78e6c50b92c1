import json

import numpy as np
import pytest

from predictor.errors import CastilloDataError
from predictor.loader import (
    default_castillo_dir,
    grouped_split,
    load_castillo,
    load_hub,
    read_path,
)


def _rows(frame):
    return frame.sort_values("sample_id").reset_index(drop=True)


def test_folder_of_parquet_files(small_rows, tmp_path):
    half = len(small_rows) // 2
    small_rows.iloc[:half].to_parquet(tmp_path / "a.parquet")
    small_rows.iloc[half:].to_parquet(tmp_path / "b.parquet")
    loaded = read_path(tmp_path)
    assert len(loaded) == len(small_rows)
    expected, got = _rows(small_rows), _rows(loaded)
    assert got["output_percentiles"][0] == expected["output_percentiles"][0]
    assert np.array_equal(got["output_sizes"][3], expected["output_sizes"][3])


def test_json_lines_and_json_array_with_dict_percentiles(small_rows, tmp_path):
    records = []
    for row in small_rows.head(40).to_dict("records"):
        row["output_sizes"] = [int(x) for x in row["output_sizes"]]
        records.append(row)
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in records[:20]) + "\n")
    # percentiles as a JSON-encoded string too: some exports flatten structs
    for r in records[20:]:
        r["output_percentiles"] = json.dumps(r["output_percentiles"])
    (tmp_path / "rows.json").write_text(json.dumps(records[20:]))
    loaded = _rows(read_path(tmp_path))
    assert len(loaded) == 40
    expected = _rows(small_rows.head(40))
    assert list(loaded["output_percentiles"]) == list(expected["output_percentiles"])
    assert loaded["output_sizes"][5].tolist() == expected["output_sizes"][5].tolist()


def test_default_source_is_the_shared_copy():
    if not default_castillo_dir().is_dir():
        pytest.skip("no shared CASTILLO copy")
    frame = load_castillo()
    assert {"prompt_id", "model", "prompt_text", "output_sizes"} <= set(frame.columns)
    assert frame["sample_id"].is_unique
    assert len(frame) > 50_000


def test_missing_columns_and_paths_are_clear_errors(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"prompt": "hi"}]))
    with pytest.raises(CastilloDataError, match="missing columns"):
        read_path(tmp_path)
    with pytest.raises(CastilloDataError):
        read_path(tmp_path / "nowhere")


def test_hub_source_fails_cleanly_without_network_or_extra():
    with pytest.raises(CastilloDataError):
        load_hub("sanitized", ["test"])
    with pytest.raises(CastilloDataError, match="unknown CASTILLO config"):
        load_hub("nonsense")


def test_grouped_split_keeps_prompts_on_one_side_and_is_reproducible(castillo_validate):
    train, test = grouped_split(castillo_validate, test_fraction=0.2, salt="s")
    assert not set(train["prompt_id"]) & set(test["prompt_id"])
    assert len(train) + len(test) == len(castillo_validate)
    assert 0.15 < test["prompt_id"].nunique() / castillo_validate["prompt_id"].nunique() < 0.25
    _, again_test = grouped_split(castillo_validate.sample(frac=1, random_state=1),
                                  test_fraction=0.2, salt="s")
    assert set(again_test["sample_id"]) == set(test["sample_id"])
