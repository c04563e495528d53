"""A simulated Pi of the sandbox (a real agent driving a simulated strip) and its snapshot.

`PiSnapshot` joins what the controller says of a Pi (its EdgeDevice) with what the
agent itself knows: the live view (`sandbox.view`) and `pimesh sandbox --headless`
show nothing else.
"""

from dataclasses import dataclass
from typing import Any

from device.agent import Agent
from device.leds import Color, SimulatedStrip


@dataclass(frozen=True)
class PiSnapshot:
    """One simulated Pi at one moment: the controller's view of it and its own."""

    device_id: str
    group: str
    phase: str | None
    """`status.phase` of its EdgeDevice (else the last enrollment it received)."""
    online: bool | None
    """`status.online` of its EdgeDevice (else whether the agent's MQTT link is up)."""
    generation: int
    """The bundle generation the controller published."""
    acked: int
    """The generation the device acknowledged (`status.ackedGeneration`)."""
    installed: int
    """The generation the agent has installed."""
    ztunnel: str
    effect: str
    color: Color
    command_id: str | None
    pixels: tuple[Color, ...]
    web_port: int | None

    @property
    def enrolled(self) -> bool:
        """Enrolled, with a bundle installed and acknowledged."""
        return self.phase == "Enrolled" and self.acked >= 1 and self.installed >= 1


class SimulatedPi:
    """One agent of the sandbox, with the simulated strip it drives."""

    def __init__(self, agent: Agent, strip: SimulatedStrip, *, group: str) -> None:
        self.agent = agent
        self.strip = strip
        self.group = group

    @property
    def device_id(self) -> str:
        """The device id (`pi-N`)."""
        return self.agent.device_id

    def snapshot(self, edge_device: dict[str, Any] | None) -> PiSnapshot:
        """What this Pi looks like now, given its EdgeDevice (None while there is none)."""
        status: dict[str, Any] = (edge_device or {}).get("status") or {}
        enrollment = self.agent.last_enrollment
        record = self.agent.bundles.record
        leds = self.agent.leds.state() if self.agent.leds is not None else None
        return PiSnapshot(
            device_id=self.device_id,
            group=self.group,
            phase=status.get("phase") or (enrollment.phase if enrollment else None),
            # The controller's view once it has one; until then, the agent's own link.
            online=status.get("online", self.agent.link.ready),
            generation=int(status.get("generation") or 0),
            acked=int(status.get("ackedGeneration") or 0),
            installed=record.generation if record else 0,
            ztunnel=self.agent.ztunnel.state,
            effect=str(leds.effect) if leds else "absent",
            color=leds.color if leds else Color(0, 0, 0),
            command_id=leds.command_id if leds else None,
            pixels=tuple(self.strip.current),
            web_port=self.agent.web_port,
        )
