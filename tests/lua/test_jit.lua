-- The cached hot paths must compile: with LuaJIT's trace log on, a loop over
-- each operation yields a looping trace and no aborted trace (no NYI).
local h = require "helpers"

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

-- Runs f under jit.v, returns the log lines.
local function traces(f)
    local jit = require "jit"
    jit.flush()
    local log = os.tmpname()
    local v = require "jit.v"
    v.on(log)
    f()
    v.off()
    local lines = {}
    for line in io.lines(log) do lines[#lines + 1] = line end
    os.remove(log)
    return lines
end

-- What keeps `lines` (a trace log) from showing a compiled hot loop: a
-- description, or nil when there is none.
local function trace_problem(what, lines)
    local looped, problems = false, {}
    for _, l in ipairs(lines) do
        -- An abort ("TRACE ---", often NYI) or a stitch around an uncompiled
        -- builtin both mean the hot path leaves compiled code. A trace that
        -- starts in jit.v itself (its jit.attach call in v.on, which LuaJIT at
        -- times finds hot: "[TRACE 2 v.lua:142 stitch jit.attach]") is the
        -- logger's, not the library's.
        local problem = l:find("NYI", 1, true) or l:find("TRACE %-%-%-") or l:find(" stitch ", 1, true)
        if problem and not l:find("^%[TRACE +%d+ v%.lua:") then
            problems[#problems + 1] = l
        end
        if l:find("test_jit.lua:%d+ loop%]") then
            looped = true
        end
    end
    if #problems > 0 then
        return what .. ": trace aborts:\n" .. table.concat(problems, "\n")
    end
    if not looped then
        return what .. ": no loop trace in:\n" .. table.concat(lines, "\n")
    end
end

-- Which traces LuaJIT records depends on its hot counters, which code run
-- earlier shares (they are hashed by bytecode address): now and then a loop
-- that compiles aborts once ("loop unroll limit reached", "inner loop in root
-- trace") and compiles on the next try. So a loop gets three tries, each
-- after jit.flush(); what never compiles (an NYI) fails all three. Returns
-- how many times f ran, for the tests that check the counts f recorded.
local function check_compiles(what, f)
    local err
    for runs = 1, 3 do
        err = trace_problem(what, traces(f))
        if not err then
            return runs
        end
    end
    error(err, 2)
end

local N = 20000

test("counter:inc with 3 labels compiles to a loop trace", function()
    local p = h.registry()
    local c = p:counter("j_total", "J", { "method", "path", "namespace" })
    local lv = { { "GET", "/v1/chat/completions", "wechat" }, { "POST", "/v1/chat/completions", "alipay" } }
    c:inc(1, lv[1]); c:inc(1, lv[2])
    local runs = check_compiles("counter:inc", function()
        for i = 1, N do c:inc(1, lv[i % 2 + 1]) end
    end)
    h.eq(h.sample(p:metric_data("text"), 'j_total{method="GET",path="/v1/chat/completions",namespace="wechat"}'), tostring(1 + runs * N / 2))
end)

test("counter:inc without labels compiles", function()
    local p = h.registry()
    local c = p:counter("j0_total", "J")
    c:inc()
    check_compiles("counter:inc()", function()
        for _ = 1, N do c:inc() end
    end)
end)

test("histogram:observe with 3 labels compiles to a loop trace", function()
    local p = h.registry()
    local hist = p:histogram("j_seconds", "J", { "method", "path", "namespace" })
    local lv = { "GET", "/v1/chat/completions", "wechat" }
    hist:observe(0.1, lv)
    local runs = check_compiles("histogram:observe", function()
        for i = 1, N do hist:observe((i % 100) * 0.013, lv) end
    end)
    h.eq(h.sample(p:metric_data("text"), 'j_seconds_count{method="GET",path="/v1/chat/completions",namespace="wechat"}'), tostring(runs * N + 1))
end)

test("gauge:set and gauge:inc compile to loop traces", function()
    local p = h.registry()
    local g = p:gauge("j_gauge", "J", { "model", "namespace" })
    local lv = { "gpt-4", "wechat" }
    g:set(1, lv); g:inc(1, lv)
    check_compiles("gauge:set", function()
        for i = 1, N do g:set(i, lv) end
    end)
    local runs = check_compiles("gauge:inc", function()
        for _ = 1, N do g:inc(1, lv) end
    end)
    h.eq(h.sample(p:metric_data("text"), 'j_gauge{model="gpt-4",namespace="wechat"}'), tostring(N + runs * N))
end)

test("a child's inc and observe compile to loop traces", function()
    local p = h.registry()
    local c = p:counter("jk_total", "J", { "method", "path", "namespace" })
    local hist = p:histogram("jk_seconds", "J", { "method" })
    local kids = { c:labels({ "GET", "/a", "x" }), c:labels({ "POST", "/b", "y" }) }
    local hk = hist:labels({ "GET" })
    local runs = check_compiles("child:inc", function()
        for i = 1, N do kids[i % 2 + 1]:inc(1) end
    end)
    check_compiles("child:observe", function()
        for i = 1, N do hk:observe((i % 50) * 0.01) end
    end)
    h.eq(h.sample(p:metric_data("text"), 'jk_total{method="GET",path="/a",namespace="x"}'), tostring(runs * N / 2))
end)

test("the trace check itself fails on a loop that does not compile", function()
    local ok, err = pcall(check_compiles, "os.time loop", function()
        local t = 0
        for _ = 1, N do t = t + os.time() end
    end)
    assert(not ok, "check_compiles accepted a loop calling os.time (NYI)")
    assert(tostring(err):find("stitch os.time", 1, true), tostring(err))
end)

return T
