"""The text of a Mosquitto 2.0 configuration for pimesh: config, ACL and password files.

Pure functions, no I/O, so that the local broker (`sandbox.broker`) and the Kubernetes
deployment of Mosquitto render the same rules.

The ACL follows PROTOCOL.md's topic table. Device rules are `pattern` lines keyed on the
MQTT username (`%u`), never the client id (`%c`): any client may pick any client id, so a
`%c` rule would let one device take another's topics. A device's username is its device
id; the built-in users are named with a leading underscore, which a DNS-1123 label can
never have, so no device can claim them. Mosquitto applies `pattern` lines to every user,
the built-in ones included; that only opens topics under `devices/_pimesh-.../`, which
no valid device id can name and every pimesh component rejects. The rules every device
shares (group and fleet commands, the controller's status) are patterns too, because a
`topic` line outside a `user` block applies to anonymous clients only; Mosquitto logs a
harmless warning for each pattern without `%u`.

Mosquitto checks ACLs on delivery, not on SUBSCRIBE (2.0's default check grants every
subscription), so a denied subscription is acknowledged but receives nothing; a denied
PUBLISH is dropped, answered with reason code 0x87 under MQTT 5 and silently under 3.1.1.
"""

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROLLER_USERNAME = "_pimesh-controller"
"""The controller's MQTT user: may read and write every topic."""

OPERATOR_USERNAME = "_pimesh-operator"
"""The operator's MQTT user (`pimesh led`, dashboards): LED commands and fleet state only."""

PBKDF2_ITERATIONS = 101
"""`mosquitto_passwd`'s default (PW_DEFAULT_ITERATIONS in Mosquitto 2.0)."""

_SALT_BYTES = 12  # Mosquitto rejects a `$7$` entry whose salt is not exactly 12 bytes.

# (access, topic below the prefix) for every device; %u is the device's username = id.
_DEVICE_RULES = (
    ("write", "devices/%u/announce"),
    ("write", "devices/%u/ack"),
    ("readwrite", "devices/%u/status"),  # its retained status and its last will
    ("read", "devices/%u/enrollment"),
    ("read", "devices/%u/bundle"),
    ("read", "devices/%u/led/set"),
    ("read", "groups/+/led/set"),
    ("read", "fleet/led/set"),
    ("read", "controller/status"),
    ("write", "devices/%u/led/state"),
)

_OPERATOR_RULES = (
    ("write", "devices/+/led/set"),
    ("write", "groups/+/led/set"),
    ("write", "fleet/led/set"),
    ("read", "devices/+/status"),
    ("read", "devices/+/led/state"),
    ("read", "controller/status"),
)


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it can stand in an ACL topic, else raise `ValueError`.

    A prefix may hold `+` levels (a test broker serves every `t/<id>` prefix with
    `+/+`), but no `#`, no `%` (Mosquitto would substitute it), no empty level and no
    whitespace (it would break the line-based ACL file).
    """
    levels = prefix.split("/")
    bad = (
        not prefix
        or any(not level for level in levels)
        or any(ch in prefix for ch in "#%$")
        or any(ch.isspace() for ch in prefix)
        or any("+" in level and level != "+" for level in levels)
    )
    if bad:
        raise ValueError(f"not a usable topic prefix for the broker ACL: {prefix!r}")
    return prefix


def check_username(username: str) -> str:
    """Return `username` if Mosquitto's password and ACL files can hold it, else raise."""
    if not username or any(ch in username for ch in ":+#/") or any(ch.isspace() for ch in username):
        raise ValueError(f"not a usable MQTT username: {username!r}")
    return username


def render_acl(
    prefix: str,
    *,
    controller_username: str = CONTROLLER_USERNAME,
    operator_username: str = OPERATOR_USERNAME,
) -> str:
    """Render the ACL file for topic prefix `prefix` (a concrete prefix or a `+` pattern)."""
    p = check_prefix(prefix)
    lines = ["# pimesh broker ACL (PROTOCOL.md topic table); device rules keyed on %u.", ""]
    lines += [f"pattern {access} {p}/{topic}" for access, topic in _DEVICE_RULES]
    lines += ["", f"user {check_username(controller_username)}", "topic readwrite #"]
    lines += ["", f"user {check_username(operator_username)}"]
    lines += [f"topic {access} {p}/{topic}" for access, topic in _OPERATOR_RULES]
    return "\n".join(lines) + "\n"


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Hash `password` as Mosquitto 2.0's `$7$` entry: PBKDF2-HMAC-SHA512, 12-byte salt.

    The format is `$7$<iterations>$<base64 salt>$<base64 64-byte digest>`, what
    `mosquitto_passwd` writes (and what `pw__digest` in Mosquitto's
    `security_default.c` checks).
    """
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"Mosquitto needs a {_SALT_BYTES}-byte salt")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def render_password_file(users: Mapping[str, str], *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Render a password file from username -> clear-text password (hashed here)."""
    lines = [
        f"{check_username(name)}:{hash_password(pw, iterations=iterations)}"
        for name, pw in sorted(users.items())
    ]
    return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS listener, as paths the broker will read."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class BrokerConfig:
    """Everything `render_config` needs; `None` leaves a listener or feature out."""

    password_file: Path
    acl_file: Path
    bind_address: str | None = None
    port: int | None = 1883
    tls_port: int | None = None
    mtls_port: int | None = None
    tls: TlsFiles | None = None
    log_file: Path | None = None
    persistence_dir: Path | None = None
    run_as_user: str | None = None


def _path(path: Path) -> str:
    # Mosquitto splits option lines on whitespace: a path with a space would be cut.
    text = str(path)
    if any(ch.isspace() for ch in text):
        raise ValueError(f"Mosquitto cannot read a path with whitespace: {text!r}")
    return text


def _listener(port: int, bind_address: str | None) -> list[str]:
    return ["", f"listener {port} {bind_address}" if bind_address else f"listener {port}"]


def _tls_lines(tls: TlsFiles) -> list[str]:
    return [
        f"cafile {_path(tls.ca_file)}",
        f"certfile {_path(tls.cert_file)}",
        f"keyfile {_path(tls.key_file)}",
    ]


def _listener_lines(cfg: BrokerConfig) -> list[str]:
    lines: list[str] = []
    if cfg.port is not None:
        lines += _listener(cfg.port, cfg.bind_address)
    if (cfg.tls_port is not None or cfg.mtls_port is not None) and cfg.tls is None:
        raise ValueError("a TLS listener needs TLS files")
    if cfg.tls is not None and cfg.tls_port is not None:
        lines += _listener(cfg.tls_port, cfg.bind_address) + _tls_lines(cfg.tls)
    if cfg.tls is not None and cfg.mtls_port is not None:
        # The certificate's common name becomes the username, so the same %u ACL
        # patterns hold for a device that authenticates with its certificate.
        lines += _listener(cfg.mtls_port, cfg.bind_address) + _tls_lines(cfg.tls)
        lines += ["require_certificate true", "use_identity_as_username true"]
    return lines


def render_config(cfg: BrokerConfig) -> str:
    """Render `mosquitto.conf` for Mosquitto 2.0 from `cfg`."""
    lines = ["# pimesh broker configuration (generated)."]
    if cfg.run_as_user is not None:
        # Run as root, Mosquitto drops to this user right after reading this file, before
        # it opens the log, the database, the password/ACL files or the TLS key.
        lines.append(f"user {cfg.run_as_user}")
    lines += [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {_path(cfg.password_file)}",
        f"acl_file {_path(cfg.acl_file)}",
    ]
    if cfg.log_file is not None:
        lines += [f"log_dest file {_path(cfg.log_file)}", "log_timestamp_format %Y-%m-%dT%H:%M:%S"]
    else:
        lines.append("log_dest stdout")
    # A controller's session takes every device's QoS 1 messages; Mosquitto's default
    # queue of 1,000 per client drops announces when a site's fleet boots at once
    # (measured: 30 % of a 1,000-device boot storm). Raise it and bound it by memory.
    # Not 0 ("unlimited"): Mosquitto 2.0.11 then drops a client's connection right after
    # refusing one of its QoS 1 publishes with 0x87 (eclipse/mosquitto#2879).
    lines += [
        "max_queued_messages 200000",
        "max_queued_bytes 268435456",
        "max_inflight_messages 100",
    ]
    if cfg.persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {_path(cfg.persistence_dir)}/"]
    else:
        lines.append("persistence false")
    lines += _listener_lines(cfg)
    return "\n".join(lines) + "\n"
