"""No secret reaches a log: every record of a full enrollment and rotation is searched.

The real controller and a real agent run in this process, with logging set up the way
`pimesh ... run --log-level debug --log-format json` sets it up (`shared.logs.configure`),
plus a handler that keeps every record. Each record is searched as it would be printed
(JSON and text), together with what reached stderr, for the tokens the API server issued,
the agent's and the controller's private keys, the join token and the MQTT passwords.
"""

import base64
import logging
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from kubernetes import client

from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from shared.logs import JsonFormatter, TextFormatter, configure
from tests.harness.agents import AgentRig, rig_fixture, wait_until
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import get_device

pytestmark = pytest.mark.timeout(90)
rig = rig_fixture


class KeepAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[KeepAll]:
    """Logging as the CLI configures it at debug level, every record kept; restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    quiet = {name: logging.getLogger(name).level for name in ("urllib3", "kubernetes")}
    configure(level="DEBUG", fmt="json")
    handler = KeepAll()
    root.addHandler(handler)
    yield handler
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def rendered(records: list[logging.LogRecord]) -> list[str]:
    json_fmt, text_fmt = JsonFormatter(), TextFormatter()
    out = []
    for record in records:
        out += [record.getMessage(), json_fmt.format(record), text_fmt.format(record)]
    return out


def key_forms(pem: bytes) -> list[str]:
    """A private key as it could leak: PEM body lines, raw bytes in base64 and hex."""
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey | X25519PrivateKey)
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    lines = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [*lines, base64.b64encode(raw).decode(), raw.hex()]


def join_token(mesh: Mesh, value: str) -> None:
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=f"join-{uuid.uuid4().hex[:6]}", labels={"pimesh.io/join-token": "true"}
        ),
        data={"token": base64.b64encode(value.encode()).decode()},
    )
    client.CoreV1Api(mesh.api).create_namespaced_secret(mesh.namespace, secret)


def acked(mesh: Mesh, name: str) -> int:
    try:
        return int(get_device(mesh, name).get("status", {}).get("ackedGeneration", 0))
    except client.ApiException:
        return 0


def test_no_secret_in_any_log_record_and_secret_files_are_private(
    kept: KeepAll,
    controller_factory: ControllerFactory,
    rig: AgentRig,
    mesh: Mesh,
    kube_api: KubeApiServer,
    broker: Mosquitto,
    capsys: pytest.CaptureFixture[str],
) -> None:
    join = f"join-{uuid.uuid4().hex}"
    join_token(mesh, join)
    controller_factory(token_ttl=600, rotate_every=2)
    name = f"pi-{uuid.uuid4().hex[:8]}"
    agent = rig.start(name, join_token=join)
    wait_until(lambda: acked(mesh, name) >= 2, timeout=40, what="enrolled and rotated once")

    tokens = [t.token for t in kube_api.issued_tokens if t.namespace == mesh.namespace]
    assert len(tokens) >= 2, "enrollment and one rotation each issued a token"
    state = agent.settings.state_dir
    secrets = {f"token {i}": t for i, t in enumerate(tokens)}
    for file in ("sign.key", "kx.key"):
        for i, form in enumerate(key_forms((state / file).read_bytes())):
            secrets[f"{file} form {i}"] = form
    core: Any = client.CoreV1Api(mesh.api)  # the generated models type every field Optional
    seed_b64 = str(
        core.read_namespaced_secret("pimesh-controller-key", mesh.namespace).data["ed25519"]
    )
    secrets["controller seed"] = seed_b64
    secrets["controller seed hex"] = base64.b64decode(seed_b64).hex()
    secrets["join token"] = join
    secrets["controller password"] = broker.info.controller_password
    password = agent._mqtt.password
    assert password is not None
    secrets["agent password"] = password.get_secret_value()

    assert len(kept.records) > 20, "the run logged (else this test proves nothing)"
    texts = [*rendered(kept.records), capsys.readouterr().err]
    for what, value in secrets.items():
        leaked = [text[:200] for text in texts if value in text]
        assert not leaked, f"{what} appears in the logs: {leaked[:2]}"

    private_files = [
        agent.settings.root / "var/lib/istio/ztunnel/istio-token",
        state / "sign.key",
        state / "kx.key",
        state / "installed.json",
    ]
    for path in private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} is not 0600"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    installed = (agent.settings.root / "var/lib/istio/ztunnel/istio-token").read_text()
    assert installed in tokens


def test_the_kubernetes_client_debug_log_would_leak_and_is_capped(kept: KeepAll) -> None:
    # Why configure() caps "kubernetes" at WARNING: its REST layer logs every response
    # body at DEBUG, and a TokenRequest response body holds the token.
    assert logging.getLogger("kubernetes").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("kubernetes.client.rest").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.WARNING


def test_key_forms_finds_the_raw_key(tmp_path: Path) -> None:
    from shared.crypto import DeviceKeys

    keys = DeviceKeys.load_or_create(tmp_path / "s")
    forms = key_forms((tmp_path / "s" / "sign.key").read_bytes())
    raw = keys.sign_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert base64.b64encode(raw).decode() in forms
