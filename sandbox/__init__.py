"""Local stand-ins for the cluster side: a Mosquitto launcher and a Kubernetes API emulator.

Used by `pimesh sandbox` (everything on one machine) and by the test suite, so the
product's local mode and its tests run against the same real parts.
"""
