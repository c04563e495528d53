"""The agent's web server: the seed's Flask LED page on port 8080, and its JSON API.

The seed ran a small Flask server next to the strip (`led_strip_rainbow.py`, port 8080)
whose `/switch` ran one rainbow pass; the mesh's Service `led-pi` points at that port, and
the seed's AuthorizationPolicy demo is enforced on it by ztunnel. PROTOCOL.md keeps that
endpoint and adds an API beside it:

    GET  /          the LED page: live colour, and forms that send commands
    GET  /switch    the seed's endpoint: a `switch` command
    GET  /api/led   the current `led_state` (the wire form; signed when the agent signs)
    POST /api/led   a `led` command as JSON: 202 {"accepted": ID} or 400 {"error": reason}
    GET  /healthz   the agent's state (MQTT, ztunnel, generation)
    GET  /metrics   Prometheus text

HTTP commands go through the same function as MQTT commands (`on_command`, the agent's
`command`), so they are checked for staleness the same way and publish `led_state` the
same way. Like the seed, the page has no login: who may reach port 8080 is the mesh's
business (an AuthorizationPolicy enforced by ztunnel), not this server's.

`create_app` builds the Flask app (tests use its test client); `WebServer` serves it
with werkzeug's threaded WSGI server from a daemon thread.
"""

import logging
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime

from flask import Flask, Response, jsonify, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from device.errors import DeviceError
from device.ledlink import is_stale, to_message, to_spec
from device.leds import Effect, EffectPlayer, LedState
from device.metrics import CONTENT_TYPE, Counter, Gauge, render
from device.webpage import PAGE
from shared.codec import MAX_PAYLOAD_BYTES, decode_as, encode
from shared.errors import InvalidMessage
from shared.fields import EFFECTS, new_nonce
from shared.messages import Led
from shared.messages import LedState as LedStateMessage
from shared.timestamps import now_utc

log = logging.getLogger(__name__)

CommandSink = Callable[[Led], LedState | None]
"""Applies a command; returns the state it produced, or `None` when it was ignored (stale)."""

Signer = Callable[[LedStateMessage], LedStateMessage]
"""Signs a `led_state` with the device's key (the agent's), for `GET /api/led`."""

NO_STRIP = "this device has no LED strip"
STALE = "ignored: ts is more than 60 s old"
_SWITCH_BODY = (
    "<!doctype html><html><head><title>switch</title></head><body>"
    "<p>Switched {device}: one rainbow pass, then back to {effect}.</p></body></html>\n"
)


class LedMetrics:
    """The agent's LED metrics (each agent has its own: several may share a process).

    Attributes:
        accepted: Commands applied, by source (`mqtt`, `http`).
        rejected: Commands refused or ignored, by source and reason (`invalid`, `stale`,
            `no_strip`).
    """

    def __init__(self, player: EffectPlayer | None) -> None:
        self.accepted = Counter(
            "pimesh_led_commands", "LED commands applied, by source.", ("source",)
        )
        self.rejected = Counter(
            "pimesh_led_commands_rejected",
            "LED commands refused or ignored, by source and reason.",
            ("source", "reason"),
        )
        self._metrics: list[Counter | Gauge] = [self.accepted, self.rejected]
        if player is not None:
            self._metrics.extend(_state_gauges(player))

    def count(self, state: LedState | None, *, source: str) -> None:
        """Counts one command's outcome: applied (a state) or ignored as stale (`None`)."""
        if state is None:
            self.rejected.labels(source=source, reason="stale").inc()
        else:
            self.accepted.labels(source=source).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return render(self._metrics)


def _state_gauges(player: EffectPlayer) -> list[Gauge]:
    """Gauges read from the player at scrape time, so they are never out of date."""
    return [
        Gauge(
            "pimesh_led_brightness",
            "Current brightness, 0-255.",
            {(): lambda: player.state().brightness},
        ),
        Gauge(
            "pimesh_led_strip_failed",
            "1 once the strip has failed.",
            {(): lambda: int(player.state().failed)},
        ),
        Gauge(
            "pimesh_led_effect",
            "1 for the effect running.",
            {(("effect", name),): _running(player, name) for name in EFFECTS},
        ),
    ]


def _running(player: EffectPlayer, effect: str) -> Callable[[], float]:
    return lambda: float(player.state().effect.value == effect)


def create_app(
    *,
    player: EffectPlayer | None,
    device_id: str,
    health: Callable[[], dict[str, object]],
    on_command: CommandSink | None = None,
    sign: Signer | None = None,
    metrics: LedMetrics | None = None,
    now: Callable[[], datetime] = now_utc,
) -> Flask:
    """The LED web app of one device.

    Args:
        player: The strip's player; `None` when the device has no strip (LED endpoints
            then answer 503).
        device_id: The device's id, for `led_state` and the page.
        health: What `/healthz` reports (the agent's state).
        on_command: Applies a command (the agent's, which publishes `led_state`);
            by default the command is played on `player` directly.
        sign: Signs the `led_state` of `GET /api/led`; unsigned without it.
        metrics: Where to count commands (the agent shares it with its MQTT path).
        now: The clock for `ts` and the staleness check.

    Returns:
        The Flask app.
    """
    app = Flask(__name__)
    # Flask answers 413 itself past the protocol's payload limit.
    app.config["MAX_CONTENT_LENGTH"] = MAX_PAYLOAD_BYTES
    counted = metrics or LedMetrics(player)
    apply = on_command or _player_sink(player, now=now)
    led = _LedRoutes(player, device_id=device_id, apply=apply, sign=sign, metrics=counted, now=now)

    app.add_url_rule("/", "page", lambda: _page(device_id))
    app.add_url_rule("/switch", "switch", led.switch)
    app.add_url_rule("/api/led", "led_state", led.state, methods=["GET"])
    app.add_url_rule("/api/led", "led_command", led.command, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", lambda: jsonify(health()))
    app.add_url_rule(
        "/metrics", "metrics", lambda: Response(counted.render(), content_type=CONTENT_TYPE)
    )
    app.register_error_handler(HTTPException, _http_error)
    return app


def _player_sink(player: EffectPlayer | None, *, now: Callable[[], datetime]) -> CommandSink:
    """Without an agent: the same rules as the agent's path, straight onto the player."""

    def play(command: Led) -> LedState | None:
        if player is None or is_stale(command, now=now()):
            return None
        return player.play(to_spec(command))

    return play


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    """Every HTTP error as `{"error": ...}`, like the API's own refusals."""
    return jsonify(error=exc.description or exc.name), exc.code or 500


def _error(reason: str, status: int) -> tuple[Response, int]:
    return jsonify(error=reason), status


class _LedRoutes:
    """The handlers that touch the strip."""

    def __init__(
        self,
        player: EffectPlayer | None,
        *,
        device_id: str,
        apply: CommandSink,
        sign: Signer | None,
        metrics: LedMetrics,
        now: Callable[[], datetime],
    ) -> None:
        self._player = player
        self._device_id = device_id
        self._apply = apply
        self._sign = sign
        self._metrics = metrics
        self._now = now

    def state(self) -> Response | tuple[Response, int]:
        """`GET /api/led`: the current `led_state`, in its wire form."""
        if self._player is None:
            return _error(NO_STRIP, 503)
        message = to_message(
            self._player.state(), device_id=self._device_id, now=self._now(), nonce=new_nonce()
        )
        if self._sign is not None:
            message = self._sign(message)
        response = Response(encode(message), mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"  # the page polls it every second
        return response

    def command(self) -> tuple[Response, int]:
        """`POST /api/led`: a `led` command, validated as the wire protocol says."""
        if self._player is None:
            self._metrics.rejected.labels(source="http", reason="no_strip").inc()
            return _error(NO_STRIP, 503)
        try:
            command = decode_as(request.get_data(cache=False), Led)
        except InvalidMessage as exc:
            self._metrics.rejected.labels(source="http", reason="invalid").inc()
            return _error(exc.reason, 400)
        return self._run(command)

    def switch(self) -> tuple[Response, int] | tuple[str, int, dict[str, str]]:
        """`GET /switch`: the seed's endpoint, a `switch` command (one rainbow pass)."""
        if self._player is None:
            self._metrics.rejected.labels(source="http", reason="no_strip").inc()
            return _error(NO_STRIP, 503)
        before = self._player.state().effect
        command = Led(id=f"switch-{uuid.uuid4().hex}", ts=self._now(), effect=Effect.SWITCH.value)
        response, status = self._run(command)
        if status != 202:
            return response, status
        # While a switch runs, the pass resumes what ran before it.
        resumed = before if before is not Effect.SWITCH else "the previous effect"
        body = _SWITCH_BODY.format(device=escape(self._device_id), effect=escape(resumed))
        return body, 200, {"Content-Type": "text/html; charset=utf-8"}

    def _run(self, command: Led) -> tuple[Response, int]:
        try:
            state = self._apply(command)
        except RuntimeError:  # the player closed under us: the agent is stopping
            return _error("the LED strip is shutting down", 503)
        self._metrics.count(state, source="http")
        if state is None:
            return _error(STALE, 400)
        return jsonify(accepted=command.id), 202


def _page(device_id: str) -> Response:
    """`GET /`: the LED page (inline CSS and JS, no external assets)."""
    options = "".join(f'<option value="{e}">{e}</option>' for e in EFFECTS)
    html = PAGE.replace("{{device_id}}", str(escape(device_id)))
    return Response(html.replace("{{effect_options}}", options), mimetype="text/html")


class _QuietRequests(WSGIRequestHandler):
    """Access lines at DEBUG: the page polls every second, which would flood INFO."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s -> %s (%s bytes)", self.requestline, code, size)


class WebServer:
    """Serves an app with werkzeug's threaded WSGI server from a daemon thread.

    Args:
        app: The WSGI app (from `create_app`).
        port: The TCP port; 0 picks a free one (see `port`).
        host: The address to bind; every interface by default, as the seed did, since
            the mesh reaches the Pi on its LAN address.
    """

    def __init__(
        self,
        app: Flask,
        *,
        port: int,
        host: str = "0.0.0.0",  # noqa: S104 - the mesh and the LAN reach the Pi from outside
    ) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port actually bound, once started."""
        return None if self._server is None else int(self._server.port)

    def start(self) -> None:
        """Binds the port and serves in the background.

        Raises:
            DeviceError: The port cannot be bound (in use, or not allowed).
        """
        # We bind the socket ourselves: werkzeug reports a failed bind by printing and
        # calling sys.exit, which an agent must not do from inside `start`.
        try:
            listener = socket.create_server((self._host, self._requested_port))
        except OSError as exc:
            reason = f"cannot serve HTTP on port {self._requested_port} (--http-port): {exc}"
            raise DeviceError(reason) from exc
        with listener:  # werkzeug serves a duplicate of the descriptor
            server = make_server(
                self._host,
                self._requested_port,
                self._app,
                threaded=True,
                request_handler=_QuietRequests,
                fd=listener.fileno(),
            )
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        self._thread.start()
        log.info("serving the LED page", extra={"port": self.port})

    def stop(self) -> None:
        """Stops serving and closes the socket (a no-op when not started)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._server, self._thread = None, None


# The LED page. Everything inline: a Pi on a LAN or behind the mesh may have no way out
# to a CDN. The preview redraws the effect the device reports (the effects' timings are
# device/leds/effects.py's); ids are made here, not with crypto.randomUUID, which browsers
# offer only on https pages.
