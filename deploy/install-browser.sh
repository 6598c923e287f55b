#!/usr/bin/env bash
# Headless Chromium for tests/integration/test_browser.py: Debian's chromium + chromium-driver
# (apt) and selenium in the vrec venv. Idempotent: installs only what is missing.
#   deploy/install-browser.sh            (VREC_VENV overrides the venv, default ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VREC_VENV:-$PWD/.venv}
SELENIUM=${VREC_SELENIUM:-selenium==4.51.0}

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  :
elif command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-browser: need root (or sudo) for apt-get" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "== Chromium + chromedriver (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "install-browser: no apt-get here; install chromium and chromedriver yourself" >&2
  echo "(or point VREC_CHROMIUM / VREC_CHROMEDRIVER at them)" >&2
  exit 1
fi

if [ -x "$VENV/bin/python" ]; then
  if ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
    echo "== $SELENIUM (pip)"
    "$VENV/bin/python" -m pip install -q "$SELENIUM"
  fi
else
  echo "install-browser: no venv at $VENV (run ./dev setup first)" >&2
  exit 1
fi
echo "== $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
