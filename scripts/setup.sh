#!/usr/bin/env bash
# Installs everything weft's build, tests, demo and benchmark need on a fresh Debian
# machine. Idempotent: re-running it installs nothing that is already there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: must run as root (it installs Debian packages)" >&2
  exit 1
fi

packages=(
  etcd-server etcd-client            # the cluster store, flannel's schema
  containerd runc                    # the container runtime the e2e tests drive
  containernetworking-plugins        # reference CNI plugins (bridge, host-local, portmap, ...)
  iperf3 iproute2 iputils-ping nftables tcpdump ethtool
  bpftool                            # the repair tests detach weft's tc program as an admin would
  iptables                           # iptables-nft (default) and -legacy: weftd's forward rules, tests of FORWARD DROP hosts
  protobuf-compiler libprotobuf-dev  # etcd-client's build script needs protoc and google/protobuf/*.proto
  busybox-static                     # root filesystem of the lab's pods
  pkg-config ca-certificates openssl procps psmisc kmod
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's packages start daemons on install where systemd runs; weft's tests start their
# own etcd and containerd with private data dirs, so a system instance would only compete
# for ports. Stop them if they were started (harmless where systemd is absent).
for svc in etcd containerd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# The reference CNI plugins live in /usr/lib/cni on Debian; runtimes look in /opt/cni/bin.
mkdir -p /opt/cni/bin
if [ -d /usr/lib/cni ]; then
  for plugin in /usr/lib/cni/*; do
    link="/opt/cni/bin/$(basename "$plugin")"
    # A dangling link (e.g. after a package change) is replaced; a real file is kept.
    if [ -L "$link" ] && [ ! -e "$link" ]; then rm -f "$link"; fi
    [ -e "$link" ] || ln -s "$plugin" "$link"
  done
fi

# Rust components the checks use.
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "setup.sh: ok"
