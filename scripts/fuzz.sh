#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ and says how many inputs each one ran.
# The targets: fuzz/fuzz_targets/*.rs; their bodies and checks: testkit/src/fuzz/
# (also run by `cargo test` as tests/fuzz_regressions.rs).
#
#   scripts/fuzz.sh [seconds]   explore: each target for that long (default
#                               $FUZZ_SECONDS, else 60), from fuzz/corpus/<target>/,
#                               which grows (`make fuzz`)
#   scripts/fuzz.sh --check     repeatable (`make test`): each target for a fixed
#                               number of inputs with a fixed seed, from a copy of
#                               the kept seeds fuzz/corpus/<target>/seed-* (the
#                               corpus is not changed); the same inputs every run
#
# Environment:
#   FUZZ_SECONDS     seconds per target when exploring (default 60)
#   FUZZ_CHECK_RUNS  inputs per target with --check, as target=N pairs (default
#                    "attach=8000 render=2000": about 15 s each on 2 cores)
#   FUZZ_SEED        libFuzzer's -seed with --check (default 1)
#   FUZZ_TARGETS     which targets (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER   none (default: works on stable Rust) or address
#                    (AddressSanitizer; on a stable toolchain this sets
#                    RUSTC_BOOTSTRAP=1, which -Zsanitizer needs)
#   FUZZ_TRACE_COMPARES  1 (default) or 0: build without libFuzzer's comparison
#                    tracing (cargo fuzz --no-trace-compares; its own build
#                    directory): about twice the inputs per second on render
#                    (267 against 142/s), at the cost of guidance on compared values
#   FUZZ_CARGO_FUZZ_VERSION  the cargo-fuzz to install if missing (default 0.13.2,
#                    pinned so that a new release cannot need a newer Rust)
#
# The harness fixes each new region's hash seed, so an input takes the same
# path in every process: with --check, libFuzzer's choices (which depend only
# on its seed and on the coverage inputs reach) are the same on every run.
#
# Installs cargo-fuzz first if it is missing (`cargo install cargo-fuzz --locked`,
# about 2 minutes), and g++ (as root, with apt-get) if there is no C++ compiler.
# Exits non-zero if a target crashed or hung: the input is in fuzz/artifacts
# /<target>/ (and libFuzzer's output in failure.log there); replay
# it with `cd fuzz && cargo fuzz run --sanitizer none --target-dir
# target/sanitizer-none <target> <file>` (the command is in the log), shrink it
# with `cargo fuzz tmin` (same options), and keep it in tests/fuzz_regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

check=0
if [ "${1:-}" = --check ]; then
    check=1
    shift
fi
secs=${1:-${FUZZ_SECONDS:-60}}
sanitizer=${FUZZ_SANITIZER:-none}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [seconds per target] | scripts/fuzz.sh --check" >&2
    exit 2
fi
check_runs=${FUZZ_CHECK_RUNS:-attach=8000 render=2000}
seed=${FUZZ_SEED:-1}
# Each sanitizer builds into its own directory: switching does not rebuild.
args=(--sanitizer "$sanitizer" --target-dir "target/sanitizer-$sanitizer")
if [ "${FUZZ_TRACE_COMPARES:-1}" = 0 ]; then
    args=(--sanitizer "$sanitizer" --no-trace-compares --target-dir "target/sanitizer-$sanitizer-notc")
fi
case $sanitizer in
none) ;;
address)
    if ! rustc -V | grep -q nightly; then export RUSTC_BOOTSTRAP=1; fi
    ;;
*)
    echo "fuzz: FUZZ_SANITIZER must be none or address, not $sanitizer" >&2
    exit 2
    ;;
esac

# libfuzzer-sys compiles libFuzzer (C++) with the system's C++ compiler.
if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "fuzz: error: no C++ compiler (c++); install g++ (apt-get install g++)" >&2
        exit 1
    fi
    echo "fuzz: installing g++ (libFuzzer is C++)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    t=$(date +%s)
    cargo install cargo-fuzz --locked --version "${FUZZ_CARGO_FUZZ_VERSION:-0.13.2}"
    echo "fuzz: cargo-fuzz installed in $(($(date +%s) - t)) s"
fi

t=$(date +%s)
cargo fuzz build "${args[@]}"
echo "fuzz: built the targets (sanitizer: $sanitizer) in $(($(date +%s) - t)) s"

# Region files of fuzzing processes that died before unlinking them.
clean_shm() {
    local f pid
    for f in /dev/shm/shmetrics-fuzz-*; do
        [ -e "$f" ] || continue
        pid=$(basename "$f" | sed -n 's/^shmetrics-fuzz-[a-z]*-\([0-9]*\)-.*/\1/p')
        # The pid is zero-padded (testkit/src/fuzz/abi.rs, fresh_path).
        if [ -n "$pid" ] && ! kill -0 "$((10#$pid))" 2>/dev/null; then rm -rf "$f"; fi
    done
}

log=$(mktemp /tmp/shmetrics-fuzz.XXXXXX)
seeds=$(mktemp -d /tmp/shmetrics-fuzz-seeds.XXXXXX)
trap 'rm -rf "$log" "$seeds"; clean_shm' EXIT

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
summary=()
failed=0
for target in $targets; do
    mkdir -p "corpus/$target"
    start=$(date +%s)
    # -timeout: an input running that long is a hang (the renderer not ending).
    if [ $check -eq 1 ]; then
        runs=$(tr ' ' '\n' <<<"$check_runs" | sed -n "s/^$target=//p")
        runs=${runs:-3000}
        mkdir -p "$seeds/$target"
        cp corpus/"$target"/seed-* "$seeds/$target/" 2>/dev/null || true
        how="seed $seed, $runs inputs from $(find "$seeds/$target" -type f | wc -l) seeds"
        set -- "$seeds/$target" -- -seed="$seed" -runs="$runs"
    else
        how="corpus $(find "corpus/$target" -type f | wc -l) inputs"
        set -- -- -max_total_time="$secs"
    fi
    rc=0
    cargo fuzz run "${args[@]}" "$target" "$@" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    cov=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]* ft: [0-9]*' | tail -n 1) || true # none if it crashed at once
    status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
        failed=1
        mkdir -p "artifacts/$target"
        cp "$log" "artifacts/$target/failure.log"
        echo "fuzz: $target failed; the end of libFuzzer's output (all of it: fuzz/artifacts/$target/failure.log):"
        grep -v -E '^ +([0-9]+: |at )' "$log" | tail -n 40
    fi
    elapsed=$(($(date +%s) - start))
    rate=$((execs / (elapsed > 0 ? elapsed : 1)))
    line=$(printf '%-8s %s: %d executions in %d s (%d/s), %s; %s' \
        "$target" "$status" "$execs" "$elapsed" "$rate" "${cov:-cov: ?}" "$how")
    echo "fuzz: $line"
    summary+=("$line")
done

echo
if [ $check -eq 1 ]; then
    echo "== fuzz summary (--check: fixed seed $seed and input counts, sanitizer $sanitizer)"
else
    echo "== fuzz summary ($secs s per target, sanitizer $sanitizer)"
fi
printf '  %s\n' "${summary[@]}"
exit "$failed"
