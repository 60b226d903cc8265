#!/usr/bin/env bash
# A small cgroup v2 machine for tests that need what real nodes run (pure
# cgroup v2, systemd as PID 1) on hosts that are cgroup v1: Debian bookworm
# from Debian packages (debootstrap: linux-image-amd64, systemd, containerd,
# runc, umoci, busybox-static), booted by qemu with software emulation
# (TCG; nested KVM stalls on these machines).
#
#   test/cgroup2/vm.sh build                 prints the image directory;
#                                            cached, instant once built
#   test/cgroup2/vm.sh run [--timeout S] [--cpus N] [--memory MiB] DIR
#       boots the image (its disk as a throw-away snapshot), mounts DIR
#       (9p, read-write) at /share and runs /share/run.sh as root once
#       systemd is up, with its output on this terminal; then powers off.
#       Exits with run.sh's status (124 on timeout, default 3600 s).
#
# Environment: FAST_SANDBOX_CACHE (default /var/cache/fast-sandbox): the
# image is kept in $FAST_SANDBOX_CACHE/cgroup2-vm/<key>, keyed by the suite,
# the package list and the version of the build steps below.
set -euo pipefail
cache="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
SUITE=bookworm
MIRROR="${FAST_SANDBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# dbus: runc's systemd cgroup driver talks to systemd over the system bus.
PACKAGES=(systemd systemd-sysv dbus udev kmod linux-image-amd64 containerd runc umoci
  busybox-static iproute2 procps util-linux tar jq ca-certificates)
BUILD_VERSION=1   # bump when the build steps change
key="$SUITE-$(printf '%s\n' "$BUILD_VERSION" "${PACKAGES[@]}" | sha256sum | cut -c1-12)"
image="$cache/cgroup2-vm/$key"

log() { printf '[%s] cgroup2-vm: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_tools() {
  local missing=() p
  for p in debootstrap qemu-system-x86 e2fsprogs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

cmd_build() {
  if [[ -f "$image/done" ]]; then echo "$image"; return 0; fi
  [[ $EUID -eq 0 ]] || die "must run as root"
  need_tools
  local t0=$SECONDS work="$image.tmp"
  rm -rf "$work"; mkdir -p "$work"
  local root="$work/rootfs"
  log "debootstrap $SUITE (${PACKAGES[*]})"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }

  echo fsb-cgroup2 > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 fsb-cgroup2\n' > "$root/etc/hosts"
  echo 'LABEL=fsbroot / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
  # Only what the tests start: no system containerd, no login prompt.
  rm -f "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
  ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
  ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
  cat > "$root/usr/local/sbin/fsb-run" <<'EOF'
#!/bin/sh
# Runs /share/run.sh once, records its status in /share/rc, powers off.
mkdir -p /share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 share /share; then
  /share/run.sh
  rc=$?
  echo "$rc" > /share/rc
  echo "fsb-run: run.sh exited with $rc"
else
  echo "fsb-run: cannot mount the 9p share"
fi
sync
systemctl poweroff --no-block
EOF
  chmod 755 "$root/usr/local/sbin/fsb-run"
  cat > "$root/etc/systemd/system/fsb-run.service" <<'EOF'
[Unit]
Description=Fast Sandbox tests from /share/run.sh
After=local-fs.target systemd-modules-load.service
Wants=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fsb-run
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/fsb-run.service "$root/etc/systemd/system/multi-user.target.wants/fsb-run.service"
  printf '9p\n9pnet_virtio\noverlay\n' > "$root/etc/modules-load.d/fsb.conf"

  local kernel initrd
  kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
  initrd="$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)"
  [[ -f "$kernel" && -f "$initrd" ]] || die "no kernel or initrd in $root/boot"
  cp "$kernel" "$work/vmlinuz"; cp "$initrd" "$work/initrd.img"
  basename "$kernel" | sed 's/^vmlinuz-//' > "$work/kernel-version"
  rm -rf "$root/var/cache/apt/archives"/*.deb
  log "making the ext4 root disk"
  mkfs.ext4 -q -F -L fsbroot -d "$root" "$work/disk.img" 4G
  rm -rf "$root"
  touch "$work/done"
  rm -rf "$image"; mv "$work" "$image"
  log "image ready in $image ($((SECONDS - t0)) s)"
  echo "$image"
}

cmd_run() {
  local timeout=3600 cpus=2 memory=4096
  while [[ $# -gt 1 ]]; do
    case "$1" in
      --timeout) timeout="$2"; shift 2 ;;
      --cpus) cpus="$2"; shift 2 ;;
      --memory) memory="$2"; shift 2 ;;
      *) break ;;
    esac
  done
  local share="${1:?usage: vm.sh run [--timeout S] DIR}"
  [[ -x "$share/run.sh" ]] || die "$share/run.sh is missing or not executable"
  local img; img="$(cmd_build)"
  rm -f "$share/rc"
  log "booting $(cat "$img/kernel-version") under qemu (TCG, $cpus cpus, $memory MiB), share $share"
  local rc=0
  # -snapshot: the disk is never written; -no-reboot: a panic ends qemu.
  timeout --foreground "$timeout" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$memory" \
    -nographic -no-reboot -snapshot -nic none \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=LABEL=fsbroot rw console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 quiet" \
    -drive "file=$img/disk.img,format=raw,if=virtio" \
    -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" </dev/null || rc=$?
  if [[ $rc == 124 ]]; then log "timed out after $timeout s"; return 124; fi
  [[ -f "$share/rc" ]] || die "the VM stopped (qemu status $rc) before run.sh finished"
  return "$(cat "$share/rc")"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
