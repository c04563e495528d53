"""Close what a stopped paho client still holds, at once rather than at garbage collection.

paho keeps a loopback socket pair for waking its loop and closes it only in
`Client.__del__`. A client in a reference cycle (a device whose callbacks are its own
bound methods) is freed by the cyclic collector, which may finalise the sockets before
the client, so they warn "unclosed socket", an error under `filterwarnings = error`.
Tests that make hundreds of clients close them deterministically with `release`.
"""

import paho.mqtt.client as mqtt


def release(client: mqtt.Client) -> None:
    """Close the network socket and the wake-up socket pair of a stopped `client`."""
    client._reset_sockets()  # the only public way is __del__
