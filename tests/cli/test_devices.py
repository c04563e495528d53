"""`pimesh devices`: the table, relative times, `-o json`, environment variables."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.devices import relative, span, token_cell
from controller.kube import EDGE_DEVICES, Kube
from shared.timestamps import format_ts, now_utc
from tests.cli.conftest import Pimesh, make_device

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (34 * 60 + 59, "34m"),
        (3600, "1h"),
        (3600 + 5 * 60, "1h05m"),
        (86400, "1d"),
        (3 * 86400 + 4 * 3600 + 59, "3d4h"),
        (-190, "3m"),
    ],
)
def test_span_is_short_and_rounds_down(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_relative_says_which_way() -> None:
    assert relative(NOW + timedelta(minutes=34, seconds=10), now=NOW) == "in 34m"
    assert relative(NOW - timedelta(minutes=3, seconds=10), now=NOW) == "3m ago"
    assert relative(NOW + timedelta(milliseconds=300), now=NOW) == "now"


def test_token_cell_marks_expired_and_close_tokens() -> None:
    expired = token_cell(NOW - timedelta(minutes=3, seconds=5), now=NOW)
    assert expired.plain == "expired 3m ago"
    assert "red" in str(expired.style)
    close = token_cell(NOW + timedelta(minutes=5), now=NOW)
    assert close.plain == "in 5m"
    assert "yellow" in str(close.style)
    assert token_cell(NOW + timedelta(minutes=34, seconds=30), now=NOW).style == ""
    assert token_cell(None, now=NOW).plain == "-"


def seed_fleet(kube: Kube, namespace: str) -> None:
    now = now_utc()
    # Created out of order: the table must sort by id.
    make_device(
        kube,
        namespace,
        "pi-porch",
        spec={"approved": False, "app": "led-pi"},
        status={"phase": "Pending", "online": False, "addresses": ["192.168.1.20"]},
    )
    make_device(
        kube,
        namespace,
        "pi-kitchen",
        spec={"approved": True, "app": "led-pi", "groups": ["kitchen", "downstairs"]},
        status={
            "phase": "Enrolled",
            "online": True,
            "addresses": ["192.168.1.178", "fd00::1"],
            "generation": 3,
            "ackedGeneration": 2,
            "tokenExpiresAt": format_ts(
                (now + timedelta(minutes=34, seconds=40)).replace(microsecond=0)
            ),
            "lastSeen": format_ts((now - timedelta(minutes=12, seconds=20)).replace(microsecond=0)),
        },
    )
    make_device(
        kube,
        namespace,
        "pi-attic",
        spec={"approved": True, "app": "sensor"},
        status={
            "phase": "Enrolled",
            "online": False,
            "addresses": ["192.168.1.31"],
            "generation": 7,
            "ackedGeneration": 7,
            "tokenExpiresAt": format_ts(
                (now - timedelta(minutes=3, seconds=20)).replace(microsecond=0)
            ),
            "lastSeen": format_ts(
                (now - timedelta(hours=2, minutes=5, seconds=20)).replace(microsecond=0)
            ),
        },
    )


def rows(output: str) -> dict[str, str]:
    """Table lines by the device id they start with."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        cells = line.strip("│┃ ").split()
        if cells and cells[0].startswith("pi-"):
            found[cells[0].strip("│")] = line
    return found


def test_table_lists_devices_sorted_with_relative_times(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, kubeconfig: Path
) -> None:
    seed_fleet(kube, kube_namespace)

    result = pimesh("devices", "--namespace", kube_namespace, "--kubeconfig", str(kubeconfig))

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"EdgeDevices in {kube_namespace}" in out
    assert out.index("pi-attic") < out.index("pi-kitchen") < out.index("pi-porch")
    table = rows(out)
    kitchen = table["pi-kitchen"].split("│")
    cells = [cell.strip() for cell in kitchen]
    assert cells[1:10] == [
        "pi-kitchen",
        "Enrolled",
        "yes",
        "192.168.1.178",
        "led-pi",
        "kitchen,downstairs",
        "3/2",
        "in 34m",
        "12m ago",
    ]
    attic = [cell.strip() for cell in table["pi-attic"].split("│")]
    assert attic[7:10] == ["7/7", "expired 3m ago", "2h05m ago"]
    porch = [cell.strip() for cell in table["pi-porch"].split("│")]
    assert porch[1:10] == [
        "pi-porch",
        "Pending",
        "no",
        "192.168.1.20",
        "led-pi",
        "-",
        "-",
        "-",
        "-",
    ]


def test_empty_namespace_says_so(pimesh: Pimesh, kube_namespace: str, kubeconfig: Path) -> None:
    result = pimesh("devices", "-n", kube_namespace, "--kubeconfig", str(kubeconfig))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"No EdgeDevices in namespace {kube_namespace}.\n"


def test_json_output_is_the_api_objects(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, kubeconfig: Path
) -> None:
    seed_fleet(kube, kube_namespace)

    result = pimesh("devices", "-n", kube_namespace, "--kubeconfig", str(kubeconfig), "-o", "json")

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    items, _ = kube.list(EDGE_DEVICES, namespace=kube_namespace)
    assert printed == sorted(items, key=lambda obj: obj["metadata"]["name"])
    assert [obj["metadata"]["name"] for obj in printed] == ["pi-attic", "pi-kitchen", "pi-porch"]


def test_environment_variables_stand_for_flags(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, kubeconfig: Path
) -> None:
    make_device(kube, kube_namespace, "pi-env")

    result = pimesh(
        "devices",
        env={
            "PIMESH_NAMESPACE": kube_namespace,
            "PIMESH_KUBECONFIG": str(kubeconfig),
            "PIMESH_OUTPUT": "json",
        },
    )

    assert result.exit_code == 0, result.output
    assert [obj["metadata"]["name"] for obj in json.loads(result.stdout)] == ["pi-env"]


def test_flag_wins_over_environment(
    pimesh: Pimesh, kube: Kube, kube_namespace: str, kubeconfig: Path
) -> None:
    make_device(kube, kube_namespace, "pi-flag")

    result = pimesh(
        "devices",
        "-o",
        "json",
        "--namespace",
        kube_namespace,
        env={"PIMESH_NAMESPACE": "t-elsewhere", "PIMESH_KUBECONFIG": str(kubeconfig)},
    )

    assert result.exit_code == 0, result.output
    assert [obj["metadata"]["name"] for obj in json.loads(result.stdout)] == ["pi-flag"]


def test_bad_output_value_is_a_usage_error(pimesh: Pimesh, kubeconfig: Path) -> None:
    result = pimesh("devices", "--kubeconfig", str(kubeconfig), "-o", "yaml")

    assert result.exit_code == 2
    assert result.stderr == "pimesh: --output: Input should be 'table' or 'json'\n"
