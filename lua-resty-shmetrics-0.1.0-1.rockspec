-- LuaRocks: `luarocks make` in a checkout builds libshmetrics.so with cargo (Rust 1.81
-- or newer, from rustup) and installs it with the Lua modules into the rocks tree.
-- The package name and version follow debian/changelog and Cargo.toml (a test checks).
rockspec_format = "3.0"
package = "lua-resty-shmetrics"
version = "0.1.0-1"
source = {
   -- Not published yet: `luarocks make` builds the checkout it is run in and fetches
   -- nothing. Set this to the release tarball when there is one.
   url = "git+file:///dev/null",
}
description = {
   summary = "Lock-free Prometheus metrics in shared memory for nginx/OpenResty Lua",
   detailed = [[
A Rust library (libshmetrics.so, loaded through LuaJIT's FFI) and the Lua module
resty.shmetrics: counters, gauges and histograms recorded into per-worker shared
memory without locks, served at /metrics by nginx itself. The API is the one of
nginx-lua-prometheus.]],
   license = "MIT OR Apache-2.0",
}
dependencies = {
   -- Runs in LuaJIT (FFI) inside nginx's Lua module or OpenResty.
   "lua == 5.1",
}
build = {
   type = "command",
   -- Shares the checkout's target/ directory: a built tree is not rebuilt.
   build_command = "cargo build --release --locked",
   install = {
      lua = {
         ["resty.shmetrics"] = "lua/resty/shmetrics.lua",
         ["resty.shmetrics.binding"] = "lua/resty/shmetrics/binding.lua",
         ["resty.shmetrics.metrics"] = "lua/resty/shmetrics/metrics.lua",
         ["resty.shmetrics.serve"] = "lua/resty/shmetrics/serve.lua",
         ["resty.shmetrics.gateway"] = "lua/resty/shmetrics/gateway.lua",
         ["resty.shmetrics.gateway.json"] = "lua/resty/shmetrics/gateway/json.lua",
         ["resty.shmetrics.gateway.options"] = "lua/resty/shmetrics/gateway/options.lua",
         ["resty.shmetrics.gateway.outcome"] = "lua/resty/shmetrics/gateway/outcome.lua",
         ["resty.shmetrics.gateway.request"] = "lua/resty/shmetrics/gateway/request.lua",
         ["resty.shmetrics.gateway.stream"] = "lua/resty/shmetrics/gateway/stream.lua",
         ["resty.shmetrics.status"] = "lua/resty/shmetrics/status.lua",
      },
      -- resty.shmetrics finds it by walking package.cpath, as `libshmetrics`.
      lib = {
         ["libshmetrics"] = "target/release/libshmetrics.so",
      },
   },
}
