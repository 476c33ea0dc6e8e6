#!/usr/bin/env bash
# Install the headless browser the page tests drive (tests/test_pages_browser.py): Debian's chromium and
# chromium-driver, and Playwright for Python (used with executable_path=/usr/bin/chromium, so `playwright install`
# never downloads a browser). Run as root, before the tests; CI (.ci/run / make test) must call it.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser.sh: run as root (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
  echo "installed $(/usr/bin/chromium --version)"
fi

# Playwright for Python is in the test extra; install it here too for a checkout set up without it.
PYTHON="${PYTHON:-.venv/bin/python}"
if [ -x "$PYTHON" ] && ! "$PYTHON" -c "import playwright" 2>/dev/null; then
  "$PYTHON" -m pip install -q 'playwright>=1.45'
fi
