"""The agent's configuration: the `pimesh agent run` flags of the operator contract.

Field names are the flag names (`announce_every` is `--announce-every` and
`PIMESH_ANNOUNCE_EVERY`); repeatable flags (`--group`, `--label`, `--address`,
`--port`) take comma-separated lists in their environment variables. Everything is
checked here, at start, so a bad value is refused with a message naming the flag.
"""

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.fields import is_device_id
from shared.settings import dns_label, split_commas

LedBackend = Literal["ws281x", "simulated"]


def default_device_id() -> str:
    """The hostname's first label, lower-cased (PROTOCOL.md)."""
    return socket.gethostname().split(".")[0].lower()


class AgentSettings(BaseSettings):
    """What `pimesh agent run` needs beyond the broker connection."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    device_id: str = Field(default_factory=default_device_id, description="Device id (DNS-1123).")
    app: str = Field(default="led-pi", description="The app (Service) this device serves.")
    group: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Groups.")
    label: Annotated[list[str], NoDecode] = Field(default_factory=list, description="K=V labels.")
    address: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="IP addresses to announce (default: detected)."
    )
    root: Path = Field(default=Path("/"), description="Where bundle files and hosts live.")
    state_dir: Path = Field(default=Path("/var/lib/pimesh"), description="Keys and state.")
    join_token: SecretStr | None = Field(default=None, description="One-time join token.")
    controller_key: str | None = Field(
        default=None, description="Pin this controller Ed25519 key (base64) instead of TOFU."
    )
    announce_every: int = Field(default=300, ge=5, description="Heartbeat announce, seconds.")
    ztunnel_cmd: str = Field(default="ztunnel", description="ztunnel command; `none` disables.")
    led_backend: LedBackend | None = Field(
        default=None, description="ws281x on a Raspberry Pi, simulated elsewhere."
    )
    led_count: int = Field(default=100, ge=1, le=4096, description="Pixels on the strip.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="LED web page; 0 disables.")
    keepalive: int = Field(
        default=30, ge=2, le=3600, description="MQTT keepalive, seconds (offline detection)."
    )
    port: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="NAME=N ports to announce (default http-pi=HTTP port)."
    )

    _split = field_validator("group", "label", "address", "port", mode="before")(split_commas)

    @field_validator("device_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not is_device_id(value):
            msg = (
                f"{value!r} is not a valid device id (a DNS-1123 label of 1 to 40 characters); "
                "pass --device-id"
            )
            raise ValueError(msg)
        return value

    @field_validator("app")
    @classmethod
    def _valid_app(cls, value: str) -> str:
        return dns_label(value, what="app name")

    @field_validator("address")
    @classmethod
    def _ips(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_address(value)
        return values

    @field_validator("label")
    @classmethod
    def _key_values(cls, values: list[str]) -> list[str]:
        for value in values:
            if "=" not in value:
                msg = f"{value!r} is not K=V"
                raise ValueError(msg)
        return values

    @field_validator("port")
    @classmethod
    def _name_numbers(cls, values: list[str]) -> list[str]:
        for value in values:
            name, _, number = value.partition("=")
            if not name or not number.isdigit():
                msg = f"{value!r} is not NAME=N"
                raise ValueError(msg)
        return values

    @property
    def labels(self) -> dict[str, str]:
        """`--label` as a mapping."""
        return dict(item.split("=", 1) for item in self.label)

    @property
    def ports(self) -> list[tuple[str, int]]:
        """`--port` as (name, number), defaulting to http-pi on the HTTP port."""
        if self.port:
            return [(n, int(p)) for n, _, p in (item.partition("=") for item in self.port)]
        return [("http-pi", self.http_port)] if self.http_port else []
