# Entry points. `make test` is what CI runs (.ci/run); `make demo` starts a sample
# gateway with /metrics. Both install missing Debian packages first (scripts/deps.sh).

CARGO ?= cargo

.PHONY: all deps build test demo bench fuzz clean install uninstall deb

# `make install` puts the Lua modules and libshmetrics.so where LuaJIT looks by default
# (Debian's luajit2: /usr/local/share/lua/5.1/?.lua and /usr/local/lib/lua/5.1/?.so), so
# nginx needs no lua_package_path/cpath for them. It installs what `make build` built:
#   make build && sudo make install
# OpenResty: sudo make install LUA_LIB_DIR=/usr/local/openresty/site/lualib \
#                              LUA_CLIB_DIR=/usr/local/openresty/site/lualib
PREFIX ?= /usr/local
LUA_VERSION ?= 5.1
LUA_LIB_DIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
LUA_CLIB_DIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INSTALL ?= install
LIBRARY ?= target/release/libshmetrics.so
# Where `make deb` leaves the package (and its .buildinfo/.changes).
DEB_OUT ?= target/debian

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

install:
	@test -f $(LIBRARY) || { echo "install: $(LIBRARY) not found: run 'make build' first" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(LUA_LIB_DIR)/resty/shmetrics/gateway $(DESTDIR)$(LUA_CLIB_DIR)
	$(INSTALL) -m 644 lua/resty/shmetrics.lua $(DESTDIR)$(LUA_LIB_DIR)/resty/
	$(INSTALL) -m 644 lua/resty/shmetrics/*.lua $(DESTDIR)$(LUA_LIB_DIR)/resty/shmetrics/
	$(INSTALL) -m 644 lua/resty/shmetrics/gateway/*.lua $(DESTDIR)$(LUA_LIB_DIR)/resty/shmetrics/gateway/
	$(INSTALL) -m 644 $(LIBRARY) $(DESTDIR)$(LUA_CLIB_DIR)/libshmetrics.so

# Removes what `install` put there; `resty/` only if nothing else is left in it.
uninstall:
	rm -f $(DESTDIR)$(LUA_LIB_DIR)/resty/shmetrics.lua $(DESTDIR)$(LUA_CLIB_DIR)/libshmetrics.so
	rm -rf $(DESTDIR)$(LUA_LIB_DIR)/resty/shmetrics
	-rmdir $(DESTDIR)$(LUA_LIB_DIR)/resty 2>/dev/null

# The Debian binary package lua-resty-shmetrics (debian/, debhelper), into $(DEB_OUT).
# Binary-only and unsigned; cargo comes from rustup, not from Build-Depends (debian/README.source).
deb:
	mkdir -p $(DEB_OUT)
	DEB_OUT=$(abspath $(DEB_OUT)) dpkg-buildpackage -b -us -uc -tc \
	    --buildinfo-file=$(DEB_OUT)/lua-resty-shmetrics.buildinfo \
	    --changes-file=$(DEB_OUT)/lua-resty-shmetrics.changes \
	    --buildinfo-option=-u$(DEB_OUT) --changes-option=-u$(DEB_OUT)

clean:
	$(CARGO) clean
