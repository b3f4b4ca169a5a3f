#!/usr/bin/env bash
# Make sure the system tools the headrace test suite needs are present:
#   - promtool and prometheus (Debian package `prometheus`, v2.42 on Debian 12)
#     for tests/ops/test_dashboards.py
#   - systemd-analyze (package `systemd`) for tests/ops/test_systemd_unit.py
#     (only reported, never installed by this script)
#
# Idempotent: exits 0 without doing anything when the tools are already there.
# When something is missing it installs the package with apt-get if run as root,
# and otherwise prints the command to run and exits 1.
# Set HEADRACE_SKIP_SYSTEM_DEPS=1 to only report and always exit 0.
set -euo pipefail

PKG=prometheus
skip=${HEADRACE_SKIP_SYSTEM_DEPS:-0}

say() { printf 'ensure-system-deps: %s\n' "$*" >&2; }

missing=()
for tool in promtool prometheus; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing+=("$tool")
    fi
done

if ! command -v systemd-analyze >/dev/null 2>&1; then
    say "warning: systemd-analyze not found; the systemd unit tests need it (package 'systemd')."
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "promtool and prometheus are installed ($(promtool --version 2>&1 | head -n 1))."
    exit 0
fi

say "missing: ${missing[*]} (from the Debian package '$PKG')."

if [ "$skip" = "1" ]; then
    say "HEADRACE_SKIP_SYSTEM_DEPS=1: not installing; the ops tests will fail without them."
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found: install Prometheus 2.x (prometheus and promtool) with your"
    say "system's package manager, or from https://prometheus.io/download/, and put"
    say "both on PATH."
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    say "not running as root, so not installing. Run:"
    say "    sudo apt-get update && sudo apt-get install -y $PKG"
    say "(or run this script with sudo)."
    exit 1
fi

say "installing '$PKG' with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "$PKG"

for tool in promtool prometheus; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "error: '$tool' still not found after installing '$PKG'."
        exit 1
    fi
done
say "installed: $(promtool --version 2>&1 | head -n 1)"
say "note: the package enables prometheus.service; if you only need promtool for the"
say "tests, stop it with: systemctl disable --now prometheus"
exit 0
