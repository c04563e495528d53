"""Errors raised by the agent on the Pi.

    PimeshError                 (shared.errors)
    └── DeviceError             something the agent could not do on this device
        └── InstallError        a bundle's files could not be written or removed

Other device failures (settings, ztunnel supervision, the LED hardware) get their own
subclasses of `DeviceError` next to `InstallError`, so the agent can catch them as one.
Every `reason` names paths and system errors only, never file contents: a bundle carries
a token that must not reach a log or an ack's `detail`.
"""

from shared.errors import PimeshError


class DeviceError(PimeshError):
    """Base of every error the agent raises on purpose."""


class InstallError(DeviceError):
    """A bundle part could not be installed or removed; `reason` names the path."""
