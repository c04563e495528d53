"""`pimesh agent run`: the agent on each Pi, until SIGTERM or SIGINT.

`register(app)` adds the `agent` group to the `pimesh` app. `cli.app` imports this
module only when the command runs (or help is asked for), and this module imports only
what the agent needs: no Kubernetes client, no controller, no sandbox, so that an agent
on a Pi stays small (benchmarks/agent_footprint.py; tests/cli/test_app.py holds the line).
"""

from pathlib import Path
from typing import Annotated

import typer

from cli.components import LogFormatOption, as_log_format, serve, setting_option
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
    exits,
    mqtt_settings,
)
from device.compose import build_agent
from device.settings import AgentSettings
from shared.logs import configure

agent_app = typer.Typer(help="The agent on each Pi.", no_args_is_help=True)


def _a(field: str) -> object:
    return setting_option(AgentSettings, field)


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
        configure(fmt=as_log_format(log_format))
        serve(build_agent(settings, mqtt))


def register(app: typer.Typer) -> None:
    """Add `agent run` to the `pimesh` app."""
    app.add_typer(agent_app, name="agent")
