#!/usr/bin/env bash
# Make sure the OS's Chromium is there for the dashboard's browser tests (driven by Playwright's
# Python package with executable_path; Playwright's own browser download is never used).
#
#   scripts/browser.sh        # install chromium with apt-get if it is missing and we may
#
# Settings, from the environment:
#   WORKERS_TEST_CHROMIUM   the browser to use (default /usr/bin/chromium)
#   CI                      when true/1, a browser that cannot be provided is an error
set -euo pipefail

CHROMIUM="${WORKERS_TEST_CHROMIUM:-/usr/bin/chromium}"

log() { printf 'browser: %s\n' "$*" >&2; }
source "${BASH_SOURCE[0]%/*}/apt.sh"
is_ci() { [[ ${CI:-} == true || ${CI:-} == 1 ]]; }

# Install chromium with apt-get if it is missing and we may (root or password-less sudo).
install_chromium() {
  [[ -x $CHROMIUM ]] && return 0
  [[ $CHROMIUM == /usr/bin/chromium ]] || return 1  # someone else's browser: not ours to install
  apt_install chromium 900 && [[ -x $CHROMIUM ]]
}

if install_chromium; then
  log "using $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
elif is_ci; then
  log "error: $CHROMIUM is missing and apt-get could not install it (needs root or sudo)"
  exit 1
else
  log "warning: $CHROMIUM is missing and apt-get could not install it; the browser tests will skip"
fi
