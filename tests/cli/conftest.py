"""Fixtures of the operator-command tests: a local `pimesh` app and the API facade."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from cli.operator import register
from controller.kube import EDGE_DEVICES, Kube, load_api_client

WIDE = {"COLUMNS": "200"}  # rich wraps tables at the terminal width; 80 would fold cells


class Pimesh:
    """Runs the operator commands in-process, as `pimesh ...` would."""

    def __init__(self) -> None:
        self.app = typer.Typer(pretty_exceptions_enable=False)
        register(self.app)
        self.runner = CliRunner()

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return self.runner.invoke(self.app, list(args), env={**WIDE, **(env or {})})


@pytest.fixture
def pimesh() -> Pimesh:
    return Pimesh()


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[Kube]:
    facade = Kube(load_api_client(kubeconfig))
    yield facade
    facade.close()


def make_device(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create an EdgeDevice (and its status, through the subresource) as the controller would."""
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    obj = {
        "apiVersion": "pimesh.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": metadata,
        "spec": spec or {},
    }
    created = kube.create(EDGE_DEVICES, obj, namespace=namespace)
    if status is None:
        return created
    return kube.merge_patch(
        EDGE_DEVICES, name, {"status": status}, namespace=namespace, subresource="status"
    )


def get_device(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get(EDGE_DEVICES, name, namespace=namespace)
