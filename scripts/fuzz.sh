#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a while and says how many inputs each
# one ran. The targets: fuzz/fuzz_targets/*.rs; their bodies and checks:
# fuzz/src/lib.rs (also run by `cargo test` as tests/fuzz_regressions.rs).
#
#   scripts/fuzz.sh [seconds]      seconds per target (default $FUZZ_SECONDS, else 60)
#
# Environment:
#   FUZZ_SECONDS     seconds per target when no argument is given (default 60)
#   FUZZ_TARGETS     which targets (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER   none (default: works on stable Rust) or address
#                    (AddressSanitizer; on a stable toolchain this sets
#                    RUSTC_BOOTSTRAP=1, which -Zsanitizer needs)
#   FUZZ_CARGO_FUZZ_VERSION  the cargo-fuzz to install if missing (default 0.13.2,
#                    pinned so that a new release cannot need a newer Rust)
#   FUZZ_RUNS_PER_PROCESS  inputs per libFuzzer process (default 10000, at least
#                    twice the corpus, which each process replays first). Every
#                    input maps fresh regions, and the library keeps each path it
#                    opened in a list that `open` searches linearly (by design: a
#                    worker opens a handful), so a fuzzing process slows down as it
#                    ages. Restarting it, with the corpus kept, keeps it fast.
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

secs=${1:-${FUZZ_SECONDS:-60}}
sanitizer=${FUZZ_SANITIZER:-none}
per_process=${FUZZ_RUNS_PER_PROCESS:-10000}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [seconds per target]" >&2
    exit 2
fi
# Each sanitizer builds into its own directory: switching does not rebuild.
args=(--sanitizer "$sanitizer" --target-dir "target/sanitizer-$sanitizer")
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
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then rm -rf "$f"; fi
    done
}

log=$(mktemp /tmp/shmetrics-fuzz.XXXXXX)
trap 'rm -f "$log"; clean_shm' EXIT

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
summary=()
failed=0
for target in $targets; do
    mkdir -p "corpus/$target"
    start=$(date +%s)
    execs=0
    processes=0
    status=ok
    while :; do
        left=$((secs - ($(date +%s) - start)))
        [ "$left" -gt 0 ] || break
        processes=$((processes + 1))
        # Each process first replays the whole corpus: let it run twice as many.
        corpus=$(find "corpus/$target" -type f | wc -l)
        runs=$((per_process > 2 * corpus ? per_process : 2 * corpus))
        rc=0
        # -timeout: an input running that long is a hang (the renderer not ending).
        cargo fuzz run "${args[@]}" "$target" -- \
            -max_total_time="$left" -runs="$runs" -timeout=30 \
            -print_final_stats=1 >"$log" 2>&1 || rc=$?
        n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
        execs=$((execs + ${n:-0}))
        if [ "$rc" -ne 0 ]; then
            status="FAILED (exit $rc)"
            failed=1
            mkdir -p "artifacts/$target"
            cp "$log" "artifacts/$target/failure.log"
            echo "fuzz: $target failed; the end of libFuzzer's output (all of it: fuzz/artifacts/$target/failure.log):"
            grep -v -E '^ +([0-9]+: |at )' "$log" | tail -n 40
            break
        fi
    done
    elapsed=$(($(date +%s) - start))
    rate=$((execs / (elapsed > 0 ? elapsed : 1)))
    line=$(printf '%-8s %s: %d executions in %d s (%d/s, %d processes), corpus %d inputs' \
        "$target" "$status" "$execs" "$elapsed" "$rate" "$processes" "$(find "corpus/$target" -type f | wc -l)")
    echo "fuzz: $line"
    summary+=("$line")
done

echo
echo "== fuzz summary ($secs s per target, sanitizer $sanitizer)"
printf '  %s\n' "${summary[@]}"
exit "$failed"
