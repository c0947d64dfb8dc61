#!/usr/bin/env bash
# Installs the Debian packages that building, testing and the demo need.
# Idempotent: when everything is installed it only says so. Run as root on a
# fresh Debian 12 machine (CI does: .ci/run -> make test -> make deps).
set -euo pipefail

# nginx + ngx_lua as Debian ships them, OpenResty's LuaJIT branch (luajit2) and its
# headers, promtool (package prometheus), load/scrape tools, valgrind for the ABI tests.
# Never add Debian's `luajit` package here: it conflicts with luajit2 (FACTS.md).
packages=(nginx libnginx-mod-http-lua lua-resty-core luajit2 libluajit2-5.1-dev
          prometheus wrk curl pkg-config valgrind
          # make deb and its checks, the rockspec (tests/install.rs)
          dpkg-dev debhelper lintian luarocks
          # tests/nginx_status.rs: the status page in a headless browser
          chromium
          # tests/fleet.rs, examples/fleet: the long-term store behind remote_write
          victoria-metrics
          )

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} Debian packages present (${packages[*]})"
else
    echo "deps: missing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: error: installing them needs root. Run 'make deps' as root, or:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "deps: apt-get update"
    apt-get update -q
    echo "deps: apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    still=()
    for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
    if [ ${#still[@]} -ne 0 ]; then
        echo "deps: error: still not installed after apt-get: ${still[*]}" >&2
        exit 1
    fi
fi

# Python: prometheus_client's strict OpenMetrics parser, used by tests/nginx_formats.rs
# (promtool 2.42 does not parse OpenMetrics).
if command -v python3 >/dev/null && ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "deps: python3 -m pip install prometheus_client"
    python3 -m pip install --quiet prometheus_client \
        || echo "deps: warning: pip failed; the OpenMetrics parser checks will be skipped"
fi
