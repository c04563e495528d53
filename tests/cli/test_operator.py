"""approve, revoke, rekey and rotate against the API emulator over HTTP; their failures."""

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.device import REKEY_ANNOTATION, ROTATE_ANNOTATION
from controller.kube import Kube
from shared.timestamps import now_utc, parse_ts
from tests.cli.conftest import Pimesh, get_device, make_device

pytestmark = pytest.mark.timeout(30)

STATUS = {"phase": "Pending", "online": True, "addresses": ["192.168.1.178"]}


def content(obj: dict[str, Any]) -> dict[str, Any]:
    """What a command may change: spec, status, labels and annotations."""
    meta = obj["metadata"]
    return {
        "spec": obj.get("spec", {}),
        "status": obj.get("status", {}),
        "labels": meta.get("labels", {}),
        "annotations": meta.get("annotations", {}),
    }


@pytest.fixture
def cluster(kube_namespace: str, kubeconfig: Path) -> list[str]:
    return ["--namespace", kube_namespace, "--kubeconfig", str(kubeconfig)]


def test_approve_sets_only_spec_approved(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    before = make_device(
        kube,
        kube_namespace,
        "pi-kitchen",
        spec={"app": "led-pi", "groups": ["kitchen"]},
        status=STATUS,
        annotations={"note": "keep"},
    )

    result = pimesh("approve", "pi-kitchen", *cluster)

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"approved pi-kitchen in namespace {kube_namespace} "
        "(was Pending; the controller enrolls it now)\n"
    )
    expected = content(before)
    expected["spec"] = {**expected["spec"], "approved": True}
    assert content(get_device(kube, kube_namespace, "pi-kitchen")) == expected


def test_approve_leaves_revoked_alone_and_says_so(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    make_device(kube, kube_namespace, "pi-old", spec={"revoked": True})

    result = pimesh("approve", "pi-old", *cluster)

    assert result.exit_code == 0, result.output
    assert "it stays Revoked" in result.stdout
    assert get_device(kube, kube_namespace, "pi-old")["spec"] == {
        "approved": True,
        "revoked": True,
    }


def test_revoke_sets_only_spec_revoked(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    before = make_device(
        kube, kube_namespace, "pi-kitchen", spec={"approved": True, "app": "led-pi"}, status=STATUS
    )

    result = pimesh("revoke", "pi-kitchen", *cluster)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"revoked pi-kitchen in namespace {kube_namespace} ")
    expected = content(before)
    expected["spec"] = {"approved": True, "app": "led-pi", "revoked": True}
    assert content(get_device(kube, kube_namespace, "pi-kitchen")) == expected


@pytest.mark.parametrize(
    ("command", "annotation", "other"),
    [
        ("rekey", REKEY_ANNOTATION, ROTATE_ANNOTATION),
        ("rotate", ROTATE_ANNOTATION, REKEY_ANNOTATION),
    ],
)
def test_request_annotation_is_now(
    pimesh: Pimesh,
    kube: Kube,
    kube_namespace: str,
    cluster: list[str],
    command: str,
    annotation: str,
    other: str,
) -> None:
    before = make_device(
        kube,
        kube_namespace,
        "pi-kitchen",
        spec={"approved": True},
        status={**STATUS, "phase": "Enrolled"},
        annotations={"note": "keep"},
    )
    start = now_utc()

    result = pimesh(command, "pi-kitchen", *cluster)

    assert result.exit_code == 0, result.output
    after = content(get_device(kube, kube_namespace, "pi-kitchen"))
    value = after["annotations"][annotation]
    assert start <= parse_ts(value) <= now_utc()
    assert value in result.stdout
    assert other not in after["annotations"]
    expected = content(before)
    expected["annotations"] = {"note": "keep", annotation: value}
    assert after == expected


def test_two_rotations_in_one_second_differ(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    make_device(kube, kube_namespace, "pi-kitchen", spec={"approved": True})

    values = []
    for _ in range(2):
        assert pimesh("rotate", "pi-kitchen", *cluster).exit_code == 0
        values.append(get_device(kube, kube_namespace, "pi-kitchen")["metadata"]["annotations"])

    assert values[0][ROTATE_ANNOTATION] != values[1][ROTATE_ANNOTATION]


def test_rotate_warns_when_the_device_cannot_rotate_yet(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    make_device(kube, kube_namespace, "pi-new")

    result = pimesh("rotate", "pi-new", *cluster)

    assert result.exit_code == 0, result.output
    assert "(it is not approved: nothing is issued until it is enrolled)" in result.stdout


def test_rotate_all_touches_every_eligible_device(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    eligible = ["pi-a", "pi-b", "pi-c"]
    for name in eligible:
        make_device(kube, kube_namespace, name, spec={"approved": True})
    make_device(kube, kube_namespace, "pi-pending", spec={"approved": False})
    make_device(kube, kube_namespace, "pi-revoked", spec={"approved": True, "revoked": True})
    start = now_utc()

    result = pimesh("rotate", "--all", *cluster)

    assert result.exit_code == 0, result.output
    assert f"requested a token rotation for 3 of 3 devices in namespace {kube_namespace}" in (
        result.stdout
    )
    values = {
        get_device(kube, kube_namespace, name)["metadata"]["annotations"][ROTATE_ANNOTATION]
        for name in eligible
    }
    assert len(values) == 1
    assert start <= parse_ts(values.pop()) <= now_utc() + timedelta(seconds=1)
    for name in ("pi-pending", "pi-revoked"):
        annotations = get_device(kube, kube_namespace, name)["metadata"].get("annotations", {})
        assert ROTATE_ANNOTATION not in annotations
    assert "3/3" in result.stderr  # the progress bar


def test_rotate_all_with_nothing_eligible(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, cluster: list[str]
) -> None:
    make_device(kube, kube_namespace, "pi-pending")

    result = pimesh("rotate", "--all", *cluster)

    assert result.exit_code == 0, result.output
    assert "nothing to rotate" in result.stdout


@pytest.mark.parametrize("args", [(), ("pi-a", "--all")])
def test_rotate_wants_an_id_or_all(pimesh: Pimesh, cluster: list[str], args: tuple[str]) -> None:
    result = pimesh("rotate", *args, *cluster)

    assert result.exit_code == 2
    assert result.stderr.startswith("pimesh: give ")


@pytest.mark.parametrize("command", ["approve", "revoke", "rekey", "rotate"])
def test_unknown_device(
    pimesh: Pimesh, kube_namespace: str, cluster: list[str], command: str
) -> None:
    result = pimesh(command, "pi-x", *cluster)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"pimesh: no device pi-x in namespace {kube_namespace}\n"


def test_invalid_device_id_is_a_usage_error(pimesh: Pimesh, cluster: list[str]) -> None:
    result = pimesh("approve", "Pi_Kitchen", *cluster)

    assert result.exit_code == 2
    assert result.stderr.startswith("pimesh: ID 'Pi_Kitchen' is not a device id")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.fixture
def dead_kubeconfig(tmp_path: Path) -> tuple[Path, str]:
    server = f"http://127.0.0.1:{closed_port()}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dead", "cluster": {"server": server}}],
        "users": [{"name": "dead", "user": {}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}],
        "current-context": "dead",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, server


@pytest.mark.parametrize(
    "args", [("devices",), ("approve", "pi-a"), ("rotate", "pi-a"), ("rotate", "--all")]
)
def test_api_unreachable_is_one_line(
    pimesh: Pimesh, dead_kubeconfig: tuple[Path, str], args: tuple[str, ...]
) -> None:
    path, server = dead_kubeconfig

    result = pimesh(*args, "--kubeconfig", str(path), "--namespace", "pi-fleet")

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr == (
        f"pimesh: cannot reach the Kubernetes API at {server}: Connection refused\n"
    )
    assert "Traceback" not in result.output


def test_missing_kubeconfig_file_names_the_flag(pimesh: Pimesh, tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    result = pimesh("devices", "--kubeconfig", str(missing))

    assert result.exit_code == 2
    assert result.stderr == f"pimesh: --kubeconfig: {missing} is not a readable file\n"


def test_bad_namespace_from_environment_names_flag_and_variable(
    pimesh: Pimesh, kubeconfig: Path
) -> None:
    result = pimesh(
        "approve", "pi-a", "--kubeconfig", str(kubeconfig), env={"PIMESH_NAMESPACE": "Not_Valid"}
    )

    assert result.exit_code == 2
    assert result.stderr == (
        "pimesh: --namespace (from PIMESH_NAMESPACE): "
        "'Not_Valid' is not a valid namespace name (DNS-1123 label)\n"
    )
