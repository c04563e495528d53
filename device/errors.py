"""Errors raised by the agent on the Pi.

    PimeshError                 (shared.errors)
    └── DeviceError             something the agent could not do on this device
        ├── InstallError        a bundle's files could not be written or removed
        ├── ZtunnelError        the ztunnel supervisor was used after it was closed
        └── LedHardwareError    the LED strip failed (device.leds.driver)

Every `reason` names paths and system errors only, never file contents: a bundle carries
a token that must not reach a log or an ack's `detail`.
"""

from shared.errors import PimeshError


class DeviceError(PimeshError):
    """Base of every error the agent raises on purpose."""


class InstallError(DeviceError):
    """A bundle part could not be installed or removed; `reason` names the path."""


class ZtunnelError(DeviceError):
    """The ztunnel supervisor was used after `close()`; `reason` says what was asked."""
