"""A bounded churn soak: light devices drop off and come back for a while, then settle.

`PIMESH_SOAK_SECONDS` (default 20) sets how long the churn runs. Devices vanish without
a DISCONNECT (the broker publishes their last will) and come back as a new connection
with the same keys, saying online and re-announcing, as a rebooted Pi does. Afterwards
the controller must have drained its work, agree with every device's last word, and
not have grown. No timing is asserted beyond generous bounds on settling.
"""

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.run import Controller
from sandbox.broker import Mosquitto
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import list_custom, wait_until
from tests.support.cleanup import release
from tests.support.thirdparty import ThirdPartyDevice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DEVICES = 12
RSS_GROWTH_LIMIT_KB = 50 * 1024


def soak_seconds() -> float:
    return float(os.environ.get("PIMESH_SOAK_SECONDS", "20"))


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


class Churner:
    """Each device id with its keys; `up` connects a fresh client, `down` vanishes."""

    def __init__(self, broker: Mosquitto, prefix: str, count: int) -> None:
        self.broker, self.prefix = broker, prefix
        ids = [f"pi-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
        self.passwords = broker.add_users(ids)
        self.live: dict[str, ThirdPartyDevice | None] = dict.fromkeys(ids)
        self.keys: dict[str, tuple[Any, Any]] = {}

    def up(self, device_id: str) -> ThirdPartyDevice:
        info = self.broker.info
        dev = ThirdPartyDevice(
            device_id,
            host=info.host,
            port=info.port,
            password=self.passwords[device_id],
            prefix=self.prefix,
        )
        if device_id in self.keys:
            dev.sign_key, dev.kx_key = self.keys[device_id]
        else:
            self.keys[device_id] = (dev.sign_key, dev.kx_key)
        dev.online()
        dev.announce()
        self.live[device_id] = dev
        return dev

    def down(self, device_id: str) -> None:
        dev = self.live[device_id]
        if dev is not None:
            dev.kill()
            release(dev.client)
            self.live[device_id] = None

    def close(self) -> None:
        for dev in self.live.values():
            if dev is not None:
                dev.close()
                release(dev.client)


def online_flags(mesh: Mesh) -> dict[str, bool]:
    return {
        o["metadata"]["name"]: bool(o.get("status", {}).get("online"))
        for o in list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")
    }


def drained(ctl: Controller) -> bool:
    # Enrolled devices keep one delayed re-check each (the token's half-life), so
    # "drained" is: nothing ready, nothing filed, at most that one key per device.
    return len(ctl.queue) == 0 and len(ctl.inbox) == 0 and ctl.queue.pending() <= DEVICES


def test_churn_settles_drains_and_does_not_grow(
    controller_factory: ControllerFactory, broker: Mosquitto, prefix: str, mesh: Mesh
) -> None:
    ctl = controller_factory(auto_approve=["pi-*"])
    churn = Churner(broker, prefix, DEVICES)
    rng = random.Random(7)
    try:
        for device_id in churn.live:
            churn.up(device_id).wait_phase("Enrolled")
        rss_before = rss_kb()
        actions = 0
        deadline = time.monotonic() + soak_seconds()
        while time.monotonic() < deadline:
            device_id = rng.choice(sorted(churn.live))
            if churn.live[device_id] is None:
                churn.up(device_id)
            else:
                churn.down(device_id)
            actions += 1
            time.sleep(0.02)
        assert actions >= DEVICES, "the soak did not churn"
        # Settle on a known final state: every other device online.
        expected = {}
        for index, device_id in enumerate(sorted(churn.live)):
            want = index % 2 == 0
            if want and churn.live[device_id] is None:
                churn.up(device_id)
            elif not want:
                churn.down(device_id)
            expected[device_id] = want

        wait_until(lambda: online_flags(mesh) == expected, timeout=60, what="online flags")
        wait_until(lambda: drained(ctl), timeout=30, what="the queue drained")
        assert ctl.alive()
        growth = rss_kb() - rss_before
        assert growth < RSS_GROWTH_LIMIT_KB, f"RSS grew by {growth} kB over the soak"
        phases = {
            o["status"]["phase"] for o in list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")
        }
        assert phases == {"Enrolled"}
    finally:
        churn.close()
