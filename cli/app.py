"""The `pimesh` command line: one typer app that grows a sub-command per component.

This module only wires sub-commands together; each component parses its own settings
so the same names work as flags and as `PIMESH_*` environment variables.
"""

import typer

from cli.components import agent_app, controller_app
from cli.operator import register
from cli.sandbox import register as register_sandbox

app = typer.Typer(
    name="pimesh",
    help="Run a fleet of Raspberry Pis inside an Istio ambient service mesh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(controller_app, name="controller")
app.add_typer(agent_app, name="agent")
register(app)
register_sandbox(app)


@app.command()
def version() -> None:
    """Print pimesh's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("pimesh"))


def main() -> None:
    """Console-script entry point."""
    app()
