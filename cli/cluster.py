"""How the operator commands reach the cluster: `--namespace`, `--kubeconfig`, a connection.

The flags mean what they mean to `pimesh controller run` (PROTOCOL.md, Operator
contract), and like every flag they are also read from `PIMESH_NAMESPACE` and
`PIMESH_KUBECONFIG`. The typer parameter types are defined once here for every command
that talks to the API.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.errors import CliError
from cli.fleet import Fleet
from cli.options import describe
from controller.errors import ApiUnavailable
from controller.kube import Kube, load_api_client
from shared.settings import dns_label, existing_file

CLUSTER_PANEL = "Cluster"


class ClusterAccess(BaseSettings):
    """Where the fleet's EdgeDevices live: `--namespace` and `--kubeconfig`, as the controller."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    namespace: str = Field(default="pi-fleet", description="Namespace of the fleet's objects.")
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file; default in-cluster, else $KUBECONFIG, else ~/.kube/config.",
    )
    request_timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds to wait for each API answer."
    )

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, value: str) -> str:
        return dns_label(value, what="namespace name")

    _kubeconfig_exists = field_validator("kubeconfig")(existing_file)


def _cluster_option(field: str, *names: str) -> object:
    return typer.Option(
        *names,
        help=describe(ClusterAccess, field),
        show_default=False,
        rich_help_panel=CLUSTER_PANEL,
    )


Namespace = Annotated[str | None, _cluster_option("namespace", "--namespace", "-n")]
Kubeconfig = Annotated[Path | None, _cluster_option("kubeconfig", "--kubeconfig")]
RequestTimeout = Annotated[float | None, _cluster_option("request_timeout", "--request-timeout")]


@contextmanager
def connect(access: ClusterAccess) -> Iterator[Fleet]:
    """A `Fleet` for `access`, its connection pool closed afterwards.

    Raises:
        CliError: no usable Kubernetes configuration.
    """
    try:
        api = load_api_client(access.kubeconfig)
    except ApiUnavailable as exc:
        raise CliError(exc.reason) from exc
    kube = Kube(api, timeout_s=access.request_timeout)
    try:
        yield Fleet(kube, namespace=access.namespace, server=str(api.configuration.host))
    finally:
        kube.close()
