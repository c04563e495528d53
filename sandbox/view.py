"""What `pimesh sandbox` shows: the fleet as a live table, or as plain progress lines.

Pure rendering from `PiSnapshot`s (`sandbox.pis`): the live view redraws `dashboard`
about four times a second (rich `Live`), headless mode feeds every snapshot to
`ProgressLines`, which says one line per change ("pi-1 Enrolled generation 1"), and
prints `fleet_table` once at the end. `instructions` is the text that tells an operator
how to drive the sandbox from a second terminal.
"""

import shlex
from collections.abc import Callable, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from device.leds import Color
from sandbox.pis import PiSnapshot
from sandbox.run import SandboxInfo, pimesh_bin

PHASE_STYLES = {
    "Pending": "yellow",
    "Approved": "cyan",
    "Enrolled": "green",
    "Rejected": "bold red",
    "Revoked": "magenta",
}
ZTUNNEL_STYLES = {"running": "green", "failed": "bold red", "stopped": "yellow"}
STRIP_CELLS = 20
MISSING = "-"
_PIXEL = "█"
_DARK_PIXEL = "·"  # an unlit pixel drawn black would vanish on a dark terminal


def hex_color(color: Color) -> str:
    """`#rrggbb`, as the protocol writes colours."""
    return f"#{color.r:02x}{color.g:02x}{color.b:02x}"


def strip_cells(pixels: Sequence[Color], *, cells: int = STRIP_CELLS) -> Text:
    """The strip sampled down to `cells` coloured blocks (every len/cells-th pixel)."""
    text = Text()
    if not pixels:
        return text
    for cell in range(cells):
        pixel = pixels[cell * len(pixels) // cells]
        if pixel == Color(0, 0, 0):
            text.append(_DARK_PIXEL, style="grey30")
        else:
            text.append(_PIXEL, style=f"rgb({pixel.r},{pixel.g},{pixel.b})")
    return text


def _phase(snapshot: PiSnapshot) -> Text:
    if snapshot.phase is None:
        return Text("waiting", style="dim")
    return Text(snapshot.phase, style=PHASE_STYLES.get(snapshot.phase, ""))


def _online(online: bool | None) -> Text:
    if online is None:
        return Text(MISSING, style="dim")
    return Text("yes", style="green") if online else Text("no", style="red")


def _generation(snapshot: PiSnapshot) -> Text:
    style = "" if snapshot.acked == snapshot.generation else "yellow"
    return Text(f"{snapshot.generation}/{snapshot.acked}", style=style)


def _led(snapshot: PiSnapshot) -> Text:
    text = Text(snapshot.effect)
    if snapshot.effect not in {"off", "absent"}:
        text.append(f" {hex_color(snapshot.color)}", style="dim")
    return text


def fleet_table(snapshots: Sequence[PiSnapshot], *, title: str | None = None) -> Table:
    """One row per Pi: phase, online, generation/acked, ztunnel, LED command and strip."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("DEVICE", no_wrap=True)
    table.add_column("GROUP", no_wrap=True)
    table.add_column("PHASE", no_wrap=True)
    table.add_column("ONLINE", no_wrap=True)
    table.add_column("GEN/ACKED", no_wrap=True, justify="right")
    table.add_column("ZTUNNEL", no_wrap=True)
    table.add_column("LED", no_wrap=True)
    table.add_column("LAST COMMAND", no_wrap=True)
    table.add_column("STRIP", no_wrap=True)
    table.add_column("HTTP", no_wrap=True, justify="right")
    for snap in snapshots:
        table.add_row(
            snap.device_id,
            snap.group,
            _phase(snap),
            _online(snap.online),
            _generation(snap),
            Text(snap.ztunnel, style=ZTUNNEL_STYLES.get(snap.ztunnel, "dim")),
            _led(snap),
            Text(snap.command_id or MISSING, style="" if snap.command_id else "dim"),
            strip_cells(snap.pixels),
            str(snap.web_port) if snap.web_port else MISSING,
        )
    return table


def header(info: SandboxInfo, *, remaining_s: float | None) -> Text:
    """Where the parts run, and how long the sandbox still runs."""
    text = Text()
    text.append("pimesh sandbox", style="bold")
    text.append(f"  broker {info.broker_url}  prefix {info.topic_prefix}")
    text.append(f"  API {info.api_url}\n")
    text.append(f"kubeconfig {info.kubeconfig}  namespace {info.namespace}")
    text.append(f"  metrics http://127.0.0.1:{info.metrics_port}/metrics\n")
    ending = "Ctrl-C stops it" if remaining_s is None else f"stops in {remaining_s:.0f} s"
    text.append(f"{ending}; every process it started goes with it", style="dim")
    return text


def dashboard(
    info: SandboxInfo, snapshots: Sequence[PiSnapshot], *, remaining_s: float | None
) -> RenderableType:
    """The live view: the header above the fleet table."""
    return Group(header(info, remaining_s=remaining_s), fleet_table(snapshots))


def instructions(info: SandboxInfo, *, manual_approve: bool, log_file: str) -> Text:
    """What to type in a second terminal: with `env.sh`, and with every flag spelled out."""
    pimesh = pimesh_bin()  # spelled out in full: no env.sh, so perhaps not on PATH either
    second = info.device_ids[1] if len(info.device_ids) > 1 else info.device_ids[0]
    first = info.device_ids[0]
    commands = [
        "devices",
        "led all rainbow",
        "led group:g1 solid --color '#ff0000'",
        *([f"approve {first}"] if manual_approve else []),
        "rotate --all",
        f"revoke {second}",
    ]
    text = Text()
    text.append(f"work directory {info.workdir}\nlog            {log_file}\n\n")
    text.append("In a second terminal:\n", style="bold")
    text.append(f"  source {shlex.quote(str(info.env_file))}\n")
    for command in commands:
        text.append(f"  pimesh {command}\n")  # env.sh puts pimesh's directory on PATH
    text.append("  curl http://127.0.0.1:PORT/switch")
    text.append("   (PORT: a Pi's HTTP column)\n\n", style="dim")
    text.append("Or, without env.sh:\n", style="bold")
    cluster = f"--kubeconfig {shlex.quote(str(info.kubeconfig))} --namespace {info.namespace}"
    password = f'"$(cat {shlex.quote(str(info.password_file))})"'
    mqtt = (
        f"--broker {info.broker_url} --username {info.operator_username} "
        f"--password {password} --topic-prefix {info.topic_prefix}"
    )
    if info.mqtt_version != "5":
        mqtt += f" --mqtt-version {info.mqtt_version}"
    spelled = [f"devices {cluster}", f"led all rainbow {mqtt}"]
    if manual_approve:
        spelled.append(f"approve {first} {cluster}")
    spelled += [f"rotate --all {cluster}", f"revoke {second} {cluster}"]
    for command in spelled:
        text.append(f"  {pimesh} {command}\n")
    return text


Emit = Callable[[str], None]


class ProgressLines:
    """Headless progress: one line for each change a Pi goes through.

    Lines: `pi-1 Pending generation 0`, `pi-1 Enrolled generation 1` (phase or installed
    generation changed), `pi-1 online` / `offline`, `pi-1 ztunnel running`, and
    `pi-1 led solid #00ff00 command <id>` when a new LED command is applied.
    """

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._seen: dict[str, PiSnapshot] = {}
        self._enrolled: set[str] = set()

    @property
    def enrolled(self) -> frozenset[str]:
        """The Pis seen enrolled at least once (an operator may revoke one afterwards)."""
        return frozenset(self._enrolled)

    def update(self, snapshots: Sequence[PiSnapshot]) -> None:
        """Emit the lines for what changed since the previous snapshots."""
        for snap in snapshots:
            before = self._seen.get(snap.device_id)
            self._seen[snap.device_id] = snap
            if snap.enrolled:
                self._enrolled.add(snap.device_id)
            for line in _changes(before, snap):
                self._emit(line)


def _changes(before: PiSnapshot | None, now: PiSnapshot) -> list[str]:
    name = now.device_id
    lines = []
    if now.phase is not None and (
        before is None or (before.phase, before.installed) != (now.phase, now.installed)
    ):
        lines.append(f"{name} {now.phase} generation {now.installed}")
    if now.online is not None and (before is None or before.online != now.online):
        lines.append(f"{name} {'online' if now.online else 'offline'}")
    if now.ztunnel != (before.ztunnel if before else "stopped"):
        lines.append(f"{name} ztunnel {now.ztunnel}")
    if now.command_id is not None and (before is None or before.command_id != now.command_id):
        lines.append(f"{name} led {now.effect} {hex_color(now.color)} command {now.command_id}")
    return lines
