"""Options that recur across ``lengthwise`` commands mean the same thing in every one.

* ``--worker``: a running vLLM worker's base URL (help starts with the same phrase);
* ``--output``: a path, what the command writes; a default report is ``reports/<name>``
  relative to the current directory;
* ``--plot/--no-plot``: a flag, the plot goes beside ``--output``.
"""

from __future__ import annotations

import contextlib
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lengthwise.cli import app

WORKER_HELP = "A running vLLM worker's base URL"


def _options():
    """(command path, option, callback parameter annotation) for every option."""
    out = []

    def walk(command, path):
        callback = command.callback
        hints = typing.get_type_hints(callback, include_extras=True) if callback else {}
        for param in command.params:
            out.append((" ".join(path), param, hints.get(param.name)))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(None):
                walk(command.get_command(None, name), [*path, name])

    walk(typer.main.get_command(app), ["lengthwise"])
    return out


OPTIONS = _options()


def _is_path(hint) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint is Path or Path in typing.get_args(hint)  # Path or Path | None


def _named(name: str):
    return [(where, p, hint) for where, p, hint in OPTIONS if name in p.opts]


def test_every_command_is_reached():
    commands = {where for where, _, _ in OPTIONS}
    for expected in ("lengthwise serve", "lengthwise simulate run", "lengthwise bench live",
                     "lengthwise profile", "lengthwise predictor eval"):
        assert expected in commands


def test_worker_is_a_running_workers_base_url_everywhere():
    found = _named("--worker")
    assert len(found) >= 10
    for where, param, _ in found:
        assert (param.help or "").startswith(WORKER_HELP), (where, param.help)


def test_output_is_a_path_and_defaults_under_reports_in_the_current_directory():
    found = _named("--output")
    assert len(found) >= 20
    for where, param, hint in found:
        assert _is_path(hint), (where, hint)
        if param.default is not None:
            default = Path(param.default)
            assert not default.is_absolute() and default.parts[0] == "reports", (where, default)


def test_plot_is_a_flag_everywhere():
    plots = [(where, p) for where, p, _ in OPTIONS if p.name in ("plot", "plots")]
    assert len(plots) >= 4
    for where, param in plots:
        assert param.opts == ["--plot"] and param.secondary_opts == ["--no-plot"], where


def test_simulate_counts_engines_not_workers():
    run = [p for where, p, _ in OPTIONS if where == "lengthwise simulate run"]
    assert any(p.opts == ["--engines"] for p in run)
    assert all(p.hidden for p in run if "--workers" in p.opts)


def test_online_replay_refuses_a_worker(tmp_path):
    result = CliRunner().invoke(app, ["bench", "online", str(tmp_path), "--worker", "http://x"])
    assert result.exit_code == 2 and "--mode live" in result.output


def test_ceiling_without_a_worker_starts_one(monkeypatch, tmp_path):
    from lengthwise.bench import ceiling_samples
    from lengthwise.worker import process

    started, ran = [], []

    @contextlib.contextmanager
    def fake_worker_for(url, model=None, **_kwargs):
        started.append(url)
        yield "http://127.0.0.1:1", "m"

    monkeypatch.setattr(process, "worker_for", fake_worker_for)
    monkeypatch.setattr(ceiling_samples, "run_ceiling", lambda **kw: ran.append(kw))
    monkeypatch.chdir(tmp_path)  # the committed cost model is found from the project root
    result = CliRunner().invoke(app, ["bench", "ceiling", "--output", "c.json"])
    assert result.exit_code == 0, result.output
    assert started == [None] and ran[0]["worker"] == "http://127.0.0.1:1"
    assert ran[0]["cost_model"].is_absolute() and ran[0]["cost_model"].is_file()


@pytest.mark.parametrize("args", [["--from-samples", "reports/nope.json"],
                                  ["--castillo", "Llama-3.1-8B", "--worker", "http://x"]])
def test_ceiling_input_errors_are_usage_errors(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "ceiling", *args])
    assert result.exit_code == 2, result.output
