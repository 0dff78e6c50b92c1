"""``lengthwise profile`` against a real stand-in server process speaking vLLM's OpenAI API
(tests/standin_worker.py: a prompt's ``LEN=n`` decides its completion length)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lengthwise.worker.process import free_port
from predictor.loader import default_castillo_dir
from predictor.profiling.prompt_files import read_prompt_file, read_prompt_files
from predictor.profiling.report import build_report, load_profile

STANDIN = Path(__file__).resolve().parents[1] / "standin_worker.py"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def standin():
    procs = []

    def start(token_delay_s: float = 0.0) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(STANDIN), "--port", str(port), "--model",
                                 "tiny-served", "--token-delay-s", str(token_delay_s)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/v1/models", timeout=0.5).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("stand-in did not start")

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _profile_cmd(url: str, prompts: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lengthwise.cli", "profile", "--worker", url, "--model",
            "tiny-served", "--prompts", str(prompts), "--samples", "4", "--max-tokens", "50",
            "--concurrency", "4", "--output", str(output), *extra]


def _write_prompts(path: Path, lengths: list[int]) -> Path:
    path.write_text("".join(f"Say something, case {i}. LEN={n}\n" for i, n in enumerate(lengths)))
    return path


def test_prompt_files_in_three_formats(tmp_path):
    records = [{"instruction": "Name a fruit.", "input": ""},
               {"instruction": "Summarise this.", "context": "A long text.", "category": "summarization"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    jsonl = read_prompt_file(tmp_path / "p.jsonl")
    assert [p.text for p in jsonl] == ["Name a fruit.", "Summarise this.\n\nA long text."]
    assert [p.dataset for p in jsonl] == ["Alpaca", "DollyDataset"]
    assert jsonl[1].category == "summarization"
    text = read_prompt_file(_write_prompts(tmp_path / "mine.txt", [3, 4]))
    assert [p.dataset for p in text] == ["mine", "mine"]
    # equal texts in two files are one prompt
    (tmp_path / "dup.txt").write_text("Name a fruit.\n")
    merged = read_prompt_files([tmp_path / "p.jsonl", tmp_path / "dup.txt"])
    assert len(merged) == 2
    parquet = default_castillo_dir() / "validate.parquet"
    if parquet.exists():
        castillo = read_prompt_file(parquet)
        assert len({p.prompt_id for p in castillo}) < len(castillo)  # 13 models per prompt
        assert {"DollyDataset", "Alpaca", "ShareGPT"} <= {p.dataset for p in castillo}


def test_profile_writes_castillo_rows_flags_degeneration_and_resumes(standin, tmp_path):
    url = standin()
    prompts = _write_prompts(tmp_path / "prompts.txt", [5, 12, 80, 30])
    out = tmp_path / "run"
    done = subprocess.run(_profile_cmd(url, prompts, out, "--limit", "2"), cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert len(load_profile(out)) == 2
    done = subprocess.run(_profile_cmd(url, prompts, out), cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout[done.stdout.index("{"):])
    assert figures["prompts_already_done"] == 2 and figures["prompts_finished"] == 2
    received = httpx.get(url + "/control", timeout=5).json()["completed"]
    assert received == 4 * 4  # resuming sent only the prompts not yet done

    rows = {r["prompt_text"].rsplit("LEN=", 1)[1]: r for r in
            map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"5", "12", "80", "30"}
    row = rows["12"]
    assert row["output_sizes"] == [12, 12, 12, 12]
    assert row["output_mean"] == 12 and row["output_std"] == 0
    assert row["output_percentiles"] == {"p25": 12, "p50": 12, "p75": 12, "p99": 12}
    assert row["input_size"] > 0 and row["gen_time"] > 0
    assert (row["temp"], row["top_p"], row["top_k"], row["max_tokens"]) == (0.7, 0.8, 20, 50)
    assert len(row["prompt_id"]) == 16 and len(row["sample_id"]) == 16
    assert row["longest_response"] and row["shortest_response"]
    assert not row["degenerate"]
    # LEN=80 over max_tokens=50: every completion stopped at the cap
    assert rows["80"]["output_sizes"] == [50] * 4
    assert rows["80"]["degenerate"] and rows["80"]["degenerate_reason"] == "cap_hit"

    report = build_report(out, castillo_source=default_castillo_dir()
                          if default_castillo_dir().exists() else tmp_path / "none")
    served = report["served_model"]
    assert served["corpora"]["all"]["prompts"] == 4
    assert served["corpora"]["all"]["degeneration_rate"] == pytest.approx(0.25)
    assert served["corpora"]["all"]["length_mean"] == pytest.approx(np.mean([5, 12, 50, 30]))


def test_interrupted_run_keeps_every_finished_row(standin, tmp_path):
    url = standin(token_delay_s=0.02)  # 30 tokens take ~0.6 s per completion
    prompts = _write_prompts(tmp_path / "prompts.txt", [30] * 12)
    out = tmp_path / "run"
    proc = subprocess.Popen(_profile_cmd(url, prompts, out), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = out / "rows.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not rows_file.exists()
                                           or len(rows_file.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    kept = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert 2 <= len(kept) < 12
    done = subprocess.run(_profile_cmd(url, prompts, out), cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(rows) == 12 and len({r["prompt_id"] for r in rows}) == 12
    assert rows[: len(kept)] == kept
    # completions finished before the kill were reused, not generated again
    # (up to one in-flight completion per request slot may finish as the client dies)
    assert httpx.get(url + "/control", timeout=5).json()["completed"] <= 12 * 4 + 4


def test_a_prompt_the_endpoint_refuses_is_skipped_not_retried(standin, tmp_path):
    url = standin()
    # the stand-in's context is 2,048 tokens, one word per token
    (tmp_path / "p.txt").write_text("short one LEN=3\n" + "word " * 5000 + "\n")
    out = tmp_path / "run"
    done = subprocess.run(_profile_cmd(url, tmp_path / "p.txt", out), cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert len(load_profile(out)) == 1
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["reason"].startswith("400")


def test_looping_text_is_told_from_long_prose_and_code():
    from predictor.profiling.degeneration import loops

    prose = ("The river starts high in the mountains, where snow melts each spring and feeds "
             "small streams that join below the pass. By the time it reaches the valley it is "
             "wide and slow, and farmers have drawn water from it for centuries to irrigate "
             "wheat, barley and orchards of apples and pears along both banks.")
    code = "\n".join(f"def area_{i}(r):\n    return 3.14159 * r * r + {i}" for i in range(8))
    assert not loops(prose) and not loops(code) and not loops("Yes.")
    assert loops(prose[:120] + " I am sorry." * 30)
    assert loops("1. Apples\n" + "2. The apples are red and the apples are red and " * 10)
    assert loops("x" * 10 + " the the the" * 40)
