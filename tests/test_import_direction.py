"""Which package may import which (``docs/architecture.md``, "Packages").

Every ``.py`` file of the project is parsed, and every import in it counts: module level,
inside functions (the lazy imports) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "predictor", "simulator", "lengthwise")

#: (importing modules, forbidden imported modules, why); a prefix matches the module and
#: everything under it.
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("server", ("lengthwise.worker", "lengthwise.bench", "lengthwise.cli", "lengthwise.serve",
                "simulator"),
     "the gateway runs without worker, benchmark or simulator code"),
    ("server.policy", ("server", "predictor", "simulator", "lengthwise"),
     "the policy is pure: the simulator runs it on virtual time"),
    ("predictor", ("server", "simulator", "lengthwise.worker", "lengthwise.bench",
                   "lengthwise.cli", "lengthwise.serve"),
     "the predictor is a library the gateway and the tools use, not the other way round"),
    ("lengthwise.common", ("server", "predictor", "simulator", "lengthwise.worker",
                           "lengthwise.bench", "lengthwise.cli", "lengthwise.serve"),
     "shared utilities sit below every other package"),
    ("lengthwise.worker", ("server", "simulator", "lengthwise.bench", "lengthwise.cli",
                           "lengthwise.serve"),
     "what runs beside vLLM needs neither the gateway nor the benchmarks"),
    ("simulator", ("lengthwise.bench", "lengthwise.cli", "lengthwise.serve"),
     "benchmarks use the simulator, not the other way round"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the project modules ``path`` imports, anywhere in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
                names = [base_name] if node.module else [
                    f"{base_name}.{alias.name}" for alias in node.names]
            else:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_scan_sees_function_level_and_relative_imports() -> None:
    serve = _imports(ROOT / "lengthwise" / "serve.py")
    assert any(_under(n, "lengthwise.worker") for n in serve)  # imported inside functions
    cli = _imports(ROOT / "simulator" / "cli.py")
    assert any(_under(n, "simulator.replica") for n in cli)  # ``from .replica import``


@pytest.mark.parametrize(("importer", "forbidden", "why"), RULES,
                         ids=[rule[0] for rule in RULES])
def test_import_direction(importer: str, forbidden: tuple[str, ...], why: str) -> None:
    broken = []
    for path in _project_files():
        module = _module_name(path)
        if not _under(module, importer):
            continue
        for name in sorted(_imports(path)):
            if any(_under(name, prefix) for prefix in forbidden) and not _under(name, importer):
                broken.append(f"{module} imports {name}")
    assert not broken, f"{importer}: {why}:\n" + "\n".join(broken)
