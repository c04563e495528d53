#!/bin/sh
# Prepare a Raspberry Pi for the pimesh agent, idempotently; run as root. The .deb's
# postinst runs it as /usr/lib/pimesh-agent/setup, install.sh after copying the files
# into the same places. Usage: setup [WHEEL]  (default: the wheel in /usr/share/pimesh-agent)
#
# 1. the istio-proxy user ztunnel runs as, made the way the seed makes it;
# 2. a virtual environment in /opt/pimesh/venv with pimesh installed from the wheel
#    (its dependencies come from the package index: PyPI, or piwheels on Raspberry Pi OS);
# 3. systemd: /run/secrets now, the restart back-off where systemd supports it, the unit
#    enabled, and started once /etc/pimesh/agent.env names a real broker.
set -eu

SHARE=/usr/share/pimesh-agent
VENV=/opt/pimesh/venv
UNIT=pimesh-agent.service
ENV_FILE=/etc/pimesh/agent.env
EXAMPLE_BROKER=mqtt.example.com

wheel=${1:-}
if [ -z "$wheel" ]; then
    for candidate in "$SHARE"/pimesh-*.whl; do wheel=$candidate; done
fi
if [ ! -f "$wheel" ]; then
    echo "pimesh setup: no pimesh wheel found (looked for ${wheel:-$SHARE/pimesh-*.whl})" >&2
    exit 1
fi

# 1. The seed: groupadd --system istio-proxy; useradd --system --gid istio-proxy
#    --home-dir /var/lib/istio istio-proxy (and no login shell).
getent group istio-proxy >/dev/null || groupadd --system istio-proxy
getent passwd istio-proxy >/dev/null ||
    useradd --system --gid istio-proxy --home-dir /var/lib/istio --shell /usr/sbin/nologin istio-proxy
# The unit's ReadWritePaths= needs it to exist; the agent gives it to istio-proxy.
install -d -m 0755 /var/lib/istio

# 2. The agent's Python environment.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "pimesh setup: pimesh needs Python 3.11 or later (Raspberry Pi OS bookworm has it)" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
extras=""
# rpi_ws281x drives the LED strip and builds only on a Raspberry Pi.
if grep -qs "Raspberry Pi" /proc/device-tree/model; then extras="[pi]"; fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$wheel$extras"

# 3. systemd.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create pimesh-agent.conf || true
fi
systemd_version=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')
if [ "${systemd_version:-0}" -ge 254 ] 2>/dev/null; then
    install -D -m 0644 "$SHARE/backoff.conf" "/etc/systemd/system/$UNIT.d/backoff.conf"
fi
systemctl --quiet enable "$UNIT"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if grep -q "^PIMESH_BROKER=.*$EXAMPLE_BROKER" "$ENV_FILE"; then
        echo "pimesh setup: edit $ENV_FILE (broker, username, password), then:" >&2
        echo "    systemctl start $UNIT" >&2
    else
        systemctl restart "$UNIT"
    fi
fi
