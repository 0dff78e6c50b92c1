"""A resumable profile run: every finished prompt is one fsynced JSONL line.

Layout of the output folder:
- ``run.json``: target, model and decoding settings (a resumed run must match them);
- ``rows.jsonl``: one CASTILLO-schema row per finished prompt;
- ``skipped.jsonl``: prompts the endpoint refused (e.g. too long for the context);
- ``samples.jsonl``: every finished completion, as it finishes.
A restart reads them, sends only the prompts in neither ``rows`` nor ``skipped``, and
reuses the finished completions of a prompt that was cut short: an interrupt loses
only the completions in flight.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from predictor.profiling.client import CompletionClient, EndpointUnavailable, PromptRejected
from predictor.profiling.prompt_files import ProfilePrompt
from predictor.profiling.rows import Completion, DecodingSettings, castillo_row

ROWS_FILE = "rows.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"


class RunMismatch(Exception):
    """The output folder holds a run with other settings."""


@dataclass(frozen=True)
class RunConfig:
    target: str
    model: str
    settings: DecodingSettings
    samples: int = 10
    #: requests in flight at once (each request is one sample)
    concurrency: int = 16

    def identity(self) -> dict:
        return {"model": self.model, "samples": self.samples, **asdict(self.settings)}


@dataclass
class RunSummary:
    prompts_total: int
    prompts_already_done: int
    prompts_finished: int
    prompts_skipped: int
    prompts_failed: int
    completion_tokens: int
    seconds: float
    samples_finished: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_per_prompt(self) -> float:
        return self.seconds / self.prompts_finished if self.prompts_finished else math.nan


class JsonlAppender:
    """Appends whole lines durably; a line cut by a crash is dropped on reopen."""

    def __init__(self, path: Path):
        self.path = path
        repair_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def repair_tail(path: Path) -> None:
    """Truncates an unfinished last line (the process died mid-write)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a cut last line; repair_tail removes it before appending
    return out


def done_prompt_ids(output: Path) -> set[str]:
    return {r["prompt_id"] for name in (ROWS_FILE, SKIPPED_FILE) for r in read_jsonl(output / name)}


def finished_samples(output: Path, pending: set[str]) -> dict[str, list[Completion]]:
    """Completions already generated for prompts that have no row yet."""
    out: dict[str, list[Completion]] = {}
    for record in read_jsonl(output / SAMPLES_FILE):
        if record.get("prompt_id") in pending:
            out.setdefault(record["prompt_id"], []).append(Completion(
                record["text"], int(record["tokens"]), record["finish_reason"],
                int(record["prompt_tokens"]), float(record["seconds"])))
    return out


def check_run_file(output: Path, config: RunConfig) -> None:
    path = output / RUN_FILE
    identity = config.identity()
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("identity") != identity:
            raise RunMismatch(f"{output} holds a run with {previous.get('identity')}, not {identity}")
        return
    path.write_text(json.dumps({"identity": identity, "target": config.target}, indent=2) + "\n")


async def profile_prompts(prompts: list[ProfilePrompt], config: RunConfig, output: Path,
                          progress: bool = True) -> RunSummary:
    """Samples every prompt not yet in ``output``; safe to interrupt at any moment."""
    from tqdm import tqdm

    output.mkdir(parents=True, exist_ok=True)
    check_run_file(output, config)
    done = done_prompt_ids(output)
    todo = [p for p in prompts if p.prompt_id not in done]
    summary = RunSummary(len(prompts), len(prompts) - len(todo), 0, 0, 0, 0, 0.0)
    earlier = finished_samples(output, {p.prompt_id for p in todo})
    rows = JsonlAppender(output / ROWS_FILE)
    sample_log = JsonlAppender(output / SAMPLES_FILE)
    skipped = JsonlAppender(output / SKIPPED_FILE)
    client = CompletionClient(config.target, config.model, config.settings)
    requests = asyncio.Semaphore(config.concurrency)
    queue: asyncio.Queue[ProfilePrompt] = asyncio.Queue()
    for prompt in todo:
        queue.put_nowait(prompt)
    bar = tqdm(total=len(todo), unit="prompt", disable=not progress, smoothing=0.05,
               desc=f"profile {config.model}")
    started = time.perf_counter()

    async def one_sample(prompt: ProfilePrompt) -> Completion:
        async with requests:
            completion = await client.complete(prompt.text)
        sample_log.write({"prompt_id": prompt.prompt_id, "text": completion.text,
                          "tokens": completion.tokens, "finish_reason": completion.finish_reason,
                          "prompt_tokens": completion.prompt_tokens,
                          "seconds": completion.seconds, "unix": time.time()})
        summary.samples_finished += 1
        summary.completion_tokens += completion.tokens
        elapsed = time.perf_counter() - started
        bar.set_postfix(samples=summary.samples_finished,
                        tok_s=f"{summary.completion_tokens / max(elapsed, 1e-9):.1f}",
                        skipped=summary.prompts_skipped, failed=summary.prompts_failed)
        return completion

    async def prompt_worker() -> None:
        while True:
            try:
                prompt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            reused = earlier.pop(prompt.prompt_id, [])[: config.samples]
            try:
                completions = reused + list(await asyncio.gather(
                    *(one_sample(prompt) for _ in range(config.samples - len(reused)))))
            except PromptRejected as exc:
                skipped.write({"prompt_id": prompt.prompt_id, "dataset": prompt.dataset,
                               "reason": str(exc)})
                summary.prompts_skipped += 1
            except EndpointUnavailable:
                summary.prompts_failed += 1  # not written: a restart retries it
            else:
                # samples run in parallel: the prompt's generation time is its slowest one
                rows.write(castillo_row(prompt, config.model, config.settings, completions,
                                        max(c.seconds for c in completions)))
                summary.prompts_finished += 1
            bar.update(1)

    # Three times the prompts needed to fill ``concurrency`` requests: a prompt holds its
    # worker until its slowest sample ends (often one that runs to the cap), and with
    # only enough prompts to fill the slots once, vLLM's running batch fell from 64 to
    # 16 sequences in those tails (measured). The semaphore still bounds the requests.
    workers = 3 * max(1, math.ceil(config.concurrency / config.samples))
    try:
        await asyncio.gather(*(prompt_worker() for _ in range(workers)))
    finally:
        summary.seconds = time.perf_counter() - started
        bar.close()
        rows.close()
        skipped.close()
        sample_log.close()
        await client.close()
    return summary
