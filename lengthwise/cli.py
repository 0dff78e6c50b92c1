"""The ``lengthwise`` console script. Each package owns its own subcommands.

Subcommands are imported only when they run (or when ``lengthwise --help`` lists them), so
``lengthwise serve`` loads neither the benchmarks nor the simulator, and a core install
(no extras) runs every command that does not need one.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

#: name -> (module, attribute: a typer app or a command function, help of a group)
SUBCOMMANDS: dict[str, tuple[str, str, str | None]] = {
    "serve": ("lengthwise.serve", "serve", None),
    "worker": ("lengthwise.worker.cli", "worker", None),
    "predictor": ("predictor.cli", "app", "Train, evaluate and query the length predictor."),
    "profile": ("predictor.profiling.cli", "app",
                "Profile a served model CASTILLO-style; report and evaluate profiles."),
    "simulate": ("simulator.cli", "app",
                 "Replay traces through the simulated gateway and vLLM engines."),
    "bench": ("lengthwise.bench.cli", "app",
              "Every benchmark and experiment; each writes a JSON report."),
}


def load_subcommand(name: str):  # -> click command
    """Import subcommand ``name`` and build its click command."""
    module, attribute, group_help = SUBCOMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if not isinstance(target, typer.Typer):
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        target = single
    command = typer.main.get_command(target)
    command.name = name
    if group_help:
        command.help = group_help
    return command


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx) -> list[str]:  # type: ignore[no-untyped-def]
        return list(SUBCOMMANDS)

    def get_command(self, ctx, cmd_name):  # type: ignore[no-untyped-def]
        return load_subcommand(cmd_name) if cmd_name in SUBCOMMANDS else None


app = typer.Typer(no_args_is_help=True, add_completion=False, cls=_LazyGroup)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
