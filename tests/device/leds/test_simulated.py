import threading

import pytest

from device.leds.driver import BLACK, Color, Frame, LedHardwareError, fill
from device.leds.simulated import SimulatedStrip

pytestmark = pytest.mark.timeout(30)

RED = Color(255, 0, 0)
BLUE = Color(0, 0, 255)


def test_starts_black_and_records_what_it_shows() -> None:
    strip = SimulatedStrip(3)
    assert strip.count == 3
    assert strip.current == fill(3, BLACK)
    strip.show(fill(3, RED))
    strip.show(fill(3, BLUE))
    assert strip.current == fill(3, BLUE)
    assert strip.history == (fill(3, RED), fill(3, BLUE))
    assert strip.shown == 2


def test_history_is_bounded() -> None:
    strip = SimulatedStrip(1, history=2)
    for value in range(5):
        strip.show((Color(value, 0, 0),))
    assert strip.history == ((Color(3, 0, 0),), (Color(4, 0, 0),))
    assert strip.shown == 5


def test_rejects_frames_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 pixels for a strip of 3"):
        SimulatedStrip(3).show(fill(2, RED))


def test_show_after_close_is_a_hardware_error() -> None:
    strip = SimulatedStrip(1)
    strip.close()
    assert strip.closed
    with pytest.raises(LedHardwareError, match="closed"):
        strip.show((RED,))


def test_wait_for_finds_a_frame_already_replaced_when_the_waiter_wakes() -> None:
    strip = SimulatedStrip(2)
    waiting = threading.Event()

    def is_red(frame: Frame) -> bool:
        waiting.set()  # first called with the strip's lock held, just before it waits
        return frame[0] == RED

    def show_red_then_blue() -> None:
        waiting.wait(5)
        strip.show(fill(2, RED))
        strip.show(fill(2, BLUE))

    shower = threading.Thread(target=show_red_then_blue)
    shower.start()
    assert strip.wait_for(is_red, timeout=5) == fill(2, RED)
    shower.join()


def test_wait_for_returns_the_current_frame_if_it_matches() -> None:
    strip = SimulatedStrip(2)
    assert strip.wait_for(lambda frame: frame[0] == BLACK, timeout=0) == fill(2, BLACK)


def test_wait_for_times_out() -> None:
    strip = SimulatedStrip(2)
    with pytest.raises(TimeoutError):
        strip.wait_for(lambda frame: frame[0] == RED, timeout=0.05)
