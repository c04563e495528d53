"""The operator commands of PROTOCOL.md's Operator contract, as typer sub-commands.

    pimesh devices [-o table|json]     the fleet's EdgeDevices
    pimesh approve ID                  spec.approved = true
    pimesh revoke ID                   spec.revoked = true
    pimesh rekey ID                    re-pin the device's keys at its next announce
    pimesh rotate ID | --all           a new token and bundle now
    pimesh led TARGET EFFECT           one LED command to ID, group:NAME or all

`register(app)` adds them to the `pimesh` app. Every flag is also read from
`PIMESH_<FLAG>` (`--namespace` from `PIMESH_NAMESPACE`, `--duration-ms` from
`PIMESH_DURATION_MS`); `rotate --all` is the exception, so that a leftover variable can
never turn a one-device rotation into a fleet-wide one.

Exit codes:
    0  done;
    1  the operation failed: unknown device, API or broker unreachable or refusing,
       some of the `rotate --all` requests failed;
    2  usage: a flag, argument or environment value is refused (the message names it).

Failures are one line on stderr starting with `pimesh:`, never a traceback.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from cli.cluster import ClusterAccess, Kubeconfig, Namespace, RequestTimeout, connect
from cli.devices import DevicesView, device_table
from cli.errors import CliError, UsageError
from cli.fleet import Fleet, check_device_id, request_time
from cli.led import LedOptions, build_command, parse_target, send
from cli.options import (
    Broker,
    CaFile,
    CertFile,
    KeyFile,
    MqttVersion,
    Password,
    TopicPrefix,
    Username,
    build_settings,
    describe,
    exits,
    mqtt_settings,
)
from controller.device import REKEY_ANNOTATION, ROTATE_ANNOTATION, EdgeDevice
from shared.fields import EFFECTS
from shared.timestamps import now_utc

DeviceId = Annotated[str, typer.Argument(metavar="ID", help="Device id (its EdgeDevice's name).")]


@contextmanager
def _fleet(
    namespace: str | None,
    kubeconfig: Path | None,
    request_timeout: float | None,
    *,
    device_id: str | None = None,
) -> Iterator[Fleet]:
    """Settings, then the device id (both exit 2), then the connection."""
    access = build_settings(
        ClusterAccess,
        namespace=namespace,
        kubeconfig=kubeconfig,
        request_timeout=request_timeout,
    )
    if device_id is not None:
        check_device_id(device_id)
    with connect(access) as fleet:
        yield fleet


def devices(
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    request_timeout: RequestTimeout = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help=describe(DevicesView, "output"), show_default=False),
    ] = None,
) -> None:
    """List the fleet's EdgeDevices: phase, online, address, generation, token expiry."""
    with exits():
        view = build_settings(
            DevicesView,
            namespace=namespace,
            kubeconfig=kubeconfig,
            request_timeout=request_timeout,
            output=output,
        )
        with connect(view) as fleet:
            objects = fleet.list()
    if view.output == "json":
        typer.echo(json.dumps(objects, indent=2))
    elif not objects:
        typer.echo(f"No EdgeDevices in namespace {view.namespace}.")
    else:
        Console().print(device_table(objects, now=now_utc(), namespace=view.namespace))


def approve(
    device_id: DeviceId,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    request_timeout: RequestTimeout = None,
) -> None:
    """Let a Pending device enroll (spec.approved = true)."""
    with exits(), _fleet(namespace, kubeconfig, request_timeout, device_id=device_id) as fleet:
        device = fleet.approve(device_id)
    if device.spec.revoked:
        note = "but it is revoked (spec.revoked), so it stays Revoked"
    else:
        note = f"was {device.status.phase or 'new'}; the controller enrolls it now"
    typer.echo(f"approved {device.name} in namespace {fleet.namespace} ({note})")


def revoke(
    device_id: DeviceId,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    request_timeout: RequestTimeout = None,
) -> None:
    """Decommission a device (spec.revoked = true): its mesh resources and bundle go."""
    with exits(), _fleet(namespace, kubeconfig, request_timeout, device_id=device_id) as fleet:
        device = fleet.revoke(device_id)
    typer.echo(
        f"revoked {device.name} in namespace {fleet.namespace} "
        "(the controller removes its mesh resources and bundle; it stays Revoked)"
    )


def rekey(
    device_id: DeviceId,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    request_timeout: RequestTimeout = None,
) -> None:
    """Accept the device's new keys at its next announce (after a reinstall)."""
    with exits(), _fleet(namespace, kubeconfig, request_timeout, device_id=device_id) as fleet:
        device = fleet.request(device_id, REKEY_ANNOTATION)
    at = device.annotations.get(REKEY_ANNOTATION, "")
    typer.echo(
        f"requested a re-key of {device.name} in namespace {fleet.namespace} at {at} "
        "(its keys are pinned again at its next announce)"
    )


def rotate(
    device_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Device id; or give --all.")
    ] = None,
    all_devices: Annotated[
        bool, typer.Option("--all", help="Every approved, not revoked device.")
    ] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    request_timeout: RequestTimeout = None,
) -> None:
    """Issue a new token and bundle now, for one device or (--all) the whole fleet."""
    with exits():
        if (device_id is None) != all_devices:
            msg = (
                "give a device ID or --all"
                if device_id is None
                else "give an ID or --all, not both"
            )
            raise UsageError(msg)
        with _fleet(namespace, kubeconfig, request_timeout, device_id=device_id) as fleet:
            if device_id is None:
                _rotate_all(fleet)
                return
            device = fleet.request(device_id, ROTATE_ANNOTATION)
    typer.echo(_rotated_line(device, namespace=fleet.namespace))


def _rotated_line(device: EdgeDevice, *, namespace: str) -> str:
    at = device.annotations.get(ROTATE_ANNOTATION, "")
    line = f"requested a token rotation for {device.name} in namespace {namespace} at {at}"
    if device.spec.revoked or not device.spec.approved:
        state = "revoked" if device.spec.revoked else "not approved"
        line += f" (it is {state}: nothing is issued until it is enrolled)"
    return line


def _eligible(obj: dict[str, Any]) -> bool:
    spec = obj.get("spec") or {}
    return spec.get("approved") is True and spec.get("revoked") is not True


def _rotate_all(fleet: Fleet) -> None:
    names = [str(obj["metadata"]["name"]) for obj in fleet.list() if _eligible(obj)]
    if not names:
        typer.echo(f"no approved devices in namespace {fleet.namespace}: nothing to rotate")
        return
    at, failures = request_time(), list[str]()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("requesting rotations", total=len(names))
        for name in names:
            progress.update(task, description=f"rotate {name}")
            try:
                fleet.request(name, ROTATE_ANNOTATION, at=at)
            except CliError as exc:
                failures.append(f"{name} ({exc.reason})")
            progress.advance(task)
        progress.update(task, description="requested rotations")
    done = len(names) - len(failures)
    typer.echo(
        f"requested a token rotation for {done} of {len(names)} devices "
        f"in namespace {fleet.namespace} at {at}"
    )
    if failures:
        raise CliError(f"{len(failures)} rotation requests failed: {'; '.join(failures)}")


def led(
    target: Annotated[
        str, typer.Argument(help="A device ID, group:NAME, or all (device:ID for a device 'all').")
    ],
    effect: Annotated[str, typer.Argument(help=f"One of {', '.join(EFFECTS)}.")],
    color: Annotated[
        str | None, typer.Option(help=describe(LedOptions, "color"), show_default=False)
    ] = None,
    brightness: Annotated[
        int | None, typer.Option(help=describe(LedOptions, "brightness"), show_default=False)
    ] = None,
    duration_ms: Annotated[
        int | None, typer.Option(help=describe(LedOptions, "duration_ms"), show_default=False)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help=describe(LedOptions, "timeout"), show_default=False)
    ] = None,
    broker: Broker = None,
    username: Username = None,
    password: Password = None,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    mqtt_version: MqttVersion = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Publish one LED command and print its id (devices report it as command_id)."""
    with exits():
        aim = parse_target(target)
        options = build_settings(
            LedOptions, color=color, brightness=brightness, duration_ms=duration_ms, timeout=timeout
        )
        settings = mqtt_settings(
            broker=broker,
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            mqtt_version=mqtt_version,
            topic_prefix=topic_prefix,
        )
        command = build_command(effect, options)
        topic = send(command, aim, settings=settings, timeout_s=options.timeout)
    typer.echo(f"sent {command.effect} to {aim} on {topic}", err=True)
    typer.echo(command.id)


def register(app: typer.Typer) -> None:
    """Add the operator commands to the `pimesh` app."""
    app.command()(devices)
    app.command()(approve)
    app.command()(revoke)
    app.command()(rekey)
    app.command()(rotate)
    app.command()(led)
