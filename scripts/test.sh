#!/usr/bin/env bash
# Runs every test suite, even when an earlier one fails, and ends with a summary:
# the Lua suite's status, then cargo's own per-binary `test result:` lines.
# Called by `make test` after deps and `cargo build --release`.
set -uo pipefail
cd "$(dirname "$0")/.."

export SHMETRICS_LIB_DIR="${SHMETRICS_LIB_DIR:-$PWD/target/release}"
log=$(mktemp /tmp/shmetrics-cargo-test.XXXXXX)
trap 'rm -f "$log"' EXIT

start=$(date +%s)
# Style and lints first (seconds): rustfmt.toml's format, clippy with every
# warning an error. They do not stop the tests; the summary reports them.
echo "== cargo fmt --all --check; cargo clippy --release --workspace --all-targets -- -D warnings"
lint_rc=0
# --all/--workspace: the library and testkit/ (the shared test kit); fuzz/ is its own workspace.
cargo fmt --all --check >"$log.fmt" 2>&1 && (cd fuzz && cargo fmt --check) >>"$log.fmt" 2>&1 || lint_rc=1
if [ -s "$log.fmt" ]; then
    echo "cargo fmt --check: these files are not formatted (run cargo fmt, and in fuzz/):"
    grep '^Diff in' "$log.fmt" | sed 's/ at line.*//' | sort -u | head -20
fi
rm -f "$log.fmt"
cargo clippy --release --workspace --all-targets -- -D warnings || lint_rc=1
lint_line="fmt and clippy: $([ $lint_rc -eq 0 ] && echo ok || echo FAILED)"

# --no-fail-fast: a failing binary does not hide the results of the others.
# --workspace: testkit's own unit tests (its JSON reader and reference model) too.
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$log"
cargo_rc=${PIPESTATUS[0]}
echo "$lint_line" >> "$log"

lua_rc=0
if [ -f tests/lua/run.lua ]; then
    echo
    echo "== luajit tests/lua/run.lua"
    lua_log=$(mktemp /tmp/shmetrics-lua-test.XXXXXX)
    luajit tests/lua/run.lua 2>&1 | tee "$lua_log"
    lua_rc=${PIPESTATUS[0]}
    cat "$lua_log" >> "$log"
    rm -f "$lua_log"
    lua_line="lua tests (tests/lua/run.lua): $([ $lua_rc -eq 0 ] && echo ok || echo "FAILED (exit $lua_rc)")"
else
    lua_line="lua tests: tests/lua/run.lua not present, skipped"
fi

# Each fuzz target for a fixed number of inputs with a fixed seed, from the kept
# seeds: repeatable (exploring is `make fuzz`; fuzz/README.md says what can vary).
# SHMETRICS_SKIP_FUZZ=1 skips it.
fuzz_rc=0
if [ "${SHMETRICS_SKIP_FUZZ:-0}" != 1 ]; then
    echo
    echo "== scripts/fuzz.sh --check"
    scripts/fuzz.sh --check 2>&1 | tee -a "$log"
    fuzz_rc=${PIPESTATUS[0]}
    fuzz_line="fuzz (scripts/fuzz.sh): $([ $fuzz_rc -eq 0 ] && echo ok || echo "FAILED (exit $fuzz_rc)")"
else
    fuzz_line="fuzz: skipped (SHMETRICS_SKIP_FUZZ=1)"
fi

echo
echo "== make test summary ($(( $(date +%s) - start )) s)"
echo "$lint_line"
echo "$lua_line"
echo "$fuzz_line"
echo "cargo test --release: $([ $cargo_rc -eq 0 ] && echo ok || echo "FAILED (exit $cargo_rc)")"
# Pair each `Running <target>` / `Doc-tests <crate>` header with its result line.
awk '/^ *Running /{t=$0; sub(/^ *Running /, "", t); sub(/ \(.*$/, "", t)}
     /^ *Doc-tests /{t="doc-tests " $2}
     /^test result:/{printf "  %-40s %s\n", t, $0}
     /^error: .*target.* failed/{f=1} f' "$log"

# One closing line over every suite: cargo's binaries and the Lua tests.
awk '/^test result:/ {
         for (i = 1; i <= NF; i++) {
             if ($(i+1) ~ /^passed;?$/) p += $i
             if ($(i+1) ~ /^failed;?$/) f += $i
         }
     }
     /^lua: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     /^fuzz: [a-z]+ +ok: / { p += 1 }
     /^fuzz: [a-z]+ +FAILED/ { f += 1 }
     /^fmt and clippy: ok$/ { p += 1 }
     /^fmt and clippy: FAILED$/ { f += 1 }
     END { printf "shmetrics: %d passed, %d failed\n", p, f }' "$log"

[ $lint_rc -eq 0 ] && [ $cargo_rc -eq 0 ] && [ $lua_rc -eq 0 ] && [ $fuzz_rc -eq 0 ]
