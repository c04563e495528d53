import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.metrics import Counter, Gauge, render


def families(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text.decode())
    }


def test_prometheus_reads_what_the_agent_writes() -> None:
    commands = Counter("pimesh_led_commands", "LED commands applied, by source.", ("source",))
    odd = 'a "quoted" \\ value\nover two lines'
    commands.labels(source="mqtt").inc()
    commands.labels(source="mqtt").inc(2)
    commands.labels(source=odd).inc()
    level = Gauge("pimesh_led_brightness", "Current brightness,\nmultiline help.", {(): lambda: 7})
    parsed = families(render([commands, level]))
    assert parsed["pimesh_led_commands"] == [
        ("pimesh_led_commands_total", {"source": odd}, 1.0),
        ("pimesh_led_commands_total", {"source": "mqtt"}, 3.0),
    ]
    assert parsed["pimesh_led_brightness"] == [("pimesh_led_brightness", {}, 7.0)]


def test_labels_are_sorted_and_values_written_as_floats() -> None:
    rejected = Counter("x", "help", ("source", "reason"))
    rejected.labels(source="http", reason="stale").inc()
    assert b'x_total{reason="stale",source="http"} 1.0\n' in render([rejected])


def test_a_counter_refuses_other_labels_and_going_down() -> None:
    counter = Counter("x", "help", ("source",))
    with pytest.raises(ValueError, match="takes the labels source"):
        counter.labels(reason="stale")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels(source="http").inc(-1)


def test_gauges_are_read_at_scrape_time() -> None:
    value = [1.0]
    gauge = Gauge("g", "help", {(("effect", "solid"),): lambda: value[0]})
    assert b'g{effect="solid"} 1.0\n' in render([gauge])
    value[0] = 0.0
    assert b'g{effect="solid"} 0.0\n' in render([gauge])
