# Entry points. `make test` is what CI runs (.ci/run); `make demo` starts a sample
# gateway with /metrics. Both install missing Debian packages first (scripts/deps.sh).

CARGO ?= cargo

.PHONY: all deps build test demo bench fuzz clean

all: build

deps:
	scripts/deps.sh

build:
	$(CARGO) build --release

# Rust unit/ABI/integration tests (tests/nginx_*.rs start their own nginx), then the
# Lua tests if tests/lua/run.lua exists; ends with a summary of every result.
test: deps build
	scripts/test.sh

demo: deps build
	scripts/demo.sh

# Benchmarks (not tests): per-op, per-request, scrape and memory; writes BENCHMARKS.md.
# `scripts/bench.sh ops scrape` runs some sections; BENCH_QUICK=1 for a smoke run.
bench: deps build
	scripts/bench.sh
# Fuzzing (cargo-fuzz, installed if missing): every target for FUZZ_SECONDS each (60),
# growing fuzz/corpus. `make test` runs `scripts/fuzz.sh --check` instead: a fixed seed
# and number of inputs from the kept seeds (repeatable); crashers are kept in
# tests/fuzz_regressions.rs.
fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
