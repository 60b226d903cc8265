#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Fast Sandbox.
# Idempotent: installs only missing packages.
set -euo pipefail
packages=(
  protobuf-compiler      # containerd-client compiles its protos at build time
  containerd runc        # the runtime the agent drives, and the test cluster's node runtime
  containernetworking-plugins
  etcd-server etcd-client
  umoci                  # OCI images without a Docker engine
  busybox-static         # the test workload image
  gcc libc6-dev          # the static program of the test image without a shell
  iptables conntrack socat ebtables ethtool iproute2 kmod
  nftables               # nft, which the agent image carries for sandbox egress
  openssl jq curl
  python3 python3-venv   # the Python SDK's checks and end-to-end tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if command -v rustup >/dev/null; then
  installed="$(rustup component list --installed 2>/dev/null)"
  grep -q '^rustfmt' <<<"$installed" || rustup component add rustfmt
  grep -q '^clippy' <<<"$installed" || rustup component add clippy
fi
command -v cargo >/dev/null || { echo "cargo is required (install Rust with rustup)" >&2; exit 1; }
command -v go >/dev/null || { echo "go is required to build the pinned Kubernetes binaries" >&2; exit 1; }
