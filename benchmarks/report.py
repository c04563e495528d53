"""Write a benchmark's JSON report where its `--out` says, and say so."""

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def save(report: dict[str, Any], out: Path, console: Console) -> None:
    """Write `report` as indented JSON to `out` (making its folder) and print the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")
