#!/bin/sh
# Build pimesh-agent_VERSION_all.deb: the agent's wheel, its systemd unit and example
# configuration, and maintainer scripts that set the Pi up (setup.sh) on install.
#   deploy/pi/build-deb.sh [--wheel PIMESH.whl] [--out DIR]     (DEB_MAINTAINER="Name <mail>")
# Without --wheel the wheel is built from this checkout (in a temporary copy, so the tree
# stays clean) with $PYTHON (default python3) and pip. Architecture `all`: the wheel is
# pure Python; dependencies are installed from the package index by the postinst.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
wheel=""
out=$(pwd)
maintainer=${DEB_MAINTAINER:-pimesh maintainers <root@localhost>}
while [ "$#" -gt 0 ]; do
    case "$1" in
        --wheel) wheel=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--wheel PIMESH.whl] [--out DIR]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$wheel" ]; then
    mkdir "$work/src"
    cp -R "$repo/pyproject.toml" "$repo/README.md" "$repo/shared" "$repo/controller" \
        "$repo/device" "$repo/sandbox" "$repo/cli" "$work/src/"
    find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        --wheel-dir "$work/wheel" "$work/src"
    wheel=$(ls "$work"/wheel/pimesh-*.whl)
fi
wheel_name=$(basename "$wheel")
# pimesh-0.1.0-py3-none-any.whl -> 0.1.0
version=$(echo "$wheel_name" | sed -n 's/^pimesh-\([^-]*\)-.*\.whl$/\1/p')
if [ -z "$version" ]; then
    echo "build-deb.sh: $wheel_name is not a pimesh wheel" >&2
    exit 1
fi

root="$work/pkg"
install -d -m 0755 "$root" "$root/DEBIAN"
install -D -m 0644 "$wheel" "$root/usr/share/pimesh-agent/$wheel_name"
install -D -m 0644 "$here/pimesh-agent-backoff.conf" "$root/usr/share/pimesh-agent/backoff.conf"
install -D -m 0755 "$here/setup.sh" "$root/usr/lib/pimesh-agent/setup"
install -D -m 0644 "$here/pimesh-agent.service" "$root/lib/systemd/system/pimesh-agent.service"
install -D -m 0644 "$here/pimesh-agent.tmpfiles" "$root/usr/lib/tmpfiles.d/pimesh-agent.conf"
install -D -m 0600 "$here/agent.env" "$root/etc/pimesh/agent.env"
find "$root" -type d -exec chmod 0755 {} +

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: pimesh-agent
Version: $version
Architecture: all
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: python3 (>= 3.11), python3-venv, systemd
Recommends: ztunnel
Section: net
Priority: optional
Description: pimesh agent: keeps this device enrolled in an Istio ambient mesh
 Announces the device to the pimesh controller over MQTT, installs the sealed
 bootstrap bundles it receives (root certificate, token, cluster.env, mesh
 config, hosts entry), runs ztunnel as istio-proxy and drives the LED strip.
 Configure /etc/pimesh/agent.env, then start pimesh-agent.service.
CONTROL
echo /etc/pimesh/agent.env > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    /usr/lib/pimesh-agent/setup
fi
exit 0
SCRIPT

cat > "$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
case "$1" in
    remove|deconfigure)
        if [ -d /run/systemd/system ]; then
            systemctl stop pimesh-agent.service || true
        fi
        systemctl --quiet disable pimesh-agent.service || true
        ;;
esac
exit 0
SCRIPT

cat > "$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
case "$1" in
    remove|purge)
        # Made by setup, not by dpkg: remove them with the package.
        rm -rf /opt/pimesh/venv
        rmdir /opt/pimesh 2>/dev/null || true
        rm -f /etc/systemd/system/pimesh-agent.service.d/backoff.conf
        rmdir /etc/systemd/system/pimesh-agent.service.d 2>/dev/null || true
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload || true
        fi
        ;;
esac
if [ "$1" = purge ]; then
    # The device's keys: a purged and reinstalled Pi is a new device to the controller
    # (re-key it with `pimesh rekey ID`). The istio-proxy user and ztunnel's files stay.
    rm -rf /var/lib/pimesh /etc/pimesh
fi
exit 0
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/pimesh-agent_${version}_all.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
