"""What `pimesh controller run` and `pimesh agent run` share: flags, logs and the run loop.

Each component builds its settings from the flags given (the environment fills the rest,
see `cli.options`), configures structured logs, starts and waits for SIGTERM or SIGINT,
then stops cleanly: the controller's retained status goes `offline`, the agent publishes
its own `offline` status before disconnecting. The components themselves live in
`cli.controller` and `cli.agent`, one module each, so that running one never imports the
other (an agent on a Pi has no use for the Kubernetes client).
"""

import signal
import threading
from typing import Annotated, Protocol

import typer
from pydantic_settings import BaseSettings

from cli.options import describe, flag_of
from shared.logs import LogFormat

LogFormatOption = Annotated[str, typer.Option("--log-format", help="json or text.")]


def setting_option(model: type[BaseSettings], field: str) -> object:
    """A flag for a settings field: `--field-name`, its help from the field (`describe`)."""
    return typer.Option(flag_of(field), help=describe(model, field), show_default=False)


def as_log_format(value: str) -> LogFormat:
    """The `--log-format` flag's value as a format: `text`, anything else is `json`."""
    return "text" if value == "text" else "json"


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


class Component(Protocol):
    """Something that runs in the background between `start()` and `stop()`."""

    def start(self) -> None:
        """Start it."""

    def stop(self) -> None:
        """Stop it cleanly."""


def serve(component: Component) -> None:
    """Start `component`, run until SIGTERM or SIGINT, then stop it cleanly."""
    component.start()
    try:
        wait_for_signal()
    finally:
        component.stop()
