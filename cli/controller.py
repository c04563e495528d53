"""`pimesh controller run`: the in-cluster controller, until SIGTERM or SIGINT.

`register(app)` adds the `controller` group to the `pimesh` app (`cli.app` does so only
when the command runs or help is asked for: this module imports the controller, and with
it the Kubernetes client).
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
from controller.run import Controller
from controller.settings import ControllerSettings
from shared.logs import configure

controller_app = typer.Typer(help="The in-cluster controller.", no_args_is_help=True)


def _c(field: str) -> object:
    return setting_option(ControllerSettings, field)


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
        configure(fmt=as_log_format(log_format))
        serve(Controller(settings, mqtt))


def register(app: typer.Typer) -> None:
    """Add `controller run` to the `pimesh` app."""
    app.add_typer(controller_app, name="controller")
