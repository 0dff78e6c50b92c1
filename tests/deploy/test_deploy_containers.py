"""The Dockerfile and the Compose stack, checked offline (no Docker Engine here):
the compose file against the Compose Specification's JSON schema (vendored by the
`check-jsonschema` package), the Dockerfile's build context against .dockerignore,
entrypoints against the real console script and vLLM's own argument parser, and
the settings they pass against the gateway's configuration model."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from server.config import GatewayConfig, load_config

STAGES = ("gateway", "worker-cpu", "worker-gpu")


# ------------------------------------------------------------------ helpers --


def _compose(deploy_dir: Path) -> dict:
    return yaml.safe_load((deploy_dir / "compose" / "compose.yaml").read_text())


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with an empty environment by default."""
    env = env or {}

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", sub, value)


def _stages(repo_root: Path) -> dict[str, list[dict]]:
    parser = DockerfileParser(path=str(repo_root / "Dockerfile"))
    stages: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            match = re.search(r"\bAS\s+(\S+)\s*$", instruction["value"], re.IGNORECASE)
            assert match, f"every stage is named: {instruction['value']}"
            current = stages.setdefault(match.group(1), [])
        if current is not None:
            current.append(instruction)
    return stages


def _exec_form(stage: list[dict], name: str) -> list[str]:
    values = [i["value"] for i in stage if i["instruction"] == name]
    assert values, name
    return json.loads(values[-1])


def _dockerignore_patterns(repo_root: Path) -> list[tuple[bool, str]]:
    patterns = []
    for line in (repo_root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def _pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _sent_to_builder(relpath: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent
    folders decides whether the path is left out of the build context."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in patterns:
        if any(re.fullmatch(_pattern_regex(pattern), c) for c in candidates):
            included = negate
    return included


# ---------------------------------------------------------------- compose --


def test_compose_file_matches_the_compose_spec_schema(deploy_dir):
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    compose = _compose(deploy_dir)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    # The schema is strict enough to catch a misspelt key.
    broken = {**compose, "services": {**compose["services"],
                                      "gateway": {**compose["services"]["gateway"], "enviroment": {}}}}
    assert list(validator.iter_errors(broken))


def test_compose_services_and_profiles(deploy_dir):
    services = _compose(deploy_dir)["services"]
    assert {"gateway", "prometheus", "grafana", "worker-gpu", "worker-cpu"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # Both workers answer to the alias the gateway resolves and Prometheus scrapes.
    for name in ("worker-gpu", "worker-cpu"):
        assert "vllm-worker" in services[name]["networks"]["default"]["aliases"]


def test_compose_builds_come_from_the_repository_dockerfile(deploy_dir, repo_root):
    stages = _stages(repo_root)
    for name, service in _compose(deploy_dir)["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = (deploy_dir / "compose" / build["context"]).resolve()
        assert context == repo_root, name
        assert (context / build["dockerfile"]).is_file()
        assert build["target"] in stages, name


def test_compose_bind_mounts_exist(deploy_dir):
    for name, service in _compose(deploy_dir)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (deploy_dir / "compose" / source).exists(), (name, source)


def test_compose_gateway_settings_are_valid(deploy_dir):
    gateway = _compose(deploy_dir)["services"]["gateway"]
    env = {k: _interpolate(str(v)) for k, v in gateway["environment"].items()}
    cfg = load_config(environ=env)
    assert cfg.host == "0.0.0.0"
    published = gateway["ports"][0].split(":")[-1]
    assert str(cfg.port) == published
    # Discovery by the workers' alias, on the port the workers listen on.
    assert cfg.worker_dns_name == "http://vllm-worker:8000"


def test_prometheus_in_compose_scrapes_the_compose_services(deploy_dir):
    compose = _compose(deploy_dir)
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["prometheus"]["volumes"]
                  if v.startswith("."))
    config_path = (deploy_dir / "compose" / mounts["/etc/prometheus/prometheus.yml"]).resolve()
    assert config_path == deploy_dir / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["lengthwise-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["vllm-worker"]["dns_sd_configs"][0]["names"] == ["vllm-worker"]
    # The EDT processor's endpoint: the port every worker service is told to serve it on.
    (edt_sd,) = jobs["lengthwise-edt"]["dns_sd_configs"]
    assert edt_sd["names"] == ["vllm-worker"]
    for name in ("worker-gpu", "worker-cpu"):
        env = compose["services"][name]["environment"]
        assert env["LENGTHWISE_EDT_METRICS_PORT"] == str(edt_sd["port"]), name


# ------------------------------------------------------------- Dockerfile --


def test_dockerfile_copies_only_files_in_the_build_context(repo_root):
    patterns = _dockerignore_patterns(repo_root)
    stages = _stages(repo_root)
    assert set(STAGES) <= set(stages)
    for stage, instructions in stages.items():
        for instruction in instructions:
            if instruction["instruction"] not in ("COPY", "ADD"):
                continue
            args = instruction["value"].split()
            if any(a.startswith("--from=") for a in args):
                continue
            for source in [a for a in args if not a.startswith("--")][:-1]:
                assert (repo_root / source).exists(), (stage, source)
                assert _sent_to_builder(source, patterns), (stage, source, ".dockerignore")


def test_dockerignore_keeps_secrets_caches_and_data_out(repo_root):
    patterns = _dockerignore_patterns(repo_root)
    for path in (".venv/bin/python", ".cache/models/x.safetensors", ".git/config", "tests/x.py",
                 "reports/live_bench.json", "server/__pycache__/a.pyc", "deploy/compose/compose.yaml"):
        assert not _sent_to_builder(path, patterns), path
    for path in ("server/app.py", "predictor/types.py", "pyproject.toml", "lengthwise/cli.py"):
        assert _sent_to_builder(path, patterns), path


def test_gateway_image_runs_the_real_console_script(repo_root):
    gateway = _stages(repo_root)["gateway"]
    entrypoint = _exec_form(gateway, "ENTRYPOINT")
    cmd = _exec_form(gateway, "CMD")
    scripts = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["lengthwise"] and "lengthwise" in scripts
    # The installed console script accepts the image's command and the Kubernetes args.
    console = Path(sys.executable).with_name("lengthwise")
    result = subprocess.run([str(console), *cmd, "--help"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--config" in result.stdout


def test_gateway_image_environment_names_real_settings(repo_root):
    gateway = _stages(repo_root)["gateway"]
    env_text = " ".join(i["value"] for i in gateway if i["instruction"] == "ENV")
    names = re.findall(r"\b(LENGTHWISE_\w+)=", env_text)
    assert names
    locations = {"LENGTHWISE_CACHE_DIR", "LENGTHWISE_SHARED_DIR"}  # lengthwise.common.paths
    for name in names:
        assert name in locations or name.removeprefix("LENGTHWISE_").lower() in GatewayConfig.model_fields


@pytest.fixture(scope="module")
def vllm_parser():
    """vLLM's own command-line parser (imports vLLM: a few seconds)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def _parse(parser, args: list[str]):
    try:
        return parser.parse_args(args)
    except SystemExit as exc:  # argparse reports unknown or invalid arguments this way
        raise AssertionError(f"vLLM rejects {args}") from exc


@pytest.mark.slow
def test_worker_commands_are_accepted_by_vllm(vllm_parser, repo_root, deploy_dir):
    stages = _stages(repo_root)
    commands = {stage: _exec_form(stages[stage], "CMD") for stage in ("worker-cpu", "worker-gpu")}
    commands["compose worker-gpu"] = [
        _interpolate(a) for a in _compose(deploy_dir)["services"]["worker-gpu"]["command"]
    ]
    k8s = yaml.safe_load((deploy_dir / "kubernetes" / "worker-deployment.yaml").read_text())
    commands["kubernetes worker"] = k8s["spec"]["template"]["spec"]["containers"][0]["args"]
    for where, args in commands.items():
        if "--model" not in args:  # the GPU image's CMD leaves the model to the operator
            args = ["--model", "some/model", *args]
        parsed = _parse(vllm_parser, args)
        assert parsed.scheduling_policy == "priority", where
        assert parsed.logits_processors, where
    for stage in ("worker-cpu", "worker-gpu"):
        entrypoint = _exec_form(stages[stage], "ENTRYPOINT")
        assert entrypoint[1:] == ["-m", "vllm.entrypoints.openai.api_server"]
    # And the parser really rejects nonsense, so the checks above can fail.
    with pytest.raises(AssertionError):
        _parse(vllm_parser, ["--scheduling-policy", "shortest"])


def test_worker_images_load_edt_processors_that_exist(repo_root):
    from lengthwise.worker import process as worker_process

    stages = _stages(repo_root)
    cpu = _exec_form(stages["worker-cpu"], "CMD")
    gpu = _exec_form(stages["worker-gpu"], "CMD")
    # The CPU build runs vLLM's V1 model runner, GPUs Model Runner V2.
    assert cpu[cpu.index("--logits-processors") + 1] == worker_process.EDT_LOGITS_PROCESSOR_V1
    assert gpu[gpu.index("--logits-processors") + 1] == worker_process.EDT_LOGITS_PROCESSOR_MRV2
    for spec in (worker_process.EDT_LOGITS_PROCESSOR_V1, worker_process.EDT_LOGITS_PROCESSOR_MRV2):
        module, _, cls = spec.partition(":")
        path = repo_root / (module.replace(".", "/") + ".py")
        assert re.search(rf"^class {cls}\b", path.read_text(), re.MULTILINE), spec


def test_cpu_worker_image_serves_the_local_model(repo_root):
    from lengthwise.worker.local_model import SERVED_MODEL_NAME

    stage = _stages(repo_root)["worker-cpu"]
    cmd = _exec_form(stage, "CMD")
    env_text = " ".join(i["value"] for i in stage if i["instruction"] == "ENV")
    cache = re.search(r"LENGTHWISE_CACHE_DIR=(\S+)", env_text).group(1)
    # lengthwise.worker.local_model writes <cache>/models/<name>; the CMD serves that folder.
    assert cmd[cmd.index("--model") + 1] == f"{cache}/models/{SERVED_MODEL_NAME}"
    assert cmd[cmd.index("--served-model-name") + 1] == SERVED_MODEL_NAME
    assert any("python -m lengthwise.worker.local_model" in i["value"] for i in stage if i["instruction"] == "RUN")
    assert os.sep == "/"  # paths above are POSIX, as in the image


def test_gateway_image_bakes_the_predictor_where_the_gateway_loads_it(repo_root, deploy_dir):
    from predictor.artifact import default_artifact_dir

    stages = _stages(repo_root)
    gateway = stages["gateway"]
    env_text = " ".join(i["value"] for i in gateway if i["instruction"] == "ENV")
    predictor_dir = re.search(r"LENGTHWISE_PREDICTOR_DIR=(\S+)", env_text).group(1)
    copies = [i["value"].split() for i in gateway if i["instruction"] == "COPY"
              and "--from=predictor-artifact" in i["value"]]
    assert len(copies) == 1 and copies[0][-1].rstrip("/") == predictor_dir
    # The picking stage asks the installed code which artifact version it loads.
    pick = " ".join(i["value"] for i in stages["predictor-artifact"])
    assert "--from=predictor /" in pick and "default_artifact_dir().name" in pick
    # The Compose build context defaults to the folder `lengthwise predictor train`
    # writes its versioned artifacts into.
    build = _compose(deploy_dir)["services"]["gateway"]["build"]
    context = _interpolate(build["additional_contexts"]["predictor"])
    assert (deploy_dir / "compose" / context).resolve() == repo_root / ".cache" / "predictor"
    assert default_artifact_dir().parent.name == "predictor"
