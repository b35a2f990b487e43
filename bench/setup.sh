#!/usr/bin/env bash
# Install what the benchmark needs, and nothing into the project's .venv:
#   Debian: nginx (the tenant and contender b), wrk, openssl, curl, redis-server (the fleet row)
#   bench/.venv-mitm:  mitmproxy 11 (contender c)       -- full runs only
#   bench/.venv-tools: py-spy (the profile)              -- full runs only
# Usage: bash bench/setup.sh full|smoke. Idempotent: what is there is not installed again.
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-full}"
PYTHON="${PYTHON:-python3}"

missing=()
for tool in nginx:nginx wrk:wrk openssl:openssl curl:curl redis-server:redis-server; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bench/setup.sh: need ${missing[*]}: run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "bench/setup.sh: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The nginx package would start the system nginx on port 80; the benchmark runs its own.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[[ -n "$made_policy" ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "$mode" == full ]]; then
    if [[ ! -x .venv-mitm/bin/mitmdump ]]; then
        echo "bench/setup.sh: mitmproxy into bench/.venv-mitm" >&2
        "$PYTHON" -m venv .venv-mitm
        .venv-mitm/bin/python -m pip install --quiet --upgrade pip
        .venv-mitm/bin/python -m pip install --quiet 'mitmproxy>=11,<12'
    fi
    if [[ ! -x .venv-tools/bin/py-spy ]]; then
        echo "bench/setup.sh: py-spy into bench/.venv-tools" >&2
        "$PYTHON" -m venv .venv-tools
        .venv-tools/bin/python -m pip install --quiet py-spy
    fi
fi
