"""The ``lengthwise`` console script. Each package owns its own subcommands."""

from __future__ import annotations

import typer

from lengthwise.bench.cli import app as bench_app
from lengthwise.serve import serve as serve_command
from lengthwise.worker.cli import worker as worker_command
from predictor.cli import app as predictor_app
from predictor.profiling.cli import app as profile_app
from simulator.cli import app as simulate_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _version(value: bool) -> None:
    if value:
        from lengthwise import __version__

        typer.echo(f"lengthwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Length-aware scheduling gateway in front of vLLM workers."""


app.command("serve")(serve_command)
app.command("worker")(worker_command)
app.add_typer(predictor_app, name="predictor", help="Train, evaluate and query the length predictor.")
app.add_typer(profile_app, name="profile", help="Profile a served model CASTILLO-style; report and evaluate profiles.")
app.add_typer(simulate_app, name="simulate", help="Replay traces through the simulated gateway and vLLM engines.")
app.add_typer(bench_app, name="bench", help="Every benchmark and experiment; each writes a JSON report.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
