# Installing a missing Debian package for the test scripts (sourced by services.sh and
# browser.sh, which define log). Nothing is installed unless we are root or have
# password-less sudo.

# Whether we may run commands as root.
may_be_root() { ((EUID == 0)) || sudo -n true 2>/dev/null; }

# Run a command as root: directly when we are root, else with password-less sudo.
as_root() { if ((EUID == 0)); then "$@"; else sudo -n "$@"; fi; }

# apt_install PACKAGE SECONDS: install PACKAGE (the index updated first), giving the install
# SECONDS; fails when we may not, or apt-get fails.
apt_install() {
  local package=$1 seconds=$2
  may_be_root && command -v apt-get >/dev/null || return 1
  log "$package is missing: installing it with apt-get"
  # The lock timeout waits out another apt (e.g. unattended-upgrades on a fresh VM).
  local apt=(apt-get -qq -o DPkg::Lock::Timeout=120)
  as_root timeout 300 "${apt[@]}" update &&
    as_root timeout "$seconds" env DEBIAN_FRONTEND=noninteractive \
      "${apt[@]}" install -y --no-install-recommends "$package" >/dev/null
}
