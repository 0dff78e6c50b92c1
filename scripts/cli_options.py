"""Print every `lengthwise` command's options, one line each: command | option | required |
default | help. For checking that recurring options (--worker, --output, --plot) read the
same everywhere (tests/test_cli_options.py asserts it):

    python scripts/cli_options.py | grep -E -- '--(worker|output|plot)'
"""

import typer

from lengthwise.cli import app


def walk(command, path: list[str]) -> None:
    group = hasattr(command, "list_commands")
    for p in command.params:
        print(" ".join(path) + (" [group]" if group else ""), "|",
              "/".join(p.opts + p.secondary_opts), "|", "required" if p.required else "", "|",
              f"default={p.default}", "|", (p.help or "").replace("\n", " "))
    if group:
        for name in command.list_commands(None):
            walk(command.get_command(None, name), [*path, name])


if __name__ == "__main__":
    walk(typer.main.get_command(app), ["lengthwise"])
