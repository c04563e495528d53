"""The `pimesh` command line: one typer app that grows a sub-command per component.

This module only wires sub-commands together; each component parses its own settings
so the same names work as flags and as `PIMESH_*` environment variables.
"""

import typer

from cli.components import agent_app, controller_app
from cli.operator import register

app = typer.Typer(
    name="pimesh",
    help="Run a fleet of Raspberry Pis inside an Istio ambient service mesh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(controller_app, name="controller")
app.add_typer(agent_app, name="agent")
register(app)


@app.command()
def version() -> None:
    """Print pimesh's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("pimesh"))


@app.command()
def sandbox() -> None:
    """Run the whole system on this machine (not available yet in this build)."""
    typer.echo(
        "pimesh sandbox is not built yet: the controller and the Pi agent land first. "
        "Run the test suite to see what works today.",
        err=True,
    )
    raise typer.Exit(code=2)


def main() -> None:
    """Console-script entry point."""
    app()
