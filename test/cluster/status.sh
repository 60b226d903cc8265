#!/usr/bin/env bash
# Same as: cluster.sh status [args]
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.sh" status "$@"
