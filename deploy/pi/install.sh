#!/bin/sh
# Install the pimesh agent on a Raspberry Pi without the .deb; run as root from a checkout:
#   python3 -m pip wheel --no-deps -w dist .       # on any machine, from the repository
#   sudo deploy/pi/install.sh dist/pimesh-0.1.0-py3-none-any.whl
# It puts the same files where the .deb does (build-deb.sh), then runs the same setup:
# the istio-proxy user, /opt/pimesh/venv, the systemd unit enabled. An existing
# /etc/pimesh/agent.env is kept; a new one is the documented example, to be edited.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 path/to/pimesh-VERSION-py3-none-any.whl" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo)" >&2
    exit 1
fi
wheel=$1

install -d -m 0755 /usr/share/pimesh-agent /usr/lib/pimesh-agent
rm -f /usr/share/pimesh-agent/pimesh-*.whl
install -m 0644 "$wheel" /usr/share/pimesh-agent/
install -m 0644 "$here/pimesh-agent-backoff.conf" /usr/share/pimesh-agent/backoff.conf
install -m 0755 "$here/setup.sh" /usr/lib/pimesh-agent/setup
install -m 0644 "$here/pimesh-agent.service" /lib/systemd/system/pimesh-agent.service
install -m 0644 "$here/pimesh-agent.tmpfiles" /usr/lib/tmpfiles.d/pimesh-agent.conf
install -d -m 0755 /etc/pimesh
if [ ! -e /etc/pimesh/agent.env ]; then
    install -m 0600 "$here/agent.env" /etc/pimesh/agent.env
fi

exec /usr/lib/pimesh-agent/setup "/usr/share/pimesh-agent/$(basename "$wheel")"
