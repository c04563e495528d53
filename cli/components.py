"""`pimesh controller run` and `pimesh agent run`: the long-running components.

Each builds its settings from the flags given (the environment fills the rest, see
`cli.options`), configures structured logs, starts the component and waits for SIGTERM
or SIGINT, then stops it cleanly: the controller's retained status goes `offline`, the
agent publishes its own `offline` status before disconnecting.
"""

import signal
import threading
from pathlib import Path
from typing import Annotated, Protocol

import typer

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
from controller.run import Controller
from controller.settings import ControllerSettings
from device.compose import build_agent
from device.settings import AgentSettings
from shared.logs import LogFormat, configure

controller_app = typer.Typer(help="The in-cluster controller.", no_args_is_help=True)
agent_app = typer.Typer(help="The agent on each Pi.", no_args_is_help=True)

LogFormatOption = Annotated[str, typer.Option("--log-format", help="json or text.")]


def _opt(model: type[ControllerSettings] | type[AgentSettings], field: str) -> object:
    return typer.Option(
        "--" + field.replace("_", "-"), help=describe(model, field), show_default=False
    )


def _c(field: str) -> object:
    return _opt(ControllerSettings, field)


def _a(field: str) -> object:
    return _opt(AgentSettings, field)


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


def _log_format(value: str) -> LogFormat:
    return "text" if value == "text" else "json"


@controller_app.command("run")
def controller_run(
    namespace: Annotated[str | None, _c("namespace")] = None,
    kubeconfig: Annotated[Path | None, _c("kubeconfig")] = None,
    auto_approve: Annotated[list[str] | None, _c("auto_approve")] = None,
    token_ttl: Annotated[int | None, _c("token_ttl")] = None,
    rotate_every: Annotated[int | None, _c("rotate_every")] = None,
    rotate_cron: Annotated[str | None, _c("rotate_cron")] = None,
    istio_revision: Annotated[str | None, _c("istio_revision")] = None,
    istiod_address: Annotated[str | None, _c("istiod_address")] = None,
    istiod_ip: Annotated[str | None, _c("istiod_ip")] = None,
    cluster_id: Annotated[str | None, _c("cluster_id")] = None,
    policy_file: Annotated[Path | None, _c("policy_file")] = None,
    metrics_port: Annotated[int | None, _c("metrics_port")] = None,
    workers: Annotated[int | None, _c("workers")] = None,
    rotation_rate: Annotated[float | None, _c("rotation_rate")] = None,
    rotation_concurrency: Annotated[int | None, _c("rotation_concurrency")] = None,
    ack_timeout: Annotated[int | None, _c("ack_timeout")] = None,
    broker: Broker = None,
    username: Username = None,
    password: Password = None,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    mqtt_version: MqttVersion = None,
    topic_prefix: TopicPrefix = None,
    log_format: LogFormatOption = "json",
) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    with exits():
        settings = build_settings(
            ControllerSettings,
            namespace=namespace,
            kubeconfig=kubeconfig,
            auto_approve=auto_approve or None,
            token_ttl=token_ttl,
            rotate_every=rotate_every,
            rotate_cron=rotate_cron,
            istio_revision=istio_revision,
            istiod_address=istiod_address,
            istiod_ip=istiod_ip,
            cluster_id=cluster_id,
            policy_file=policy_file,
            metrics_port=metrics_port,
            workers=workers,
            rotation_rate=rotation_rate,
            rotation_concurrency=rotation_concurrency,
            ack_timeout=ack_timeout,
        )
        mqtt = mqtt_settings(
            broker=broker,
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            mqtt_version=mqtt_version,
            topic_prefix=topic_prefix,
        )
        configure(fmt=_log_format(log_format))
        serve(Controller(settings, mqtt))


@agent_app.command("run")
def agent_run(
    device_id: Annotated[str | None, _a("device_id")] = None,
    app: Annotated[str | None, _a("app")] = None,
    group: Annotated[list[str] | None, _a("group")] = None,
    label: Annotated[list[str] | None, _a("label")] = None,
    address: Annotated[list[str] | None, _a("address")] = None,
    root: Annotated[Path | None, _a("root")] = None,
    state_dir: Annotated[Path | None, _a("state_dir")] = None,
    join_token: Annotated[str | None, _a("join_token")] = None,
    controller_key: Annotated[str | None, _a("controller_key")] = None,
    announce_every: Annotated[int | None, _a("announce_every")] = None,
    ztunnel_cmd: Annotated[str | None, _a("ztunnel_cmd")] = None,
    led_backend: Annotated[str | None, _a("led_backend")] = None,
    led_count: Annotated[int | None, _a("led_count")] = None,
    http_port: Annotated[int | None, _a("http_port")] = None,
    port: Annotated[list[str] | None, _a("port")] = None,
    keepalive: Annotated[int | None, _a("keepalive")] = None,
    broker: Broker = None,
    username: Username = None,
    password: Password = None,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    mqtt_version: MqttVersion = None,
    topic_prefix: TopicPrefix = None,
    log_format: LogFormatOption = "json",
) -> None:
    """Run the Pi agent until SIGTERM or SIGINT."""
    with exits():
        settings = build_settings(
            AgentSettings,
            device_id=device_id,
            app=app,
            group=group or None,
            label=label or None,
            address=address or None,
            root=root,
            state_dir=state_dir,
            join_token=join_token,
            controller_key=controller_key,
            announce_every=announce_every,
            ztunnel_cmd=ztunnel_cmd,
            led_backend=led_backend,
            led_count=led_count,
            http_port=http_port,
            port=port or None,
            keepalive=keepalive,
        )
        mqtt = mqtt_settings(
            broker=broker,
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            mqtt_version=mqtt_version,
            topic_prefix=topic_prefix,
        )
        configure(fmt=_log_format(log_format))
        serve(build_agent(settings, mqtt))
