-- Per-operation benchmark loops, shared by the nginx benchmark (required as the
-- module "ops" from nginx-test-conf/bench_ops.conf) and the callgrind count
-- (run standalone: `luajit benches/ops.lua <op> <n> [prepare_n]`).
--
-- Every loop rotates through 4 prebuilt label tables (`band(i, 3) + 1`) so that
-- LuaJIT cannot hoist the label lookup out of the loop; the baselines rotate the
-- same way (4 cells, 4 dict keys). The `_const` variants use one label table,
-- for information.

local ffi = require "ffi"
local bit = require "bit"

local band = bit.band

local M = {}

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } shmetrics_bench_timespec;
int clock_gettime(int clk_id, shmetrics_bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("shmetrics_bench_timespec")

-- Monotonic clock in ns (as a double: exact below 2^53 ns, about 104 days).
function M.now_ns()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local LABELS3 = { "method", "path", "namespace" }
-- 15 finite buckets (+Inf implied).
local BUCKETS15 = { 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1,
                    2.5, 5, 7.5, 10, 30 }
-- One observed value per bucket, +Inf included: an average linear search length.
local OBSERVED = { 0.003, 0.007, 0.02, 0.04, 0.06, 0.09, 0.2, 0.4, 0.6, 0.9,
                   2, 4, 6, 9, 20, 45 }

local tabs1 = { { "GET" }, { "POST" }, { "PUT" }, { "DELETE" } }
local kids_c3, kids_g3, kids_h3 = {}, {}, {}
local tabs3 = {
    { "GET", "/v1/chat/completions", "wechat" },
    { "POST", "/v1/chat/completions", "wechat" },
    { "GET", "/v1/embeddings", "alipay" },
    { "POST", "/v1/models", "taobao" },
}
local const3 = tabs3[1]

local m = {}          -- the metric objects
local cells           -- double * of this process's slot
local raw_base        -- first of 4 consecutive cells owned by a 4-series counter
local dict            -- ngx.shared.DICT, nginx only
local dict_keys = {}  -- the series' names, as a shared-dict library keys them
local short_keys = { "k1", "k2", "k3", "k4" }
local new_tabs = {}   -- label tables for first-time series creation
local new_run = 0

-- Defines the families (init_by_lua, or standalone after init).
function M.define(prometheus)
    m.c0 = prometheus:counter("bench_c0_total", "0 labels")
    m.c1 = prometheus:counter("bench_c1_total", "1 label", { "method" })
    m.c3 = prometheus:counter("bench_c3_total", "3 labels", LABELS3)
    m.cnew = prometheus:counter("bench_new_total", "first-time series", LABELS3)
    m.g3 = prometheus:gauge("bench_g3", "3 labels", LABELS3)
    m.h3 = prometheus:histogram("bench_h3_seconds", "3 labels, 15 buckets", LABELS3, BUCKETS15)
    m.raw = prometheus:counter("bench_raw_total", "cells for the raw store baseline", { "k" })
    -- The gateway set (the same 6 updates as the per-request benchmark), with
    -- the default buckets.
    m.gw_req = prometheus:counter("gateway_requests_total", "", LABELS3)
    m.gw_dur = prometheus:histogram("gateway_request_duration_seconds", "", LABELS3)
    m.gw_model = prometheus:counter("model_requests_total", "", { "model", "namespace", "status" })
    m.gw_in = prometheus:counter("model_tokens_input_total", "", { "model", "namespace" })
    m.gw_out = prometheus:counter("model_tokens_output_total", "", { "model", "namespace" })
    m.gw_cost = prometheus:counter("model_cost_usd_total", "", { "model", "namespace" })
    M.prometheus = prometheus
end

-- Per process (init_worker_by_lua, or standalone): the first writes attach the
-- slot and fill the label caches, so that timed loops see cached series only.
function M.worker_setup(shdict)
    dict = shdict
    for k = 1, 4 do
        m.raw:inc(0, { tostring(k) })
    end
    for k = 1, 4 do
        m.c1:inc(0, tabs1[k])
        m.c3:inc(0, tabs3[k])
        m.g3:set(0, tabs3[k])
        m.g3:inc(0, tabs3[k])
        m.h3:observe(0, tabs3[k])
    end
    m.c0:inc(0)
    for k = 1, 4 do
        kids_c3[k] = m.c3:labels(tabs3[k])
        kids_g3[k] = m.g3:labels(tabs3[k])
        kids_h3[k] = m.h3:labels(tabs3[k])
    end
    -- Module internals (the slot pointer the registry attached, a metric's label
    -- cache): if the module changes them, this is the place to follow.
    cells = M.prometheus.cells
    assert(cells ~= nil, "benches/ops.lua: registry.cells (the slot's double *) not found")
    raw_base = m.raw.cache and m.raw.cache["1"]
    assert(type(raw_base) == "number", "benches/ops.lua: metric.cache[label] (the cell index) not found")
    for k = 2, 4 do
        -- the 4 series of a 1-cell counter were created in order: consecutive cells
        assert(m.raw.cache[tostring(k)] == raw_base + k - 1, "raw cells not consecutive")
    end
    if dict then
        for k = 1, 4 do
            local lv = tabs3[k]
            dict_keys[k] = 'bench_c3_total{method="' .. lv[1] .. '",path="' .. lv[2]
                           .. '",namespace="' .. lv[3] .. '"}'
            dict:set(dict_keys[k], 0)
            dict:set(short_keys[k], 0)
        end
    end
end

------------------------------------------------------------------------------
-- The loops. Each op is its own function, so each loop is its own trace.

local OPS = {}
M.OPS = OPS

OPS.empty_loop = function(n)
    local x = 0
    for i = 1, n do x = band(x + i, 0xffff) end
    return x
end

OPS.raw_store = function(n)
    local c, base = cells, raw_base
    for i = 1, n do
        local k = base + band(i, 3)
        c[k] = c[k] + 1
    end
end

OPS.raw_store_const = function(n)
    local c, k = cells, raw_base
    for _ = 1, n do c[k] = c[k] + 1 end
end

OPS.dict_incr = function(n)
    local d, keys = dict, dict_keys
    for i = 1, n do d:incr(keys[band(i, 3) + 1], 1) end
end

-- DICT:incr hashes the key byte by byte: short keys, for scale.
OPS.dict_incr_short = function(n)
    local d, keys = dict, short_keys
    for i = 1, n do d:incr(keys[band(i, 3) + 1], 1) end
end

OPS.dict_incr_const = function(n)
    local d, key = dict, dict_keys[1]
    for _ = 1, n do d:incr(key, 1) end
end

OPS.counter_inc_0 = function(n)
    local c = m.c0
    for _ = 1, n do c:inc(1) end
end

OPS.counter_inc_1 = function(n)
    local c, t = m.c1, tabs1
    for i = 1, n do c:inc(1, t[band(i, 3) + 1]) end
end

OPS.counter_inc_3 = function(n)
    local c, t = m.c3, tabs3
    for i = 1, n do c:inc(1, t[band(i, 3) + 1]) end
end

OPS.counter_inc_3_const = function(n)
    local c, lv = m.c3, const3
    for _ = 1, n do c:inc(1, lv) end
end

-- Children (metric:labels()): the label lookup done once, outside the loop;
-- rotated over 4 children like the label tables above.
OPS.child_inc_3 = function(n)
    local t = kids_c3
    for i = 1, n do t[band(i, 3) + 1]:inc(1) end
end

OPS.child_set_3 = function(n)
    local t = kids_g3
    for i = 1, n do t[band(i, 3) + 1]:set(i) end
end

OPS.child_observe_3 = function(n)
    local t, v = kids_h3, OBSERVED
    for i = 1, n do t[band(i, 3) + 1]:observe(v[band(i, 15) + 1]) end
end

OPS.gauge_set_3 = function(n)
    local g, t = m.g3, tabs3
    for i = 1, n do g:set(i, t[band(i, 3) + 1]) end
end

OPS.gauge_inc_3 = function(n)
    local g, t = m.g3, tabs3
    for i = 1, n do g:inc(1, t[band(i, 3) + 1]) end
end

OPS.histogram_observe_3 = function(n)
    local h, t, v = m.h3, tabs3, OBSERVED
    for i = 1, n do h:observe(v[band(i, 15) + 1], t[band(i, 3) + 1]) end
end

OPS.histogram_observe_3_const = function(n)
    local h, lv = m.h3, const3
    for _ = 1, n do h:observe(0.04, lv) end
end

-- First-time series: label tables with fresh values are built by prepare(),
-- outside the timed loop.
local function prepare_new(n)
    new_run = new_run + 1
    local prefix = "/r" .. new_run .. "/"
    for i = 1, n do
        new_tabs[i] = { "GET", prefix .. i, "wechat" }
    end
    for i = n + 1, #new_tabs do new_tabs[i] = nil end
end

OPS.counter_new_series = function(n)
    local c, t = m.cnew, new_tabs
    for i = 1, n do c:inc(1, t[i]) end
end

-- The per-request gateway set (6 updates), label values as one request has them.
-- Rotated over 4 requests' worth of values, like the label tables above.
local GWS = {
    { method = "POST", path = "/v1/chat/completions", ns = "wechat", model = "gpt-4" },
    { method = "POST", path = "/v1/chat/completions", ns = "alipay", model = "gpt-4o" },
    { method = "GET", path = "/v1/models", ns = "wechat", model = "qwen-max" },
    { method = "POST", path = "/v1/embeddings", ns = "taobao", model = "bge-m3" },
}

OPS.gateway_set = function(n)
    local req, dur, model, tin, tout, cost = m.gw_req, m.gw_dur, m.gw_model, m.gw_in, m.gw_out, m.gw_cost
    local gws = GWS
    for i = 1, n do
        local g = gws[band(i, 3) + 1]
        local method, path, ns, mdl = g.method, g.path, g.ns, g.model
        local lv3 = { method, path, ns }
        local lvm = { mdl, ns }
        req:inc(1, lv3)
        dur:observe(band(i, 255) * 0.001, lv3)
        model:inc(1, { mdl, ns, "success" })
        tin:inc(120, lvm)
        tout:inc(480, lvm)
        cost:inc(0.0042, lvm)
    end
end

-- The same set as a pure-Lua shared-dict library does it: a key string built per
-- update, a histogram as 3 increments (bucket, _count, _sum).
-- nginx-lua-prometheus's default buckets, which the gateway histogram uses.
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3,
                          0.4, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10 }

local function le_of(v)
    local b = DEFAULT_BUCKETS
    for j = 1, #b do
        if v <= b[j] then return b[j] end
    end
    return "+Inf"
end
M.le_of = le_of

function M.gateway_set_shdict(d, method, path, ns, mdl, dur_s)
    local l3 = 'method="' .. method .. '",path="' .. path .. '",namespace="' .. ns .. '"'
    local lm = 'model="' .. mdl .. '",namespace="' .. ns .. '"'
    d:incr("gateway_requests_total{" .. l3 .. "}", 1, 0)
    d:incr("gateway_request_duration_seconds_bucket{" .. l3 .. ',le="' .. le_of(dur_s) .. '"}', 1, 0)
    d:incr("gateway_request_duration_seconds_count{" .. l3 .. "}", 1, 0)
    d:incr("gateway_request_duration_seconds_sum{" .. l3 .. "}", dur_s, 0)
    d:incr('model_requests_total{model="' .. mdl .. '",namespace="' .. ns .. '",status="success"}', 1, 0)
    d:incr("model_tokens_input_total{" .. lm .. "}", 120, 0)
    d:incr("model_tokens_output_total{" .. lm .. "}", 480, 0)
    d:incr("model_cost_usd_total{" .. lm .. "}", 0.0042, 0)
end

OPS.gateway_set_shdict = function(n)
    local d, gws, f = dict, GWS, M.gateway_set_shdict
    for i = 1, n do
        local g = gws[band(i, 3) + 1]
        f(d, g.method, g.path, g.ns, g.model, band(i, 255) * 0.001)
    end
end

local PREPARE = { counter_new_series = prepare_new }
local NEEDS_DICT = { dict_incr = true, dict_incr_short = true, dict_incr_const = true,
                     gateway_set_shdict = true }
M.NEEDS_DICT = NEEDS_DICT

-- Runs op `name` n times; returns elapsed ns per operation.
function M.run(name, n)
    local f = OPS[name]
    if not f then
        return nil, "unknown op " .. tostring(name)
    end
    if NEEDS_DICT[name] and not dict then
        return nil, name .. " needs ngx.shared"
    end
    if PREPARE[name] then
        PREPARE[name](n)
    end
    local t0 = M.now_ns()
    f(n)
    local t1 = M.now_ns()
    return (t1 - t0) / n
end

------------------------------------------------------------------------------
-- Standalone: luajit benches/ops.lua <op> <n> [prepare_n]
-- Runs the op n times once (no timing output needed: callgrind counts). For
-- creation ops, prepare_n label tables are built whatever n is, so that two runs
-- with different n do the same preparation and the difference is the loop alone.

local function standalone(argv)
    local name, n, pn = argv[1], tonumber(argv[2]), tonumber(argv[3])
    if not (name and n) then
        io.stderr:write("usage: luajit benches/ops.lua <op> <n> [prepare_n]\nops:")
        for k in pairs(OPS) do io.stderr:write(" ", k) end
        io.stderr:write("\n")
        os.exit(2)
    end
    local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
    local root = here .. "/.."
    package.path = (os.getenv("SHMETRICS_LUA_DIR") or (root .. "/lua")) .. "/?.lua;" .. package.path
    local libdir = os.getenv("SHMETRICS_LIB_DIR") or (root .. "/target/release")
    local path = "/dev/shm/shmetrics-bench-ops-" .. (os.getenv("BENCH_TAG") or tostring(os.time()))
        .. "-" .. tostring(math.random(1, 1e9))
    os.remove(path)
    local sm = require "resty.shmetrics"
    local max_new = PREPARE[name] and math.max(n, pn or 0) or 0
    if NEEDS_DICT[name] then
        io.stderr:write(name .. " needs ngx.shared (nginx only)\n")
        os.exit(3)
    end
    local ok, err = pcall(function()
        local prometheus = sm.init("bench_ops", {
            path = path, reset = true, lib_path = libdir .. "/libshmetrics.so",
            max_series = max_new + 1024, max_slots = 2,
        })
        M.define(prometheus)
        M.worker_setup(nil)
        if PREPARE[name] then
            PREPARE[name](pn or n)
        end
        OPS[name](n)
    end)
    os.remove(path)
    if not ok then
        io.stderr:write(tostring(err), "\n")
        os.exit(1)
    end
    if os.getenv("BENCH_TIME") then
        -- informational: a timed second pass (not used by callgrind)
        print(name, M.run(name, n))
    end
end

if not ngx and type(arg) == "table" and arg[0] and arg[0]:match("ops%.lua$") then
    standalone(arg)
end

return M
