#!/usr/bin/env bash
# Runs the benchmarks and writes BENCHMARKS.md (`make bench`). Benchmarks are not
# tests: a missed target is reported in BENCHMARKS.md, not as a failure; this
# script fails only when a benchmark cannot run.
#
#   scripts/bench.sh                  every section (about 16 minutes; handler alone about 4)
#   scripts/bench.sh ops scrape       some sections: ops callgrind request handler gateway scrape stall memory
#   BENCH_QUICK=1 scripts/bench.sh    a smoke run: fewer, shorter runs (about 2 minutes)
#
# BENCHMARKS.md always holds the sections of the last run only. The driver is
# benches/bench.py (python3, standard library); it needs nginx with ngx_lua,
# luajit (luajit2), wrk, curl and valgrind (scripts/deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
export SHMETRICS_LIB_DIR="${SHMETRICS_LIB_DIR:-$PWD/target/release}"
exec python3 benches/bench.py "$@"
