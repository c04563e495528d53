"""How every component reaches the broker: the shared MQTT flags of the operator contract.

`--broker`, `--username`, `--password`, `--ca-file`, `--cert-file`, `--key-file`,
`--mqtt-version` and `--topic-prefix` mean the same to the controller, the agent, `pimesh
led` and the sandbox, so they are defined once. Each field is also read from
`PIMESH_<FLAG>` (pydantic-settings); the CLI passes flags given on the command line as
init values, which take precedence over the environment.
"""

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import DEFAULT_TOPIC_PREFIX

MqttVersion = Literal["5", "3.1.1"]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def split_commas(value: object) -> object:
    """Repeatable flags take comma-separated lists in their environment variables."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def dns_label(value: str, *, what: str = "name") -> str:
    """`value` if it is a DNS-1123 label (namespaces, apps); else a ValueError saying so."""
    if not _DNS1123_LABEL.match(value):
        msg = f"{value!r} is not a valid {what} (DNS-1123 label)"
        raise ValueError(msg)
    return value


def existing_file(value: Path | None) -> Path | None:
    """`value` if it names a readable file (or is None); else a ValueError saying so."""
    if value is not None and not value.is_file():
        msg = f"{value} is not a readable file"
        raise ValueError(msg)
    return value


class BrokerAddress:
    """A parsed `mqtt://host:port` or `mqtts://host:port` URL."""

    __slots__ = ("host", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts"}:
            msg = f"{url!r} is not an mqtt:// or mqtts:// URL"
            raise ValueError(msg)
        if not parts.hostname:
            msg = f"{url!r} names no host"
            raise ValueError(msg)
        if parts.path not in {"", "/"} or parts.query or parts.username:
            msg = f"{url!r}: give only scheme, host and port (credentials have their own flags)"
            raise ValueError(msg)
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError as exc:
            msg = f"{url!r} has an invalid port"
            raise ValueError(msg) from exc
        self.port = port if port is not None else (8883 if self.tls else 1883)


class MqttSettings(BaseSettings):
    """Connection to the broker, shared by every component."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt://host:port or mqtts://host:port (TLS).",
    )
    username: str | None = Field(default=None, description="MQTT username.")
    password: SecretStr | None = Field(default=None, description="MQTT password.")
    ca_file: Path | None = Field(default=None, description="CA bundle that signs the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    key_file: Path | None = Field(default=None, description="Client key (mTLS).")
    mqtt_version: MqttVersion = Field(default="5", description="MQTT protocol: 5 or 3.1.1.")
    topic_prefix: str = Field(
        default=DEFAULT_TOPIC_PREFIX, description="Prefix P of every pimesh topic."
    )

    @field_validator("broker")
    @classmethod
    def _broker_is_a_url(cls, value: str) -> str:
        BrokerAddress(value)
        return value

    _files_exist = field_validator("ca_file", "cert_file", "key_file")(existing_file)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_plain(cls, value: str) -> str:
        levels = value.split("/")
        if not value or any(not level or set(level) & set("+#$\0") for level in levels):
            msg = f"{value!r} must be non-empty topic levels without wildcards, '$' or '//'"
            raise ValueError(msg)
        return value

    @property
    def address(self) -> BrokerAddress:
        """The parsed broker URL."""
        return BrokerAddress(self.broker)
