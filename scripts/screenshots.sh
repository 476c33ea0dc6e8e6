#!/usr/bin/env bash
# Make the README's screenshots of the web pages (docs/screenshots/*.png) from the browser tests themselves:
# they save a PNG of each page when WITHSENSE_SCREENSHOTS is set. Needs scripts/install_browser.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export WITHSENSE_SCREENSHOTS="${WITHSENSE_SCREENSHOTS:-docs/screenshots}"
exec "${PYTHON:-.venv/bin/python}" -m pytest tests/test_pages_browser.py -q -p no:cacheprovider "$@"
