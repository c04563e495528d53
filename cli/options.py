"""Flags become settings, and failures become one line and an exit code.

Every command follows the same pattern (PROTOCOL.md, Operator contract): its typer
options default to None, meaning "not given on the command line"; `build_settings` makes
the command's pydantic-settings model from the given ones, so `PIMESH_<FLAG>` variables
fill in the rest and the model's defaults the remainder. A value the model refuses is
reported as one line naming the flag (and the variable, when the value came from one),
with exit code 2, never as a traceback.

`exits()` is the command boundary: wrapped around a command's body it turns every
`PimeshError` into `pimesh: <reason>` on stderr and the error's exit code. The shared
MQTT flags are defined here once, as typer parameter types with their help taken from
`MqttSettings`, so that `controller run`, `agent run` and `led` spell them alike.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings, SettingsError

from cli.errors import EXIT_FAILED, CliError, UsageError
from shared.errors import PimeshError
from shared.settings import MqttSettings

S = TypeVar("S", bound=BaseSettings)

MQTT_PANEL = "MQTT connection"


def flag_of(field: str) -> str:
    """The command-line flag of a settings field: `token_ttl` is `--token-ttl`."""
    return "--" + field.replace("_", "-")


def env_of(model_cls: type[BaseSettings], field: str) -> str:
    """The environment variable of a settings field: `token_ttl` is `PIMESH_TOKEN_TTL`."""
    return f"{model_cls.model_config.get('env_prefix', '')}{field}".upper()


def build_settings(model_cls: type[S], **given: object) -> S:
    """Make `model_cls` from the flags that were given (not None); the environment fills the rest.

    Raises:
        UsageError: a value is refused; the reason names its flag, e.g.
            "--token-ttl: 60 s is shorter than the 600 s the TokenRequest API allows".
    """
    values: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    try:
        return model_cls(**values)
    except ValidationError as exc:
        raise UsageError(_explain(model_cls, exc.errors(include_url=False)[0], values)) from None
    except SettingsError as exc:
        # pydantic-settings could not even parse an environment variable (e.g. a list).
        raise UsageError(f"an environment variable is malformed: {exc}") from None


def _explain(model_cls: type[BaseSettings], error: ErrorDetails, given: dict[str, object]) -> str:
    """One line for pydantic's first complaint; later ones are usually echoes of it."""
    text = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return text  # a model validator: its message names the flags itself
    field = str(error["loc"][0])
    if field in given:
        return f"{flag_of(field)}: {text}"
    return f"{flag_of(field)} (from {env_of(model_cls, field)}): {text}"


def fail(reason: str, *, code: int = EXIT_FAILED) -> NoReturn:
    """Print `pimesh: reason` on stderr (one line) and end the command with `code`."""
    one_line = " ".join(reason.split())
    typer.echo(f"pimesh: {one_line}", err=True)
    raise typer.Exit(code)


@contextmanager
def exits() -> Iterator[None]:
    """The command boundary: any `PimeshError` inside ends the command with one line."""
    try:
        yield
    except CliError as exc:
        fail(exc.reason, code=exc.exit_code)
    except PimeshError as exc:
        fail(exc.reason)


def describe(model_cls: type[BaseSettings], field: str) -> str:
    """Help text for a flag: the field's description, its variable and its default."""
    info = model_cls.model_fields[field]
    unset = info.default is None or info.default is PydanticUndefined or info.default == []
    default = "" if unset else f", default {info.default}"
    # Parentheses, not brackets: typer renders help as rich markup, where [..] is a tag.
    return f"{info.description} (env {env_of(model_cls, field)}{default})"


def _mqtt_option(field: str) -> object:
    return typer.Option(
        flag_of(field),
        help=describe(MqttSettings, field),
        show_default=False,
        rich_help_panel=MQTT_PANEL,
    )


Broker = Annotated[str | None, _mqtt_option("broker")]
Username = Annotated[str | None, _mqtt_option("username")]
Password = Annotated[str | None, _mqtt_option("password")]
CaFile = Annotated[Path | None, _mqtt_option("ca_file")]
CertFile = Annotated[Path | None, _mqtt_option("cert_file")]
KeyFile = Annotated[Path | None, _mqtt_option("key_file")]
MqttVersion = Annotated[str | None, _mqtt_option("mqtt_version")]
TopicPrefix = Annotated[str | None, _mqtt_option("topic_prefix")]


def mqtt_settings(
    *,
    broker: str | None,
    username: str | None,
    password: str | None,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    mqtt_version: str | None,
    topic_prefix: str | None,
) -> MqttSettings:
    """`MqttSettings` from the shared MQTT flags (None = not given).

    Raises:
        UsageError: a value is refused; the reason names its flag.
    """
    return build_settings(
        MqttSettings,
        broker=broker,
        username=username,
        password=password,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        mqtt_version=mqtt_version,
        topic_prefix=topic_prefix,
    )
