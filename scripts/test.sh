#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine, then run them all:
# lint, the test suite (unit, end-to-end, Redis, browser) and the Autobahn
# conformance run on both backends. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The real parts the tests drive: Chromium, redis-server and redis-cli, debootstrap (for wstest),
# gcc (builds the benchmarks' load generator, benchmarks/loadgen_c, for the smoke test).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)   # redis-cli --cluster create
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

TOOLS="${IMPROTO_CACHE:-$HOME/.cache/improto}/tox-venv"
if [ ! -x "$TOOLS/bin/tox" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q "tox>=4.11"
fi
exec "$TOOLS/bin/tox" run "$@"
