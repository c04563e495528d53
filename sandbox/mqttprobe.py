"""A hand-built MQTT 3.1.1 CONNECT that tells whether a broker takes a login.

`sandbox.broker` waits with it until Mosquitto authenticates (readiness means "accepts
this user", not just "the port is open") and until a reload has taken new passwords.
It keeps paho, whose network thread and reconnect logic are unneeded here, out of the
sandbox. MQTT 3.1.1 because every broker speaks it; sections 3.1 (CONNECT), 3.2
(CONNACK) and 3.14 (DISCONNECT) of the OASIS standard.
"""

import secrets
import socket


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_probe(
    host: str, port: int, *, username: str, password: str, timeout_s: float = 2.0
) -> int:
    """Log in once and return the CONNACK return code (0 = accepted, 4/5 = refused).

    Disconnects cleanly after a success. Raises `OSError` when no CONNACK comes
    (connection refused, reset, timed out or closed early).
    """
    client_id = f"pimesh-probe-{secrets.token_hex(6)}"
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = _utf8("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    body += _utf8(client_id) + _utf8(username) + _utf8(password)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError("broker closed the connection before CONNACK")
            connack += chunk
        if connack[0] != 0x20 or connack[1] != 2:
            raise ConnectionError("broker answered CONNECT with something other than CONNACK")
        if connack[3] == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so no will and a quiet log
        return connack[3]
