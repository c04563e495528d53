"""The `pimesh devices` table: the fleet at a glance, from the EdgeDevice objects.

One row per device, sorted by id: phase (coloured), online, mesh address, app, groups,
bundle generation and the generation the device acknowledged, token expiry and last
seen as times relative to now ("in 34m", "expired 3m ago", "12s ago"), which is what an
operator needs to spot a device whose token is about to lapse (PROTOCOL.md: an expired
token is fatal to ztunnel). Pure rendering: the objects and the clock come in.
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError
from rich.table import Table
from rich.text import Text

from cli.cluster import ClusterAccess
from controller.device import EdgeDevice

PHASE_STYLES = {
    "Pending": "yellow",
    "Approved": "cyan",
    "Enrolled": "green",
    "Rejected": "bold red",
    "Revoked": "magenta",
}
TOKEN_WARNING_S = 600  # a token this close to expiry should have been rotated already
COLUMNS = ("ID", "PHASE", "ONLINE", "ADDRESS", "APP", "GROUPS", "GEN/ACKED", "TOKEN", "LAST SEEN")
MISSING = "-"
MINUTE, HOUR, DAY = 60, 3600, 86400


def span(seconds: float) -> str:
    """A short human duration: `45s`, `34m`, `1h05m`, `3d4h` (rounded down)."""
    whole = int(abs(seconds))
    if whole < MINUTE:
        return f"{whole}s"
    if whole < HOUR:
        return f"{whole // MINUTE}m"
    if whole < DAY:
        hours, minutes = divmod(whole // MINUTE, 60)
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(whole // HOUR, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def relative(moment: datetime, *, now: datetime) -> str:
    """`in 34m` for the future, `3m ago` for the past, `now` within a second."""
    delta = (moment - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def token_cell(expires: datetime | None, *, now: datetime) -> Text:
    """Token expiry: red once expired, yellow when it is close."""
    if expires is None:
        return Text(MISSING, style="dim")
    left = (expires - now).total_seconds()
    if left <= 0:
        return Text(f"expired {span(left)} ago", style="bold red")
    return Text(f"in {span(left)}", style="yellow" if left < TOKEN_WARNING_S else "")


def _generation_cell(device: EdgeDevice) -> Text:
    status = device.status
    if status.generation == 0:
        return Text(MISSING, style="dim")
    behind = status.acked_generation < status.generation
    return Text(f"{status.generation}/{status.acked_generation}", style="yellow" if behind else "")


def _row(device: EdgeDevice, *, now: datetime) -> list[Text | str]:
    status, spec = device.status, device.spec
    phase = status.phase or "(new)"
    last_seen = relative(status.last_seen, now=now) if status.last_seen else MISSING
    return [
        Text(device.name, style="bold"),
        Text(phase, style=PHASE_STYLES.get(phase, "dim")),
        Text("yes", style="green") if status.online else Text("no", style="dim"),
        status.addresses[0] if status.addresses else MISSING,
        spec.app or MISSING,
        ",".join(spec.groups) or MISSING,
        _generation_cell(device),
        token_cell(status.token_expires_at, now=now),
        last_seen,
    ]


def _unreadable_row(obj: dict[str, Any]) -> list[Text | str]:
    name = str(obj.get("metadata", {}).get("name", "?"))
    return [Text(name, style="bold"), Text("unreadable", style="bold red")] + [MISSING] * 7


def device_table(objects: Iterable[dict[str, Any]], *, now: datetime, namespace: str) -> Table:
    """The table of EdgeDevice objects (as the API returned them), in the order given."""
    table = Table(title=f"EdgeDevices in {namespace}", title_justify="left", header_style="bold")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in {"ID", "ADDRESS"})
    for obj in objects:
        try:
            table.add_row(*_row(EdgeDevice.from_api(obj), now=now))
        except (ValidationError, KeyError):
            # One malformed object (edited by hand?) must not hide the rest of the fleet.
            table.add_row(*_unreadable_row(obj))
    return table


class DevicesView(ClusterAccess):
    """`pimesh devices` flags: where the fleet is, and how to print it."""

    output: Literal["table", "json"] = Field(
        default="table", description="table (for people) or json (the API objects)."
    )
