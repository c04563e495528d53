"""A lightweight simulated device for the scaling benchmarks, and the processes that run them.

A real agent (device.agent) brings a web server, an LED thread, a ztunnel supervisor and
an MQTT network thread. To enroll a thousand devices on two cores the benchmarks need
far less: `LightDevice` speaks the device's half of PROTOCOL.md and nothing else. It has
its own keys (`shared.crypto.DeviceKeys`) and MQTT 5 connection as its own broker user,
and on `announce()` publishes its signed retained `online` status and a signed
announce, what the agent does on connect. When its bundle arrives it checks the
controller's signature, opens the HPKE seal, validates the content, acks the generation
and publishes its status again, as the agent's installer does (minus writing files).
It notes when it announced and when each generation arrived and was acked.

In `echo` mode a device does only the transport's part: it publishes the same signed
announce and waits for any message on its bundle topic, sent by `Responder` (a process
that echoes every announce back). That is the MQTT floor a boot storm is compared with.

paho waits in select() under its own loop, which cannot watch descriptors above
FD_SETSIZE (DESIGN.md). Here a worker process drives up to `MAX_PER_WORKER` clients from
one thread with epoll and paho's external-loop calls (`loop_read`, `loop_write`,
`loop_misc`): one descriptor per client, no network thread per client, and no GIL
hand-offs between 200 threads. `Fleet` spreads devices over several such processes
(multiprocessing, spawn) and talks to them over pipes.
"""

import contextlib
import heapq
import itertools
import multiprocessing
import resource
import secrets
import select
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.codec import decode_as, decode_bundle_content, encode
from shared.crypto import DeviceKeys, load_sign_public, new_nonce, open_bundle
from shared.errors import PimeshError
from shared.messages import Ack, Announce, Bundle, ControllerStatus, Enrollment, Keys, Port, Status
from shared.signing import sign_message, verify_message
from shared.timestamps import now_utc
from shared.topics import Channel, Topics

MAX_PER_WORKER = 200
"""Devices one worker process drives (the issue's figure; epoll itself has no limit)."""
READY_TIMEOUT_S = 60.0
MISC_EVERY_S = 1.0
"""How often paho's keepalive bookkeeping (`loop_misc`) runs for every client."""
KEEPALIVE_S = 60
ANNOUNCE_EVERY_S = 300.0
"""The agent's default heartbeat (`--announce-every`)."""
AGENT_VERSION = "bench-lightdevice"

Mode = Literal["enroll", "echo"]


@dataclass(frozen=True)
class Endpoint:
    """Where the devices connect: the broker's plain listener and the topic prefix."""

    host: str
    port: int
    prefix: str


@dataclass(frozen=True)
class DeviceSpec:
    """One device to simulate: its id (also its broker user) and when it announces."""

    device_id: str
    password: str = field(repr=False)
    offset_s: float = 0.0
    """Seconds after the fleet's `go` time at which it announces."""
    address: str = "198.18.0.1"
    """Its mesh address (RFC 2544's benchmarking range: never routed anywhere)."""


@dataclass
class DeviceRecord:
    """What one device saw; times are `time.monotonic()` (one clock machine-wide on Linux)."""

    device_id: str
    connected: bool = False
    announced_at: float | None = None
    """When it first announced."""
    announces: list[float] = field(default_factory=list)
    """When it announced (more than once: heartbeats, as the agent sends them)."""
    reply_at: float | None = None
    """Echo mode: when the echoed announce came back."""
    enrolled_at: float | None = None
    """When the `Enrolled` enrollment arrived."""
    bundles: dict[int, float] = field(default_factory=dict)
    """Generation -> when it first arrived."""
    acks: dict[int, float] = field(default_factory=dict)
    """Generation -> when it was acked (after opening and validating it)."""
    errors: list[str] = field(default_factory=list)


# --- the event loop ---------------------------------------------------------------------


class EventLoop:
    """epoll over many paho clients' sockets, plus timers and one control pipe."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, mqtt.Client] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._control: tuple[int, Callable[[], None]] | None = None

    def attach(self, client: mqtt.Client) -> None:
        """Let the loop serve `client` (its socket callbacks register it here)."""
        client.on_socket_open = lambda c, _u, sock: self._open(c, sock)
        client.on_socket_close = lambda _c, _u, sock: self._close(sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._want_write(sock, on=True)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._want_write(sock, on=False)

    def control(self, conn: Connection, handler: Callable[[], None]) -> None:
        """Call `handler` whenever the parent's pipe has a message."""
        self._control = (conn.fileno(), handler)
        self._epoll.register(conn.fileno(), select.EPOLLIN)

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run `fn` at monotonic time `when` (or as soon after as the loop gets to it)."""
        heapq.heappush(self._timers, (when, next(self._order), fn))

    def run(self, until: Callable[[], bool], *, timeout_s: float | None = None) -> bool:
        """Serve sockets and timers until `until()` holds (True) or the timeout (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_misc = time.monotonic() + MISC_EVERY_S
        while not until():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                for client in list(self._clients.values()):
                    client.loop_misc()
            self._run_timers(now)
            wait = min(next_misc, self._timers[0][0] if self._timers else next_misc)
            if deadline is not None:
                wait = min(wait, deadline)
            for fd, events in self._epoll.poll(max(0.0, wait - time.monotonic())):
                self._ready(fd, events)
        return True

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()

    def _ready(self, fd: int, events: int) -> None:
        if self._control is not None and fd == self._control[0]:
            self._control[1]()
            return
        client = self._clients.get(fd)
        if client is None:
            return
        if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            client.loop_read()
        if fd in self._clients and events & select.EPOLLOUT:
            client.loop_write()

    def _open(self, client: mqtt.Client, sock: Any) -> None:
        fd = sock.fileno()
        self._clients[fd] = client
        self._masks[fd] = select.EPOLLIN
        self._epoll.register(fd, select.EPOLLIN)

    def _close(self, sock: Any) -> None:
        fd = sock.fileno()
        if self._clients.pop(fd, None) is not None:
            self._masks.pop(fd, None)
            self._epoll.unregister(fd)

    def _want_write(self, sock: Any, *, on: bool) -> None:
        fd = sock.fileno()
        if fd not in self._masks:
            return
        mask = select.EPOLLIN | (select.EPOLLOUT if on else 0)
        if mask != self._masks[fd]:
            self._masks[fd] = mask
            self._epoll.modify(fd, mask)


# --- one device ---------------------------------------------------------------------------


class LightDevice:
    """The device's half of PROTOCOL.md, driven by an `EventLoop`."""

    def __init__(self, spec: DeviceSpec, *, endpoint: Endpoint, mode: Mode, group: str) -> None:
        self.spec = spec
        self.mode = mode
        self.record = DeviceRecord(spec.device_id)
        self.subscribed = False
        self._endpoint = endpoint
        self._topics = Topics(endpoint.prefix)
        self._keys = DeviceKeys.generate()
        self._group = group
        self._boot_id = secrets.token_hex(16)
        self._controller_key: Ed25519PublicKey | None = None
        self._held: list[Bundle] = []
        self._installed = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=spec.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(spec.device_id, spec.password)
        will = encode(Status.last_will(spec.device_id))
        self.client.will_set(self._topics.status(spec.device_id), will, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self) -> None:
        """Open the TCP connection and queue CONNECT (the loop does the rest)."""
        try:
            self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            self.record.errors.append(f"connect: {exc}")

    def announce(self) -> None:
        """What the agent does once connected: its retained `online` status, then announce."""
        if self.mode == "enroll":
            self._publish_status()
        announce = Announce(
            device_id=self.spec.device_id,
            ts=now_utc(),
            nonce=new_nonce(),
            boot_id=self._boot_id,
            hostname=self.spec.device_id,
            addresses=(self.spec.address,),
            arch="aarch64",
            os="Debian GNU/Linux 12",
            agent_version=AGENT_VERSION,
            app="led-pi",
            groups=(self._group,),
            ports=(Port(name="http-pi", port=8080),),
            keys=Keys(sign=self._keys.sign_public_b64, kx=self._keys.kx_public_b64),
        )
        self.record.announced_at = self.record.announced_at or time.monotonic()
        self.record.announces.append(time.monotonic())
        self._send(self._topics.announce(self.spec.device_id), announce)

    def disconnect(self) -> None:
        """A clean DISCONNECT (the broker keeps the retained status as it was)."""
        self.client.disconnect()

    # MQTT in -------------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.record.errors.append(f"CONNACK {reason}")
            return
        self.record.connected = True
        me = self.spec.device_id
        topics = [(self._topics.bundle(me), 1)]
        if self.mode == "enroll":
            topics += [(self._topics.enrollment(me), 1), (self._topics.controller_status(), 1)]
        client.subscribe(topics)

    def _on_subscribe(self, *_: object) -> None:
        self.subscribed = True

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if not msg.payload:
            return  # a cleared retained bundle
        try:
            self._handle(msg.topic, bytes(msg.payload), now)
        except PimeshError as exc:
            self.record.errors.append(f"{msg.topic}: {exc.reason}")

    def _handle(self, topic: str, payload: bytes, now: float) -> None:
        me = self.spec.device_id
        if topic == self._topics.bundle(me):
            if self.mode == "echo":
                self.record.reply_at = self.record.reply_at or now
                return
            bundle = decode_as(payload, Bundle)
            self.record.bundles.setdefault(bundle.generation, now)
            self._install(bundle)
        elif topic == self._topics.controller_status():
            status = decode_as(payload, ControllerStatus)
            if status.state == "online" and self._controller_key is None:
                self._controller_key = load_sign_public(status.keys.sign)
                held, self._held = self._held, []
                for bundle in held:
                    self._install(bundle)
        elif topic == self._topics.enrollment(me):
            enrollment = decode_as(payload, Enrollment)
            if enrollment.phase == "Enrolled" and self.record.enrolled_at is None:
                self.record.enrolled_at = now

    def _install(self, bundle: Bundle) -> None:
        """Check, open and validate the bundle, then ack it and say so in status."""
        if self._controller_key is None:
            self._held.append(bundle)  # PROTOCOL.md: held until the key is pinned
            return
        if bundle.generation < self._installed:
            return
        verify_message(bundle, self._controller_key)
        me = self.spec.device_id
        if bundle.generation > self._installed:
            plaintext = open_bundle(
                bundle.sealed, self._keys.kx_key, device_id=me, generation=bundle.generation
            )
            decode_bundle_content(plaintext)
            self._installed = bundle.generation
        ack = Ack(
            device_id=me,
            ts=now_utc(),
            nonce=new_nonce(),
            generation=bundle.generation,
            result="applied",
        )
        self._send(self._topics.ack(me), ack)
        self.record.acks.setdefault(bundle.generation, time.monotonic())
        self._publish_status()

    # MQTT out ------------------------------------------------------------------------------

    def _publish_status(self) -> None:
        status = Status(
            device_id=self.spec.device_id,
            state="online",
            ts=now_utc(),
            nonce=new_nonce(),
            agent_version=AGENT_VERSION,
            generation=self._installed,
            ztunnel="absent",
        )
        self._send(self._topics.status(self.spec.device_id), status, retain=True)

    def _send(self, topic: str, msg: Any, *, retain: bool = False) -> None:
        signed = sign_message(msg, self._keys.sign_key)
        self.client.publish(topic, encode(signed), qos=1, retain=retain)


# --- a worker process -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process simulates."""

    endpoint: Endpoint
    mode: Mode
    devices: tuple[DeviceSpec, ...]
    announce_every_s: float


@dataclass(frozen=True)
class WorkerReport:
    """Every device's record and the worker's own CPU seconds so far."""

    records: tuple[DeviceRecord, ...]
    cpu_s: float


class Worker:
    """The body of one worker process: connect, wait for commands, report."""

    def __init__(self, plan: WorkerPlan, conn: Connection) -> None:
        self._plan = plan
        self._conn = conn
        self._loop = EventLoop()
        self._stopping = False
        self._devices = [
            LightDevice(spec, endpoint=plan.endpoint, mode=plan.mode, group=f"g{index % 2}")
            for index, spec in enumerate(plan.devices)
        ]
        for device in self._devices:
            self._loop.attach(device.client)

    def run(self) -> None:
        """Connect every device, say `ready`, then obey the parent until `stop`."""
        for device in self._devices:
            device.connect()
        self._loop.run(
            lambda: all(d.subscribed or d.record.errors for d in self._devices),
            timeout_s=READY_TIMEOUT_S,
        )
        errors = [f"{d.spec.device_id}: {d.record.errors or 'no SUBACK'}" for d in self._failed()]
        self._conn.send(("ready", errors))
        self._loop.control(self._conn, self._command)
        self._loop.run(lambda: self._stopping)
        for device in self._devices:
            device.disconnect()
        # Let the DISCONNECTs leave before the process (and its sockets) goes.
        self._loop.run(lambda: False, timeout_s=0.2)

    def _heartbeat(self, device: LightDevice) -> Callable[[], None]:
        """Announce now and again every `announce_every_s` (+-10 %), as the agent does."""

        def beat() -> None:
            device.announce()
            jitter = 1 + (secrets.randbelow(2001) - 1000) / 10_000
            self._loop.call_at(time.monotonic() + self._plan.announce_every_s * jitter, beat)

        return beat

    def _failed(self) -> list[LightDevice]:
        return [d for d in self._devices if not d.subscribed]

    def _command(self) -> None:
        command, argument = self._conn.recv()
        if command == "go":
            for device in self._devices:
                self._loop.call_at(argument + device.spec.offset_s, self._heartbeat(device))
        elif command == "report":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            records = tuple(d.record for d in self._devices)
            self._conn.send(("report", WorkerReport(records, usage.ru_utime + usage.ru_stime)))
        elif command == "count":
            # How many devices acked generation `argument` (0: have an echoed reply).
            done = sum(1 for d in self._devices if _done(d.record, argument))
            self._conn.send(("count", done))
        elif command == "stop":
            self._stopping = True


def _done(record: DeviceRecord, generation: int) -> bool:
    """Acked `generation`, or (0) has its echoed reply."""
    return generation in record.acks if generation else record.reply_at is not None


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Entry point of a worker process (spawned by `Fleet`)."""
    try:
        Worker(plan, conn).run()
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        raise


# --- the parent's side ------------------------------------------------------------------------


class FleetError(RuntimeError):
    """A worker process failed, or its devices could not connect."""


class Fleet:
    """`devices` spread over worker processes of at most `per_worker` each; a context manager.

    Entering it starts the workers and returns once every device is connected and
    subscribed; `go(t0)` makes each device announce at `t0 + offset_s` and again every
    `announce_every_s` (+-10 %) as the agent does; `report()`
    collects every record so far; leaving stops the workers.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        devices: Sequence[DeviceSpec],
        *,
        mode: Mode,
        announce_every_s: float = ANNOUNCE_EVERY_S,
        per_worker: int = MAX_PER_WORKER,
    ) -> None:
        self._plans = [
            WorkerPlan(endpoint, mode, tuple(devices[start : start + per_worker]), announce_every_s)
            for start in range(0, len(devices), per_worker)
        ]
        self.size = len(devices)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [int(process.pid) for process, _ in self._workers]

    def __enter__(self) -> "Fleet":
        try:
            for plan in self._plans:
                parent, child = self._context.Pipe()
                process = self._context.Process(
                    target=worker_main, args=(plan, child), name="bench-devices", daemon=True
                )
                process.start()
                child.close()
                self._workers.append((process, parent))
            for _, conn in self._workers:
                errors = self._expect(conn, "ready", timeout_s=READY_TIMEOUT_S + 30)
                if errors:
                    raise FleetError(f"{len(errors)} devices did not connect: {errors[:3]}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def go(self, t0: float) -> None:
        """Every device announces at monotonic time `t0` plus its offset."""
        for _, conn in self._workers:
            conn.send(("go", t0))

    def report(self) -> tuple[list[DeviceRecord], float]:
        """Every device's record, and the workers' CPU seconds so far."""
        records: list[DeviceRecord] = []
        cpu = 0.0
        for _, conn in self._workers:
            conn.send(("report", None))
        for _, conn in self._workers:
            report: WorkerReport = self._expect(conn, "report", timeout_s=30)
            records += report.records
            cpu += report.cpu_s
        return records, cpu

    def count(self, generation: int) -> int:
        """How many devices acked `generation` (0: have their echoed reply); cheap to ask."""
        for _, conn in self._workers:
            conn.send(("count", generation))
        return sum(int(self._expect(conn, "count", timeout_s=30)) for _, conn in self._workers)

    def close(self) -> None:
        """Stop every worker (their devices disconnect cleanly), killing stragglers."""
        for process, conn in self._workers:
            if process.is_alive():
                with contextlib.suppress(OSError):  # it is already gone
                    conn.send(("stop", None))
        for process, conn in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers.clear()

    @staticmethod
    def _expect(conn: Connection, kind: str, *, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise FleetError(f"a device worker sent no {kind!r} within {timeout_s} s")
        got, payload = conn.recv()
        if got == "failed":
            raise FleetError(f"a device worker failed:\n{payload}")
        if got != kind:
            raise FleetError(f"a device worker sent {got!r} instead of {kind!r}")
        return payload


# --- the transport floor's responder ------------------------------------------------------


def responder_main(endpoint: Endpoint, username: str, password: str, conn: Connection) -> None:
    """Echo every announce back on the device's bundle topic, until told to stop."""
    topics = Topics(endpoint.prefix)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-responder-{secrets.token_hex(3)}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(username, password)

    def on_message(c: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        device_id = msg.topic.split("/")[-2]
        c.publish(topics.bundle(device_id), msg.payload, qos=1)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topics.device_filter(Channel.ANNOUNCE), 1)
    client.on_subscribe = lambda *_: conn.send(("ready", None))
    client.connect(endpoint.host, endpoint.port, keepalive=KEEPALIVE_S)
    client.loop_start()
    conn.recv()  # "stop"
    client.disconnect()
    client.loop_stop()


class Responder:
    """The echo process of the transport floor; a context manager."""

    def __init__(self, endpoint: Endpoint, *, username: str, password: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=responder_main,
            args=(endpoint, username, password, child),
            name="bench-responder",
            daemon=True,
        )
        self._child = child

    def __enter__(self) -> "Responder":
        self._process.start()
        self._child.close()
        if not self._conn.poll(READY_TIMEOUT_S):
            self.__exit__()
            raise FleetError("the echo responder did not subscribe in time")
        self._conn.recv()
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.is_alive():
            self._conn.send(("stop", None))
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def raise_fd_limit() -> None:
    """Lift the soft descriptor limit to the hard one (children inherit it: the broker too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def device_specs(
    ids: Sequence[str], passwords: dict[str, str], *, spread_s: float
) -> list[DeviceSpec]:
    """Specs for `ids`, announcing evenly over `spread_s`, each with an address of its own."""
    count = max(1, len(ids))
    return [
        DeviceSpec(
            device_id=device_id,
            password=passwords[device_id],
            offset_s=spread_s * index / count,
            address=f"198.18.{index // 250}.{index % 250 + 1}",
        )
        for index, device_id in enumerate(ids)
    ]


def iter_latencies(records: Sequence[DeviceRecord], generation: int) -> Iterator[float]:
    """Announce to arrival of `generation`, for every device that has both."""
    for record in records:
        arrived = record.bundles.get(generation)
        if record.announced_at is not None and arrived is not None:
            yield arrived - record.announced_at
