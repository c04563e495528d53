"""The agent's Prometheus metrics, written as text without prometheus_client.

An agent exposes a handful of series (commands counted by source and reason, the strip's
state as gauges) and has a memory budget of 60 MB on a Pi, which it reaches with its LED
page (benchmarks/README.md, agent_footprint); prometheus_client costs about 1 MB of it.
The text exposition format (version 0.0.4) is small and stable, so the agent writes it
itself: `# HELP` and `# TYPE` lines, then one sample per label set, labels sorted by name,
values as Python floats (as prometheus_client writes them). The controller, which has no
such budget, keeps prometheus_client.
"""

import threading
from collections.abc import Callable, Iterator, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelSet = tuple[tuple[str, str], ...]
"""Label names and values, sorted by name."""


class CounterChild:
    """One label set of a counter."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (a counter only goes up)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self.value += amount


class Counter:
    """A counter with labels; exposed as NAME_total."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = labelnames
        self._lock = threading.Lock()
        self._children: dict[LabelSet, CounterChild] = {}

    def labels(self, **values: str) -> CounterChild:
        """The child of that label set, created at 0 on first use."""
        if set(values) != set(self._labelnames):
            msg = f"{self.name} takes the labels {', '.join(self._labelnames)}"
            raise ValueError(msg)
        key = tuple(sorted(values.items()))
        with self._lock:
            return self._children.setdefault(key, CounterChild(self._lock))

    def lines(self) -> Iterator[str]:
        """The exposition lines."""
        # As prometheus_client writes it: the text format names a counter's family after
        # its sample, NAME_total.
        yield from _header(f"{self.name}_total", self.documentation, "counter")
        with self._lock:
            samples = [(key, child.value) for key, child in self._children.items()]
        for key, value in sorted(samples):
            yield _sample(f"{self.name}_total", dict(key), value)


class Gauge:
    """A gauge whose label sets are read from functions at scrape time."""

    def __init__(
        self, name: str, documentation: str, read: Mapping[LabelSet, Callable[[], float]]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._read = dict(read)

    def lines(self) -> Iterator[str]:
        """The exposition lines."""
        yield from _header(self.name, self.documentation, "gauge")
        for key, read in sorted(self._read.items()):
            yield _sample(self.name, dict(key), float(read()))


def render(metrics: list[Counter | Gauge]) -> bytes:
    """The text exposition of `metrics`, in order."""
    return "".join(line + "\n" for metric in metrics for line in metric.lines()).encode()


def _header(name: str, documentation: str, kind: str) -> Iterator[str]:
    text = documentation.replace("\\", "\\\\").replace("\n", "\\n")
    yield f"# HELP {name} {text}"
    yield f"# TYPE {name} {kind}"


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {value!r}"
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{pairs}}} {value!r}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
