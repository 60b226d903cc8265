#!/usr/bin/env bash
# Tests the Python SDK: installs it with its test extras into a virtualenv
# kept outside the repository, then runs ruff (lint and format), mypy
# --strict and the unit tests; with --e2e also the end-to-end tests against
# the cluster of the current KUBECONFIG (Fast Sandbox deployed there), which
# fail, rather than skip, when no cluster answers.
#
#   sdk/python/test.sh           lint, types, unit tests
#   sdk/python/test.sh --e2e     and the end-to-end tests
#
# FAST_SANDBOX_SDK_VENV names the virtualenv (default: under
# ${XDG_CACHE_HOME:-~/.cache}/fast-sandbox); PYTHON the interpreter that
# makes it (python3, 3.10 or newer).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e=0
for arg in "$@"; do
  case "$arg" in
    --e2e) e2e=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
step() { printf '[%s] == sdk/python: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

venv="${FAST_SANDBOX_SDK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fast-sandbox/python-sdk-venv}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "$python is older than 3.10; set PYTHON to a newer interpreter" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  step "creating the virtualenv $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
step "installing fast-sandbox with its test extras"
"$py" -m pip install --quiet --disable-pip-version-check "$here[test]"
# The same version number may hold other code: always install this tree.
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$here"

cd "$here"
export RUFF_CACHE_DIR="$venv/.ruff_cache"
step "ruff check"
"$py" -m ruff check .
step "ruff format --check"
"$py" -m ruff format --check .
step "mypy --strict"
"$py" -m mypy --strict --cache-dir "$venv/.mypy_cache" src tests bench
step "unit tests"
"$py" -m pytest -p no:cacheprovider -q tests/unit
if [[ $e2e == 1 ]]; then
  step "end-to-end tests against ${KUBECONFIG:-the default kubeconfig}"
  "$py" -m pytest -p no:cacheprovider -q --durations=5 tests/e2e
fi
step "passed"
