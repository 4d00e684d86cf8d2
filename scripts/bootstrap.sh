#!/usr/bin/env bash
# Install p2pnet into ./.venv on a fresh machine.
#   bash scripts/bootstrap.sh        # the node and CLI
#   bash scripts/bootstrap.sh dev    # plus the test tools (and Debian's chromium for the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

# py-libp2p 0.8.1 builds fastecdsa from source: it needs gcc and GMP headers.
if ! { [ -f /usr/include/gmp.h ] || [ -f /usr/include/x86_64-linux-gnu/gmp.h ] || [ -f /usr/include/aarch64-linux-gnu/gmp.h ]; }; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing libgmp-dev (needed to build fastecdsa)" >&2
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev gcc >/dev/null
  else
    echo "error: GMP headers missing; install libgmp-dev (or gmp-devel) and gcc first" >&2
    exit 1
  fi
fi

# The dashboard's browser tests (dev) drive Debian's headless Chromium; nothing is downloaded at test time.
if [ "${1:-}" = "dev" ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing chromium and chromium-driver (for the dashboard's browser tests)" >&2
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
  else
    echo "warning: chromium and chromedriver are missing: the dashboard's browser tests will fail" \
         "(install them, or set P2PNET_NO_BROWSER=1 to skip those tests)" >&2
  fi
fi

# The namespace testnet (`p2pnet testnet`, tests/test_testnet_netns.py) needs ip and tc (iproute2) and nft
# (nftables); it runs as root only, so they are installed only when this runs as root.
if [ "${1:-}" = "dev" ] && ! { command -v ip && command -v tc && command -v nft; } >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing iproute2 and nftables (for the namespace testnet)" >&2
    apt-get update -qq && env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends iproute2 nftables >/dev/null
  else
    echo "note: ip, tc or nft is missing: the namespace testnet's tests will be skipped" \
         "(as root: apt-get install iproute2 nftables)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
.venv/bin/p2pnet --version >/dev/null
echo "p2pnet installed in .venv (run: .venv/bin/p2pnet --help)" >&2
