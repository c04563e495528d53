"""`pimesh sandbox`: the whole system on one machine, with no cluster, and nothing left behind.

`Sandbox` composes the real parts the tests use, and `start` brings them up in this
order (`stop` takes them down in the reverse one, also when a start fails half-way):

1. Mosquitto as a child process on free loopback ports (`sandbox.broker`), with the
   product ACL for the topic prefix and one broker user per simulated Pi, named after
   its id as the ACL wants (`sandbox.brokerconf`).
2. The Kubernetes API in process (`sandbox.kubeapi`) with the EdgeDevice CRD and what
   Istio would have put in a cluster (`sandbox.cluster`): ConfigMap `istio-ca-root-cert`
   in the fleet namespace holding a real self-signed CA (`sandbox.tlsgen`), and Service
   `istio-eastwestgateway` in `istio-system` whose load balancer address (203.0.113.10,
   an RFC 5737 documentation address) the controller discovers as it would in a
   cluster (PROTOCOL.md, "the hosts entry maps --istiod-ip, else ...").
3. The controller in process, auto-approving every id unless approval is manual.
4. The simulated Pis `pi-1` .. `pi-N` in process: the real agent with a simulated strip,
   the stand-in ztunnel (`sandbox.standin_ztunnel`) as its child, keys and bundle files
   under its own directory of the work directory, in group `g0` (even) or `g1` (odd).
   Pi i announces the loopback address 127.0.0.(100+i), which its LED page also answers
   on, and the port `http-pi=8080` a real Pi serves: its local web server listens on a
   free port instead, and announcing those would put every Pi but the first in a
   `PortConflict`.

Then it writes `env.sh` (the operator's broker and cluster settings as `PIMESH_*`
variables) so that every `pimesh` command works from a second terminal. The only
processes started are Mosquitto and one stand-in ztunnel per enrolled Pi, each in its
own session (a Ctrl-C meant for the sandbox reaches the sandbox, which then stops them
in order); `stop` terminates and reaps every one of them.
"""

import logging
import os
import shlex
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import SecretStr

from controller.kube import Kube, load_api_client
from controller.run import Controller
from controller.settings import ControllerSettings
from device.compose import build_agent
from device.errors import DeviceError
from device.leds import SimulatedStrip
from device.settings import AgentSettings
from sandbox.broker import Mosquitto
from sandbox.cluster import EDGE_DEVICE_CRD, seed_cluster
from sandbox.kubeapi import KubeApiServer
from sandbox.pis import PiSnapshot, SimulatedPi
from shared import DEFAULT_TOPIC_PREFIX
from shared.errors import PimeshError
from shared.settings import MqttSettings, MqttVersion

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "pi-fleet"
MAX_DEVICES = 100
LED_COUNT = 100
KEEPALIVE_S = 5
ANNOUNCED_PORT = "http-pi=8080"
CONTROLLER_CLIENT_ID = "pimesh-sandbox-controller"
_READY_TIMEOUT_S = 15.0
_STOP_WORKERS = 16


class SandboxError(PimeshError):
    """The sandbox could not start: a part is missing or would not come up."""


@dataclass(frozen=True)
class SandboxInfo:
    """Where everything runs and how an operator reaches it (no secrets: see `password_file`)."""

    workdir: Path
    broker_url: str
    api_url: str
    topic_prefix: str
    mqtt_version: MqttVersion
    namespace: str
    kubeconfig: Path
    env_file: Path
    password_file: Path
    operator_username: str
    metrics_port: int
    device_ids: tuple[str, ...]


def free_port(host: str = "0.0.0.0") -> int:  # noqa: S104 - the agents' web servers bind it
    """A TCP port nothing listens on right now (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Sandbox:
    """The broker, the API, the controller and N simulated Pis; a context manager.

    Args:
        workdir: an existing directory for the kubeconfig, `env.sh` and every Pi's
            files (the broker keeps its own, so that when run as root the broker's
            user can reach it).
        devices: how many Pis (`pi-1` .. `pi-N`).
        manual_approve: leave new devices Pending until an operator approves them.
        http_port_base: Pi i serves its LED page on this port + i; 0 picks free ports.
        topic_prefix: prefix of every topic.
        mqtt_version: the MQTT version every component speaks.
        namespace: the fleet's namespace.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        devices: int = 3,
        manual_approve: bool = False,
        http_port_base: int = 0,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        mqtt_version: MqttVersion = "5",
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        if not 1 <= devices <= MAX_DEVICES:
            raise SandboxError(f"--devices: {devices} is not between 1 and {MAX_DEVICES}")
        self._workdir = workdir
        self._devices = devices
        self._manual_approve = manual_approve
        self._http_port_base = http_port_base
        self._prefix = topic_prefix
        self._mqtt_version: MqttVersion = mqtt_version
        self._namespace = namespace
        self._stack = ExitStack()
        self._broker: Mosquitto | None = None
        self._api: KubeApiServer | None = None
        self._info: SandboxInfo | None = None
        self.pis: list[SimulatedPi] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def info(self) -> SandboxInfo:
        """Addresses and files of the running sandbox."""
        if self._info is None:
            raise SandboxError("the sandbox has not been started")
        return self._info

    def start(self) -> SandboxInfo:
        """Bring every part up; on any failure stop what already runs and raise.

        Raises:
            SandboxError: a part would not start.
            BrokerError: Mosquitto is missing or would not start (a `PimeshError` too).
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the Pis (and their ztunnels), the controller, the API and the broker."""
        self._stack.close()
        self._api = None  # a snapshot taken now shows the Pis' own view only

    def snapshot(self) -> list[PiSnapshot]:
        """Every Pi as it is now, in id order."""
        api = self._api
        return [pi.snapshot(self._edge_device(api, pi.device_id)) for pi in self.pis]

    # start ---------------------------------------------------------------------------

    def _start(self) -> SandboxInfo:
        ids = tuple(f"pi-{i}" for i in range(1, self._devices + 1))
        broker = self._start_broker()
        passwords = broker.add_users(ids)
        kubeconfig = self._start_api()
        metrics_port = self._start_controller(broker, kubeconfig)
        self._stack.callback(self._stop_pis)
        for index, device_id in enumerate(ids, start=1):
            self._start_pi(index, device_id, password=passwords[device_id])
        info = broker.info
        self._info = SandboxInfo(
            workdir=self._workdir,
            broker_url=info.url,
            api_url=self._require_api().url,
            topic_prefix=self._prefix,
            mqtt_version=self._mqtt_version,
            namespace=self._namespace,
            kubeconfig=kubeconfig,
            env_file=self._workdir / "env.sh",
            password_file=self._workdir / "operator-password",
            operator_username=info.operator_username,
            metrics_port=metrics_port,
            device_ids=ids,
        )
        write_env_file(self._info, password=info.operator_password)
        return self._info

    def _start_broker(self) -> Mosquitto:
        broker = Mosquitto(prefix=self._prefix)
        self._stack.callback(broker.close)
        broker.start()
        self._broker = broker
        return broker

    def _start_api(self) -> Path:
        if not EDGE_DEVICE_CRD.is_file():
            raise SandboxError(f"the EdgeDevice CRD is missing: {EDGE_DEVICE_CRD}")
        api = KubeApiServer()
        try:
            api.start()
        except RuntimeError as exc:
            raise SandboxError(f"the Kubernetes API emulator did not start: {exc}") from exc
        self._stack.callback(api.stop)
        self._api = api
        api.install_crd(yaml.safe_load(EDGE_DEVICE_CRD.read_text()))
        kubeconfig = api.write_kubeconfig(self._workdir / "kubeconfig", namespace=self._namespace)
        kube = Kube(load_api_client(kubeconfig))
        try:
            seed_cluster(kube, namespace=self._namespace)
        finally:
            kube.close()
        return kubeconfig

    def _start_controller(self, broker: Mosquitto, kubeconfig: Path) -> int:
        info = broker.info
        metrics_port = free_port()
        settings = ControllerSettings(
            namespace=self._namespace,
            kubeconfig=kubeconfig,
            auto_approve=[] if self._manual_approve else ["*"],
            istiod_ip=None,  # discovered from the gateway Service, as in a cluster
            policy_file=None,
            metrics_port=metrics_port,
        )
        mqtt = self._mqtt(info.controller_username, info.controller_password)
        controller = Controller(settings, mqtt, client_id=CONTROLLER_CLIENT_ID)
        self._stack.callback(controller.stop)
        controller.start()
        if controller.link is None or not controller.link.wait_ready(_READY_TIMEOUT_S):
            raise SandboxError(f"the controller did not connect to {info.url} in time")
        return metrics_port

    def _start_pi(self, index: int, device_id: str, *, password: str) -> None:
        settings = self._agent_settings(index, device_id)
        strip = SimulatedStrip(settings.led_count)  # ours too, so the view can show it
        agent = build_agent(settings, self._mqtt(device_id, password), strip=strip)
        try:
            agent.start()
        except DeviceError as exc:
            port = "--http-port-base" if self._http_port_base else "a free port"
            raise SandboxError(f"{device_id} did not start ({port}): {exc.reason}") from exc
        self.pis.append(SimulatedPi(agent, strip, group=settings.group[0]))  # started ones only

    def _agent_settings(self, index: int, device_id: str) -> AgentSettings:
        base = self._workdir / device_id
        root = base / "root"
        root.mkdir(parents=True, exist_ok=True)
        record = base / "ztunnel.json"
        ztunnel = shlex.join(
            [sys.executable, "-m", "sandbox.standin_ztunnel", "--record", str(record)]
        )
        port = self._http_port_base + index if self._http_port_base else free_port()
        return AgentSettings(
            device_id=device_id,
            app="led-pi",
            group=[f"g{index % 2}"],
            label=[],
            address=[f"127.0.0.{100 + index}"],
            root=root,
            state_dir=base / "state",
            join_token=None,
            controller_key=None,
            ztunnel_cmd=ztunnel,
            led_backend="simulated",
            led_count=LED_COUNT,
            http_port=port,
            port=[ANNOUNCED_PORT],
            keepalive=KEEPALIVE_S,
        )

    def _mqtt(self, username: str, password: str) -> MqttSettings:
        """Settings for one component; every field given, so no `PIMESH_*` variable leaks in."""
        broker = self._broker
        if broker is None:
            raise SandboxError("the broker has not been started")
        return MqttSettings(
            broker=broker.info.url,
            username=username,
            password=SecretStr(password),
            ca_file=None,
            cert_file=None,
            key_file=None,
            mqtt_version=self._mqtt_version,
            topic_prefix=self._prefix,
        )

    # stop and observe ----------------------------------------------------------------

    def _stop_pis(self) -> None:
        """Stop every Pi at once: each says offline and stops its ztunnel."""
        pis = list(self.pis)
        if not pis:
            return
        with ThreadPoolExecutor(max_workers=min(len(pis), _STOP_WORKERS)) as pool:
            for future in [pool.submit(pi.agent.stop) for pi in pis]:
                try:
                    future.result()
                except Exception:
                    log.exception("a simulated Pi did not stop cleanly")

    def _require_api(self) -> KubeApiServer:
        if self._api is None:
            raise SandboxError("the Kubernetes API has not been started")
        return self._api

    def _edge_device(self, api: KubeApiServer | None, name: str) -> dict[str, Any] | None:
        if api is None:
            return None
        return api.get_object("pimesh.io/v1alpha1", "edgedevices", name, namespace=self._namespace)


def pimesh_bin() -> str:
    """The `pimesh` script next to this Python (the virtualenv's), else plain `pimesh`."""
    script = Path(sys.executable).parent / "pimesh"
    return str(script) if script.is_file() and os.access(script, os.X_OK) else "pimesh"


def write_env_file(info: SandboxInfo, *, password: str) -> None:
    """Write `env.sh` and the operator's password file (both 0600: the password is in them).

    `env.sh` puts the virtualenv's `bin` first on PATH when `pimesh` lives there, so
    that the commands the sandbox prints work as typed after `source env.sh`.
    """
    _write_private(info.password_file, password + "\n")
    variables = {
        "PIMESH_BROKER": info.broker_url,
        "PIMESH_USERNAME": info.operator_username,
        "PIMESH_PASSWORD": password,
        "PIMESH_MQTT_VERSION": info.mqtt_version,
        "PIMESH_TOPIC_PREFIX": info.topic_prefix,
        "PIMESH_KUBECONFIG": str(info.kubeconfig),
        "PIMESH_NAMESPACE": info.namespace,
    }
    lines = [f"# pimesh sandbox in {info.workdir}: `source` this file in another terminal."]
    script = Path(pimesh_bin())
    if script.is_absolute():
        lines.append(f'export PATH={shlex.quote(str(script.parent))}:"$PATH"')
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    _write_private(info.env_file, "\n".join(lines) + "\n")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
