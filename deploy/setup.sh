#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine to build, test and run the fastpath:
# Debian packages, the Rust build, hugepages and a hugetlbfs mount.
# Idempotent: a second run changes nothing. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

HUGEPAGES="${HUGEPAGES:-1024}"
PACKAGES=(
  build-essential pkg-config clang libclang-dev   # bindgen and the C shim
  libdpdk-dev dpdk dpdk-dev                        # DPDK 22.11: libraries, PMDs, dpdk-testpmd
  ovn-central ovn-common ovn-host                  # ovsdb-server, ovn-northd, ovn-nbctl/sbctl, ovn-trace
  openvswitch-common openvswitch-switch-dpdk       # OVS-DPDK, the peer we compare with
  iproute2 procps iputils-ping iperf3 netcat-openbsd tshark   # namespaces, veth, tap; traffic; capture decoding
)

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages and reserves hugepages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages already installed"
fi
# The Debian services are not used: tests and the lab start their own
# ovsdb-server and northd in temporary directories.
for svc in ovn-central ovn-host openvswitch-switch; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! command -v cargo-nextest >/dev/null; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

if ! command -v cargo-fuzz >/dev/null; then
  say "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

say "building (release)"
cargo build --release --workspace --bins

say "reserving ${HUGEPAGES} x 2M hugepages and mounting hugetlbfs"
./target/release/hugepage-setup --size 2M --pages "$HUGEPAGES" --mount /dev/hugepages
./target/release/hugepage-setup --check --size 2M --pages 1 >/dev/null || {
  ./target/release/hugepage-setup --check --size 2M --pages 1
  exit 1
}
say "ready"
