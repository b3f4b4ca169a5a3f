#!/usr/bin/env bash
# Make sure the system tools the headrace test suite needs are present:
#   - promtool and prometheus (Debian package `prometheus`, v2.42 on Debian 12)
#     for tests/ops/test_dashboards.py
#   - redis-server (Debian package `redis-server`) for the redis connector's tests
#     (tests/plugins/test_redis.py, the contract suites); the tests start their own
#     server on a free loopback port
#   - nats-server (Debian package `nats-server`, in /usr/sbin) for the nats connector's tests
#   - mosquitto (Debian package `mosquitto`, in /usr/sbin) for the mqtt connector's tests
#   - initdb and postgres (Debian package `postgresql`, in /usr/lib/postgresql/N/bin) for the
#     postgres offramp's tests: they make a cluster of their own in a temporary folder
#   - the s3 offramp's tests need no system package: their server, moto (`moto[server]`), comes
#     from PyPI with the `test` extra
#   - rabbitmq-server (Debian package `rabbitmq-server`, 3.10; its start script in /usr/lib/rabbitmq/bin,
#     epmd from erlang-base) for the amqp connector's tests; the tests start their own node and epmd
#   - openssl (Debian package `openssl`) to make test certificates (tests/plugins/test_tls.py)
#   - systemd-analyze (package `systemd`) for tests/ops/test_systemd_unit.py
#     (only reported, never installed by this script)
#
# Idempotent: exits 0 without doing anything when the tools are already there.
# When something is missing it installs the packages with apt-get if run as root,
# and otherwise prints the command to run and exits 1.
# Set HEADRACE_SKIP_SYSTEM_DEPS=1 to only report and always exit 0.
set -euo pipefail

skip=${HEADRACE_SKIP_SYSTEM_DEPS:-0}

say() { printf 'ensure-system-deps: %s\n' "$*" >&2; }

# tool -> Debian package
declare -A PACKAGE=([promtool]=prometheus [prometheus]=prometheus [redis-server]=redis-server [nats-server]=nats-server [mosquitto]=mosquitto [rabbitmq-server]=rabbitmq-server [epmd]=rabbitmq-server [openssl]=openssl [initdb]=postgresql)
export PATH="$PATH:/usr/sbin:/sbin"  # nats-server lives in /usr/sbin
postgres_on_path() {  # Debian keeps initdb and postgres off PATH, in /usr/lib/postgresql/N/bin
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then PATH="$PATH:$d"; fi
    done
}
postgres_on_path

missing=()
packages=()
for tool in promtool prometheus redis-server nats-server mosquitto rabbitmq-server epmd openssl initdb; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing+=("$tool")
        pkg=${PACKAGE[$tool]}
        if [[ " ${packages[*]-} " != *" $pkg "* ]]; then
            packages+=("$pkg")
        fi
    fi
done

if ! command -v systemd-analyze >/dev/null 2>&1; then
    say "warning: systemd-analyze not found; the systemd unit tests need it (package 'systemd')."
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "promtool, prometheus, redis-server, nats-server, mosquitto, rabbitmq-server, openssl and initdb are installed ($(promtool --version 2>&1 | head -n 1); $(redis-server --version | cut -d' ' -f1-3))."
    exit 0
fi

say "missing: ${missing[*]} (from the Debian package(s) ${packages[*]})."

if [ "$skip" = "1" ]; then
    say "HEADRACE_SKIP_SYSTEM_DEPS=1: not installing; the tests that need them will fail."
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found: install Prometheus 2.x (prometheus and promtool), redis-server,"
    say "nats-server, mosquitto, rabbitmq-server, openssl and postgresql with your system's package manager and put them on PATH."
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    say "not running as root, so not installing. Run:"
    say "    sudo apt-get update && sudo apt-get install -y ${packages[*]}"
    say "(or run this script with sudo)."
    exit 1
fi

say "installing ${packages[*]} with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
postgres_on_path

for tool in "${missing[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "error: '$tool' still not found after installing ${packages[*]}."
        exit 1
    fi
done
say "installed: ${packages[*]}"
if [[ " ${packages[*]} " == *" prometheus "* ]]; then
    say "note: the package enables prometheus.service; if you only need promtool for the"
    say "tests, stop it with: systemctl disable --now prometheus"
fi
if [[ " ${packages[*]} " == *" mosquitto "* ]]; then
    say "note: the package enables mosquitto.service (port 1883); the tests start their own."
fi
if [[ " ${packages[*]} " == *" postgresql "* ]]; then
    say "note: the package may start a cluster (postgresql.service, port 5432); the tests make their own."
fi
if [[ " ${packages[*]} " == *" rabbitmq-server "* ]]; then
    say "note: the package enables rabbitmq-server.service (port 5672); the tests start their own node."
fi
if [[ " ${packages[*]} " == *" redis-server "* ]]; then
    say "note: the package enables redis-server.service (port 6379); the tests start their own."
    say "Stop it with: systemctl disable --now redis-server"
fi
exit 0
