#!/usr/bin/env bash
# Builds docker.io/fast-sandbox/busybox:dev, the test workload image, from
# busybox-static (/bin/busybox plus a symlink per applet: sh, sleep, echo,
# cat, ...) and imports it into the local cluster's containerd. Options are
# those of load-image.sh (e.g. --archive-only OUT.tar).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/load-image.sh" --busybox "$@" fast-sandbox/busybox:dev
