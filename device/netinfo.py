"""What the agent can learn about its host: addresses, boot id, OS and architecture.

The first announced address is the device's mesh address (PROTOCOL.md), so it is the
address this host uses to reach the broker: the broker runs beside the cluster, and the
route to it is the route to the mesh. Finding it needs no packet: connecting a UDP
socket only picks the route.
"""

import ipaddress
import platform
import socket
import uuid
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
OS_RELEASE = Path("/etc/os-release")


def detect_addresses(broker_host: str, broker_port: int) -> list[str]:
    """This host's address on the route to the broker (loopback if that is all there is)."""
    family = socket.AF_INET6 if ":" in broker_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((broker_host, broker_port))
            address = str(probe.getsockname()[0])
    except OSError:
        return ["127.0.0.1"]
    return [str(ipaddress.ip_address(address.split("%")[0]))]


def boot_id() -> str:
    """The kernel's id of this boot, or a random one where there is none."""
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()[:64] or uuid.uuid4().hex
    except OSError:
        return uuid.uuid4().hex


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release, e.g. "Debian GNU/Linux 12 (bookworm)"."""
    try:
        for line in OS_RELEASE.read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')[:128]
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"[:128]


def arch() -> str:
    """The machine architecture, e.g. aarch64."""
    return platform.machine()[:128] or "unknown"
