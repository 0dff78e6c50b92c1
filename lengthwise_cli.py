"""The ``lengthwise`` console script. Each package owns its own subcommands."""

from __future__ import annotations

import typer

from predictor.cli import app as predictor_app
from predictor.profiling.cli import app as profile_app
from server.bench import app as bench_app
from server.cli import serve as serve_command
from server.edt.cli import app as eval_app
from simulator.cli import app as simulate_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(predictor_app, name="predictor", help="Train, evaluate and query the length predictor.")
app.add_typer(simulate_app, name="simulate", help="Replay traces through the simulated gateway and vLLM engines.")
app.command("serve")(serve_command)
app.add_typer(bench_app, name="bench", help="Live benchmarks against real vLLM workers.")
app.add_typer(eval_app, name="eval", help="Evaluate EDT sampling: quality, diversity, length and cost.")
app.add_typer(profile_app, name="profile", help="Profile a served model CASTILLO-style; report and evaluate profiles.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
