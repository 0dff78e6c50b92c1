"""The core install (no extras) serves, simulates and predicts.

Each check runs in a fresh interpreter whose imports of the extras' packages (``train``:
pandas, pyarrow, tqdm; ``bench``: matplotlib, psutil, rouge-score, sacrebleu, openai) fail
as if they were not installed, so a module-level import of one of them anywhere on these
paths fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lengthwise.common.paths import REPO_ROOT, shared_dir
from simulator.latency import LinearStepModel

EXTRAS = ("pandas", "pyarrow", "tqdm", "matplotlib", "psutil", "rouge_score", "sacrebleu",
          "openai")

#: Installs the blocker, then runs ``-m MODULE ARGS...`` or ``-c CODE`` like python does.
PRELUDE = textwrap.dedent(f"""
    import importlib.abc, runpy, sys

    BLOCKED = {EXTRAS!r}

    class BlockExtras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (core install)",
                                          name=name)
            return None

    sys.meta_path.insert(0, BlockExtras())
    mode, target, *rest = sys.argv[1:]
    if mode == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(target, "<core-install check>", "exec"), {{"__name__": "__main__"}})
""")


def core(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = tmp_path / "core_python.py"
    script.write_text(PRELUDE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, str(script), *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path, env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_blocker_blocks(tmp_path):
    result = core(tmp_path, "-c", "import pandas")
    assert result.returncode != 0 and "core install" in result.stderr


def test_version_and_serve_help(tmp_path):
    assert ok(core(tmp_path, "-m", "lengthwise.cli", "--version")).startswith("lengthwise ")
    assert "--worker" in ok(core(tmp_path, "-m", "lengthwise.cli", "serve", "--help"))


def test_the_gateway_app_builds_without_benchmarks_or_simulator(tmp_path):
    """What ``lengthwise serve`` imports and builds, and nothing of bench or simulate."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from lengthwise.cli import load_subcommand
        load_subcommand("serve")
        from predictor.api import load_served_predictor
        from server.app import create_app
        from server.config import GatewayConfig
        from server.shutdown import serve_app  # noqa: F401

        cfg = GatewayConfig(workers=["http://127.0.0.1:9"])
        try:
            predictor = load_served_predictor()
        except Exception as exc:  # no trained artifact here: the stand-in's predictor
            print("no artifact:", type(exc).__name__, exc, file=sys.stderr)
            from oracle_predictor import OraclePredictor
            predictor = OraclePredictor()
        application = create_app(cfg, predictor=predictor)
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] == "simulator" or m.startswith("lengthwise.bench"))
        print("APP", type(application).__name__, "LOADED", loaded)
    """)
    out = ok(core(tmp_path, "-c", code))
    assert "APP FastAPI LOADED []" in out, out


def test_simulate_run_on_a_short_trace(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,input_tokens,output_tokens\n" + "".join(
        f"{i * 0.05},{50 + (i * 37) % 400},{5 + (i * 53) % 120}\n" for i in range(100)))
    model = tmp_path / "lin.json"
    LinearStepModel({"intercept": 0.01, "tokens": 2e-5, "decode_kv": 1e-8}).save(model)
    out = tmp_path / "o.json"
    result = core(tmp_path, "-m", "lengthwise.cli", "simulate", "run", str(trace),
                  "--cost-model", str(model), "--engines", "2", "--policy", "sjf",
                  "--predictions", "oracle", "--progress", "--output", str(out),
                  "--per-request", str(tmp_path / "r.csv"))
    ok(result)
    assert json.loads(out.read_text())["completed"] == 100
    assert "simulating: 100/100" in result.stderr  # plain progress without tqdm
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 101


def test_predictor_predict_with_the_default_artifact(tmp_path):
    from predictor.artifact import default_artifact_dir, is_current, read_meta

    if not is_current(read_meta(default_artifact_dir())):
        pytest.skip(f"no trained predictor artifact in {default_artifact_dir()}")
    out = ok(core(tmp_path, "-m", "lengthwise.cli", "predictor", "predict",
                  "Write a haiku about the sea.", "--model", "Llama-3.1-8B"))
    assert json.loads(out)["model"] == "Llama-3.1-8B"


def test_simulate_regimes_on_the_smallest_grid(tmp_path):
    from simulator.latency import RTX_PRO_6000_TABLES

    if not (shared_dir() / RTX_PRO_6000_TABLES).exists():
        pytest.skip("shared operator tables not present")
    result = core(tmp_path, "-m", "lengthwise.cli", "simulate", "regimes",
                  "--workloads", "heavy-tail-mix", "--loads", "0.5", "--no-burst",
                  "--num-requests", "40", "--output", str(tmp_path / "r.json"))
    ok(result)
    assert "plots skipped: matplotlib is not installed" in result.stderr
    assert "lengthwise[bench]" in result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["figures"] == []
