"""The command line's flags read as they are typed: a `no_x` switch is `--no-x`, never typer's derived `--no-no-x`."""

from __future__ import annotations

from typing import Any

import typer

from agent.cli import app


def _commands(command: Any, path: str = "defect-agent"):
    yield path, command
    if hasattr(command, "commands"):  # a group (typer may bring its own click, so no isinstance)
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_no_double_negative_flags():
    flags = {
        f"{path}: {flag}"
        for path, command in _commands(typer.main.get_command(app))
        for param in command.params
        for flag in [*param.opts, *getattr(param, "secondary_opts", [])]
    }
    assert any(f.endswith(": --no-kb") for f in flags), "the walk found no command with --no-kb"
    assert not [f for f in flags if "--no-no-" in f]
