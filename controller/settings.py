"""The controller's configuration: the `pimesh controller run` flags of the operator contract.

Field names are the flag names (`token_ttl` is `--token-ttl` and `PIMESH_TOKEN_TTL`), so
an error can always name the flag to fix; units are in the descriptions.
"""

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.settings import dns_label, split_commas

MIN_TOKEN_TTL_S = 600  # the TokenRequest API refuses shorter tokens


class ControllerSettings(BaseSettings):
    """What `pimesh controller run` needs beyond the broker connection."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    namespace: str = Field(default="pi-fleet", description="Namespace of the fleet's objects.")
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file; default in-cluster, else $KUBECONFIG, else ~/.kube/config.",
    )
    auto_approve: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Device-id globs admitted without an operator."
    )
    token_ttl: int = Field(default=3600, description="Token lifetime in seconds (>= 600).")
    rotate_every: int | None = Field(
        default=None, description="Seconds between fleet-wide rotations (default ttl / 3)."
    )
    rotate_cron: str | None = Field(default=None, description="Cron expression for rotations.")
    istio_revision: str | None = Field(default=None, description="Istio revision, if any.")
    istiod_address: str = Field(
        default="istiod.istio-system.svc:15012", description="HOST:PORT of istiod for devices."
    )
    istiod_ip: str | None = Field(
        default=None, description="East-west gateway IP for the hosts entry (default: discovered)."
    )
    cluster_id: str = Field(default="Kubernetes", description="Istio cluster id.")
    policy_file: Path | None = Field(default=None, description="AuthorizationPolicy file.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables.")
    workers: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Reconcile worker threads (they mostly wait on the API server).",
    )
    rotation_rate: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        description="TokenRequests per second for renewals (first tokens are not paced).",
    )
    ack_timeout: int = Field(
        default=60,
        ge=1,
        description="Seconds an online device may leave a bundle unacked before a new one.",
    )
    rotation_concurrency: int = Field(
        default=4, ge=1, le=256, description="Renewal TokenRequests in flight, at most."
    )

    _split_auto_approve = field_validator("auto_approve", mode="before")(split_commas)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, value: str) -> str:
        return dns_label(value, what="namespace name")

    @field_validator("token_ttl")
    @classmethod
    def _ttl_is_long_enough(cls, value: int) -> int:
        if value < MIN_TOKEN_TTL_S:
            msg = f"{value} s is shorter than the {MIN_TOKEN_TTL_S} s the TokenRequest API allows"
            raise ValueError(msg)
        return value

    @field_validator("istiod_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            msg = f"{value!r} is not HOST:PORT"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _renews_before_half_life(self) -> "ControllerSettings":
        if self.rotate_every is not None and self.rotate_cron is not None:
            msg = "give --rotate-every or --rotate-cron, not both"
            raise ValueError(msg)
        # Imported here: the schedule is built from these settings (no import cycle).
        from controller.rotation import build_schedule

        build_schedule(self)
        return self

    @property
    def istiod_host(self) -> str:
        """The host part of `istiod_address` (what the hosts entry maps)."""
        return self.istiod_address.rpartition(":")[0]
