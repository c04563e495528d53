"""The `pimesh` command line: one typer app that grows a sub-command per component.

This module only wires sub-commands together; each component parses its own settings
so the same names work as flags and as `PIMESH_*` environment variables.

Each sub-command is registered by a module (`COMMANDS`) that is imported only when the
command is looked up: to run it, or to show help (which looks them all up). So
`pimesh agent run` on a Pi never loads what the other commands need (the Kubernetes
client, the controller, the sandbox's emulator: some 30 MB of a 90 MB agent before, see
benchmarks/agent_footprint.py). Each of those modules has a `register(app)` that adds its
commands to a typer app, exactly as it would to `pimesh` itself (`version` is this
module's).
"""

import importlib
from collections.abc import Callable, MutableMapping
from typing import Final

import typer

# typer vendors click: its groups take and return the types of `typer._click`.
from typer import _click as click
from typer.core import TyperGroup
from typer.main import get_group

COMMANDS: Final[dict[str, str]] = {
    "devices": "cli.operator",
    "approve": "cli.operator",
    "revoke": "cli.operator",
    "rekey": "cli.operator",
    "rotate": "cli.operator",
    "led": "cli.operator",
    "sandbox": "cli.sandbox",
    "version": __name__,
    "controller": "cli.controller",
    "agent": "cli.agent",
}
"""Every sub-command, in the order help lists them, and the module that registers it."""


class LazyCommands(TyperGroup):
    """The `pimesh` group: a sub-command's module is imported when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every sub-command's name, without importing any of them."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command `cmd_name`, its module imported (and its commands added) first."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands.update(load_commands(COMMANDS[cmd_name]))
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As typer's, which suggests close names from the commands loaded: load them all."""
        if args and args[0] not in COMMANDS:
            for name in COMMANDS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def load_commands(module_name: str) -> MutableMapping[str, click.Command]:
    """Import `module_name` and return the commands its `register(app)` adds, by name."""
    register: Callable[[typer.Typer], None] = importlib.import_module(module_name).register
    staging = typer.Typer()
    register(staging)
    return get_group(staging).commands


app = typer.Typer(
    name="pimesh", cls=LazyCommands, no_args_is_help=True, pretty_exceptions_enable=False
)


@app.callback()
def pimesh() -> None:
    """Run a fleet of Raspberry Pis inside an Istio ambient service mesh."""
    # A callback makes `app` a group even before any command is registered (typer
    # turns an app of one command into that command); it has nothing to do itself.


def version() -> None:
    """Print pimesh's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("pimesh"))


def register(app: typer.Typer) -> None:
    """Add `version` to the `pimesh` app."""
    app.command()(version)


def main() -> None:
    """Console-script entry point."""
    app()
