"""The Pi agent: from first boot to a running ztunnel, and kept current as tokens rotate.

Threads: paho's network thread only decodes and hands events to the agent's own worker
thread (LED commands go straight to the strip's player, which never blocks); the worker
handles everything that touches disk or processes, one event at a time, and runs the
timers (heartbeat announce, address changes).

What the agent says and when (PROTOCOL.md):
- an `announce` on start and on every (re)connect, when its addresses change, when the
  controller's status turns `online` while connected (after a random delay of up to 5 s,
  so a fleet does not answer at once), and every `--announce-every` seconds (±10 %);
- a retained `online` status once its subscriptions are acknowledged and whenever its
  generation or ztunnel state changes; `offline` (retained) on a clean stop, and as its
  last will otherwise;
- an `ack` for every bundle generation it installed or failed to install.
Enrollments and bundles count only when signed by the pinned controller key; those that
arrive before the key is known are held, not dropped.
"""

import logging
import queue
import random
import shlex
import threading
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import version
from typing import TYPE_CHECKING

from device.bundles import BundleInstaller
from device.ledlink import is_stale, to_message, to_spec
from device.leds import EffectPlayer, LedDriver, LedState
from device.netinfo import arch, boot_id, detect_addresses, os_name
from device.settings import AgentSettings
from device.trust import ControllerTrust
from device.ztunnel import ZtunnelSupervisor
from shared.codec import encode
from shared.crypto import DeviceKeys
from shared.errors import InvalidMessage
from shared.fields import new_nonce
from shared.messages import (
    Ack,
    Announce,
    Bundle,
    ControllerStatus,
    Enrollment,
    Keys,
    Led,
    MessageBase,
    Port,
    Status,
)
from shared.messages import LedState as LedStateMessage
from shared.mqtt import Incoming, MqttLink, Outgoing
from shared.settings import MqttSettings
from shared.signing import sign_message
from shared.timestamps import now_utc
from shared.topics import Channel, Topics, decode_on

if TYPE_CHECKING:
    from flask import Flask

    from device.web import LedMetrics, WebServer

log = logging.getLogger(__name__)

ADDRESS_CHECK_S = 30.0
CONTROLLER_ONLINE_SPREAD_S = 5.0


class Agent:
    """One device's agent."""

    def __init__(
        self,
        settings: AgentSettings,
        mqtt: MqttSettings,
        *,
        strip: LedDriver | None = None,
        now: Callable[[], datetime] = now_utc,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        self.topics = Topics(mqtt.topic_prefix)
        self.keys = DeviceKeys.load_or_create(settings.state_dir)
        self.trust = ControllerTrust(settings.state_dir, pinned=settings.controller_key)
        command = settings.ztunnel_cmd.strip()
        self.ztunnel = ZtunnelSupervisor(
            None if command == "none" else shlex.split(command),
            cwd=settings.root,
            # On the supervisor's thread, under its lock: only hand the news over.
            on_state=lambda _state: self._events.put(self._publish_status),
        )
        self._mqtt = mqtt
        self._now = now
        self._rng = rng
        self._version = version("pimesh")
        self._boot_id = boot_id()
        self._events: queue.Queue[Callable[[], None]] = queue.Queue()
        self._held: list[MessageBase] = []
        self._stop = threading.Event()
        self._addresses = self._current_addresses()
        self._next_announce = 0.0
        self._next_address_check = 0.0
        self.last_enrollment: Enrollment | None = None
        self.bundles = BundleInstaller(
            settings,
            keys=self.keys,
            ztunnel=self.ztunnel,
            ack=self._send_ack,
            changed=self._publish_status,
        )
        self.link = MqttLink(
            mqtt,
            client_id=self.device_id,
            subscriptions=self.topics.agent_subscriptions(self.device_id, groups=settings.group),
            on_message=self._on_message,
            on_ready=lambda: self._events.put(self._on_connected),
            will=Outgoing(
                self.topics.status(self.device_id),
                encode(Status.last_will(self.device_id)),
                retain=True,
            ),
            keepalive_s=settings.keepalive,
        )
        self._worker = threading.Thread(target=self._work, name="agent", daemon=True)
        self.leds = (
            EffectPlayer(strip, on_change=self._publish_led_state) if strip is not None else None
        )
        # web ----- the LED page, its API and /metrics (device/web.py); --http-port 0
        # disables them, and then the LED metrics, which only /metrics shows, too.
        self.led_metrics: LedMetrics | None = None
        self._web: WebServer | None = None
        if settings.http_port:
            self.led_metrics, self._web = self._web_server(settings.http_port)

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the LED page, connect (in the background, retrying forever) and work.

        Raises:
            DeviceError: The HTTP port cannot be bound.
        """
        if self._web is not None:  # first: a port in use must stop the start cleanly
            self._web.start()
        self._worker.start()
        self.link.start()

    def stop(self) -> None:
        """Stop the web server, say offline (retained), disconnect, stop ztunnel and the strip."""
        if self._web is not None:
            self._web.stop()
        self._stop.set()
        self._events.put(lambda: None)
        self._worker.join(timeout=10)
        offline = Outgoing(
            self.topics.status(self.device_id),
            encode(Status.last_will(self.device_id)),
            retain=True,
        )
        self.link.stop(offline)
        self.ztunnel.close()
        if self.leds is not None:
            self.leds.close()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=self._until_next_tick())
            except queue.Empty:
                event = self._tick
            try:
                event()
            except Exception:
                log.exception("agent event failed")

    def _until_next_tick(self) -> float:
        return max(0.05, min(self._next_announce, self._next_address_check) - time.monotonic())

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_address_check:
            self._next_address_check = now + ADDRESS_CHECK_S
            addresses = self._current_addresses()
            if addresses != self._addresses:
                log.info("addresses changed", extra={"addresses": addresses})
                self._addresses = addresses
                self._announce()
        if now >= self._next_announce and self.link.ready:
            self._announce()

    # MQTT in -----------------------------------------------------------------------------

    def _on_message(self, incoming: Incoming) -> None:
        """On paho's thread: decode and hand over; never block."""
        if not incoming.payload:
            return  # a cleared retained message (the bundle of a revoked device)
        try:
            parsed = self.topics.parse(incoming.topic)
            message = decode_on(parsed, incoming.payload)
        except InvalidMessage as exc:
            log.warning(
                "ignored an invalid message", extra={"topic": incoming.topic, "why": exc.reason}
            )
            return
        if isinstance(message, Led):
            self._on_led(message)
        elif parsed.channel is Channel.CONTROLLER_STATUS and isinstance(message, ControllerStatus):
            self._events.put(lambda: self._on_controller(message, retained=incoming.retain))
        elif isinstance(message, Enrollment | Bundle):
            self._events.put(lambda: self._on_signed(message))

    def _on_connected(self) -> None:
        log.info("connected to the broker", extra={"broker": self._mqtt.broker})
        self._publish_status()
        if self.leds is not None:
            self._publish_led_state(self.leds.state())
        self._announce()

    def _on_controller(self, status: ControllerStatus, *, retained: bool) -> None:
        if not self.trust.observe(status):
            return
        held, self._held = self._held, []
        for message in held:
            self._on_signed(message)
        if status.state == "online" and not retained:
            # The controller (re)started while we were connected: tell it we exist, but
            # not all at the same moment as the rest of the fleet.
            self._next_announce = time.monotonic() + self._rng() * CONTROLLER_ONLINE_SPREAD_S

    def _on_signed(self, message: MessageBase) -> None:
        if self.trust.key is None:
            self._held.append(message)
            return
        if not self.trust.signed_by_controller(message):
            log.warning(
                "ignored a message not signed by the controller",
                extra={"kind": getattr(message, "kind", "")},
            )
            return
        if isinstance(message, Enrollment):
            self._on_enrollment(message)
        elif isinstance(message, Bundle):
            self.bundles.handle(message)

    def _on_enrollment(self, msg: Enrollment) -> None:
        self.last_enrollment = msg
        level = logging.WARNING if msg.phase in {"Pending", "Rejected"} else logging.INFO
        log.log(level, "enrollment %s: %s", msg.phase, msg.reason, extra={"phase": msg.phase})
        if msg.phase == "Revoked":
            self.bundles.revoke()

    def _on_led(self, command: Led) -> None:
        state = None if self.leds is None else self.command(command)
        if self.led_metrics is None:
            return
        if self.leds is None:
            self.led_metrics.rejected.labels(source="mqtt", reason="no_strip").inc()
        else:
            self.led_metrics.count(state, source="mqtt")

    def command(self, command: Led) -> LedState | None:
        """Apply an LED command, from MQTT or HTTP alike; `led_state` follows.

        Returns:
            The state the command produced; `None` when it was ignored (no strip, or its
            `ts` is more than 60 s old).
        """
        if self.leds is None:
            return None
        if is_stale(command, now=self._now()):
            log.info("ignored a stale LED command", extra={"command": command.id})
            return None
        return self.leds.play(to_spec(command))

    # web -------------------------------------------------------------------------------

    @property
    def web_port(self) -> int | None:
        """The port the LED page is served on, once started; `None` when disabled."""
        return None if self._web is None else self._web.port

    def health(self) -> dict[str, object]:
        """What `/healthz` reports: the broker link, ztunnel, generation and strip."""
        record = self.bundles.record
        leds = "absent" if self.leds is None else "failed" if self.leds.state().failed else "ok"
        phase = self.last_enrollment.phase if self.last_enrollment else None
        return {
            "device_id": self.device_id,
            "mqtt": {"connected": self.link.connected, "ready": self.link.ready},
            "ztunnel": self.ztunnel.state,
            "generation": record.generation if record else 0,
            "enrollment": phase or "unknown",
            "leds": leds,
        }

    def _web_server(self, port: int) -> "tuple[LedMetrics, WebServer]":
        # Imported only here: Flask and werkzeug are some 7 MB of RSS that an agent
        # serving no page does without (benchmarks/agent_footprint.py).
        from device.web import LedMetrics, WebServer

        metrics = LedMetrics(self.leds)
        return metrics, WebServer(self._web_app(metrics), port=port)

    def _web_app(self, metrics: "LedMetrics") -> "Flask":
        from device.web import create_app

        def sign(message: LedStateMessage) -> LedStateMessage:
            return sign_message(message, self.keys.sign_key)

        return create_app(
            player=self.leds,
            device_id=self.device_id,
            health=self.health,
            on_command=self.command,
            sign=sign,
            metrics=metrics,
            now=self._now,
        )

    # MQTT out ----------------------------------------------------------------------------

    def _announce(self) -> None:
        jitter = 1 + (self._rng() * 0.2 - 0.1)
        self._next_announce = time.monotonic() + self.settings.announce_every * jitter
        announce = Announce(
            device_id=self.device_id,
            ts=self._now(),
            nonce=new_nonce(),
            boot_id=self._boot_id,
            hostname=self.device_id,
            addresses=tuple(self._addresses),
            arch=arch(),
            os=os_name(),
            agent_version=self._version,
            app=self.settings.app,
            groups=tuple(self.settings.group),
            labels=self.settings.labels,
            ports=tuple(Port(name=n, port=p) for n, p in self.settings.ports),
            keys=Keys(sign=self.keys.sign_public_b64, kx=self.keys.kx_public_b64),
            join_token=self.settings.join_token,
        )
        self._send(self.topics.announce(self.device_id), announce)

    def _publish_status(self) -> None:
        record = self.bundles.record
        status = Status(
            device_id=self.device_id,
            state="online",
            ts=self._now(),
            nonce=new_nonce(),
            agent_version=self._version,
            generation=record.generation if record else 0,
            token_expires_at=self.bundles.token_expires_at,
            ztunnel=self.ztunnel.state,
        )
        self._send(self.topics.status(self.device_id), status, retain=True)

    def _send_ack(self, generation: int, result: str, detail: str) -> None:
        ack = Ack(
            device_id=self.device_id,
            ts=self._now(),
            nonce=new_nonce(),
            generation=generation,
            result="applied" if result == "applied" else "failed",
            detail=detail[:1024] or None,
        )
        self._send(self.topics.ack(self.device_id), ack)

    def _publish_led_state(self, state: LedState) -> None:
        msg = to_message(state, device_id=self.device_id, now=self._now(), nonce=new_nonce())
        self._send(self.topics.led_state(self.device_id), msg, retain=True, qos=0)

    def _send(self, topic: str, msg: MessageBase, *, retain: bool = False, qos: int = 1) -> None:
        signed = sign_message(msg, self.keys.sign_key)
        self.link.publish(Outgoing(topic, encode(signed), qos=qos, retain=retain))

    def _current_addresses(self) -> list[str]:
        if self.settings.address:
            return list(self.settings.address)
        address = self._mqtt.address
        return detect_addresses(address.host, address.port)
