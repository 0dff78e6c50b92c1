"""Shared fixtures of the deploy tests: paths, and the generator module under deploy/grafana."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(scope="session")
def generator() -> ModuleType:
    """deploy/grafana/generate.py, imported by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "lengthwise_deploy_generate", DEPLOY / "grafana" / "generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # scripts/test.sh installs Debian's `prometheus` package (promtool included);
        # in CI a missing binary is a failure, on a developer machine a skip.
        message = f"{name} not found: apt-get install -y prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")
