import pytest

from device.errors import DeviceError
from device.leds.driver import BLACK, Color, LedHardwareError, fill
from shared.errors import PimeshError


def test_color_round_trips_hex() -> None:
    color = Color.from_hex("#FF8001")
    assert color == Color(255, 128, 1)
    assert color.to_hex() == "#ff8001"


@pytest.mark.parametrize("text", ["ff8001", "#ff800", "#ff80011", "#gg0000", " #ff8001"])
def test_color_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="#rrggbb"):
        Color.from_hex(text)


@pytest.mark.parametrize("channels", [(256, 0, 0), (0, -1, 0), (0, 0, 1000)])
def test_color_rejects_out_of_range_channels(channels: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="outside 0-255"):
        Color(*channels)


def test_fill_makes_a_uniform_frame() -> None:
    assert fill(3, BLACK) == (BLACK, BLACK, BLACK)


def test_hardware_error_is_a_device_error_with_a_reason() -> None:
    error = LedHardwareError("no strip")
    assert isinstance(error, DeviceError)
    assert isinstance(error, PimeshError)
    assert error.reason == "no strip"
