-- The Lua API's semantics in real LuaJIT (no nginx: the process is its own worker).
local h = require "helpers"
local eq, sample, raises, contains = h.eq, h.sample, h.raises, h.contains

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

test("counter inc: default 1, fractional, labels as strings and numbers", function()
    local p = h.registry()
    local c = p:counter("http_requests_total", "Requests", { "method", "status_code" })
    for _ = 1, 1000 do assert(c:inc(1, { "GET", 200 })) end
    assert(c:inc(nil, { "GET", "200" }))           -- number 200 and "200" are one series
    local cost = p:counter("model_cost_usd_total", "Spend", { "model" })
    for _ = 1, 3 do assert(cost:inc(0.0042, { "gpt-4" })) end
    local body = p:metric_data("text")
    eq(sample(body, 'http_requests_total{method="GET",status_code="200"}'), "1001")
    eq(sample(body, 'model_cost_usd_total{model="gpt-4"}'), "0.0126")
end)

test("metrics without labels are exposed as 0 from definition", function()
    local p = h.registry()
    p:counter("c_total", "C")
    p:gauge("g", "G")
    local body = p:metric_data("text")
    eq(sample(body, "c_total"), "0")
    eq(sample(body, "g"), "0")
end)

test("gauge: set is last-writer-wins, inc adds on top, dec subtracts", function()
    local p = h.registry()
    local g = p:gauge("inflight", "In flight", { "ns" })
    assert(g:inc(5, { "a" }))
    assert(g:set(10, { "a" }))
    eq(sample(p:metric_data("text"), 'inflight{ns="a"}'), "10", "set discards earlier incs")
    assert(g:inc(2, { "a" }))
    assert(g:dec(nil, { "a" }))
    eq(sample(p:metric_data("text"), 'inflight{ns="a"}'), "11")
    assert(g:set(-2.5, { "a" }))
    eq(sample(p:metric_data("text"), 'inflight{ns="a"}'), "-2.5")
    assert(g:set(math.huge, { "b" }))
    eq(sample(p:metric_data("text"), 'inflight{ns="b"}'), "+Inf")
end)

test("histogram: le buckets, +Inf == _count, every bucket present", function()
    local p = h.registry()
    local hist = p:histogram("lat_seconds", "Latency", { "route" }, { 0.1, 1, 10 })
    for _, v in ipairs({ 0.05, 0.1, 0.5, 1, 5, 10, 50 }) do
        assert(hist:observe(v, { "/v1" }))
    end
    local body = p:metric_data("text")
    eq(sample(body, 'lat_seconds_bucket{route="/v1",le="0.1"}'), "2", "v == bound goes in that bucket")
    eq(sample(body, 'lat_seconds_bucket{route="/v1",le="1"}'), "4")
    eq(sample(body, 'lat_seconds_bucket{route="/v1",le="10"}'), "6")
    eq(sample(body, 'lat_seconds_bucket{route="/v1",le="+Inf"}'), "7")
    eq(sample(body, 'lat_seconds_count{route="/v1"}'), "7")
    eq(sample(body, 'lat_seconds_sum{route="/v1"}'), "66.65")
end)

test("histogram default buckets are nginx-lua-prometheus's", function()
    local p = h.registry()
    local hist = p:histogram("d_seconds", "D")
    assert(hist:observe(0.003))
    local body = p:metric_data("text")
    local les = {}
    for le in body:gmatch('d_seconds_bucket{le="([^"]+)"}') do les[#les + 1] = le end
    eq(table.concat(les, ","), "0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.2,0.3,0.4,0.5,0.75,1,1.5,2,3,4,5,10,+Inf")
    eq(sample(body, 'd_seconds_bucket{le="0.005"}'), "1")
end)

test("del removes one series; recreating it starts from 0", function()
    local p = h.registry()
    local c = p:counter("x_total", "X", { "k" })
    c:inc(5, { "a" }); c:inc(7, { "b" })
    assert(c:del({ "a" }))
    local body = p:metric_data("text")
    eq(sample(body, 'x_total{k="a"}'), nil)
    eq(sample(body, 'x_total{k="b"}'), "7")
    c:inc(1, { "a" })
    eq(sample(p:metric_data("text"), 'x_total{k="a"}'), "1")
end)

test("reset removes every series of the family only", function()
    local p = h.registry()
    local c = p:counter("x_total", "X", { "k" })
    local other = p:counter("y_total", "Y", { "k" })
    c:inc(5, { "a" }); c:inc(7, { "b" }); other:inc(3, { "a" })
    assert(c:reset())
    local body = p:metric_data("text")
    eq(sample(body, 'x_total{k="a"}'), nil)
    eq(sample(body, 'x_total{k="b"}'), nil)
    eq(sample(body, 'y_total{k="a"}'), "3")
    c:inc(2, { "b" })
    eq(sample(p:metric_data("text"), 'x_total{k="b"}'), "2")
end)

test("families are contiguous, in definition order", function()
    local p = h.registry()
    local a = p:counter("a_total", "A", { "k" })
    local b = p:gauge("b", "B", { "k" })
    a:inc(1, { "1" }); b:set(1, { "1" }); a:inc(1, { "2" }); b:set(2, { "2" })
    local names = {}
    for line in p:metric_data("text"):gmatch("[^\n]+") do
        local n = line:match("^# TYPE (%S+)")
        if n then names[#names + 1] = n end
    end
    eq(names[1], "a_total"); eq(names[2], "b")
    local body = p:metric_data("text")
    local ia, ia2 = body:find('a_total{k="1"}', 1, true), body:find('a_total{k="2"}', 1, true)
    local ib = body:find('b{k="1"}', 1, true)
    assert(ia < ia2 and ia2 < ib, "a_total's series come before b's")
end)

test("redefinition returns the same metric; a conflict names both definitions", function()
    local p = h.registry()
    local c1 = p:counter("r_total", "R", { "a" })
    local c2 = p:counter("r_total", "R", { "a" })
    assert(c1 == c2)
    local err = raises(p.gauge, p, "r_total", "R", { "a" })
    contains(err, "counter {a}")
    contains(err, "gauge {a}")
    err = raises(p.counter, p, "r_total", "R", { "a", "b" })
    contains(err, "counter {a,b}")
    local hh = p:histogram("hh", "H", nil, { 1, 2 })
    assert(hh)
    err = raises(p.histogram, p, "hh", "H", nil, { 1, 3 })
    contains(err, "buckets [1.0, 2.0]")
end)

test("setup misuse raises and names the argument", function()
    local p = h.registry()
    contains(raises(p.counter, p, "bad-name", "x"), '"name"')
    contains(raises(p.counter, p, 42, "x"), '"name"')
    contains(raises(p.counter, p, "ok_total", 42), '"help"')
    contains(raises(p.counter, p, "ok_total", "x", "method"), '"label_names"')
    contains(raises(p.counter, p, "ok_total", "x", { "a", 1 }), '"label_names"')
    contains(raises(p.counter, p, "ok_total", "x", { "a-b" }), '"label_names"')
    contains(raises(p.counter, p, "ok_total", "x", { "a", "a" }), "twice")
    contains(raises(p.counter, p, "ok_total", "x", { "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11" }), "at most 10")
    contains(raises(p.histogram, p, "h1", "x", { "le" }), '"le" is reserved')
    contains(raises(p.histogram, p, "h2", "x", nil, { 2, 1 }), '"buckets"')
    contains(raises(p.histogram, p, "h3", "x", nil, { 0 / 0 }), '"buckets"')
    contains(raises(p.histogram, p, "h4", "x", nil, { "a" }), '"buckets"')
    contains(raises(p.counter, p, "shmetrics_x_total", "x"), "reserved")
    p:histogram("lat", "x")
    contains(raises(p.counter, p, "lat_count", "x"), "collides")
    local sm = require "resty.shmetrics"
    contains(raises(sm.init, "bad name!"), '"name"')
    contains(raises(sm.init, "ok", { max_series = "10" }), '"max_series"')
    contains(raises(sm.init, "ok", { nonsense = 1 }), '"nonsense"')
    contains(raises(sm.init, "ok2", { path = "/dev/shm/shmetrics-ok2", max_slots = 1 }), '"max_slots"')
end)

test("hot-path misuse returns nil, err, never raises, and is counted by reason", function()
    local p = h.registry()
    local c = p:counter("e_total", "E", { "a", "b" })
    local g = p:gauge("eg", "E")
    local hh = p:histogram("eh", "E", { "a" })
    local cases = {
        { function() return c:inc(-1, { "x", "y" }) end, "value_negative" },
        { function() return c:inc(0 / 0, { "x", "y" }) end, "value_nan" },
        { function() return c:inc(math.huge, { "x", "y" }) end, "value_infinite" },
        { function() return c:inc("one", { "x", "y" }) end, "value_type" },   -- ("1" is 1)
        { function() return c:inc(1, { "x" }) end, "label_count" },
        { function() return c:inc(1, { "x", "y", "z" }) end, "label_count" },
        { function() return c:inc(1, nil) end, "label_count" },
        { function() return c:inc(1, "x") end, "label_count" },
        { function() return c:inc(1, { "x", true }) end, "label_type" },
        { function() return c:inc(1, { "x", {} }) end, "label_type" },
        { function() return c:inc(1, { "x", string.rep("v", 2000) }) end, "label_too_long" },
        { function() return g:set(nil) end, "value_type" },
        { function() return g:set(0 / 0) end, "value_nan" },
        { function() return g:inc(-math.huge) end, "value_infinite" },
        { function() return g:inc(1, { "unexpected" }) end, "label_count" },
        { function() return hh:observe(0 / 0, { "x" }) end, "value_nan" },
        { function() return hh:observe(nil, { "x" }) end, "value_type" },
        { function() return hh:observe(1, {}) end, "label_count" },
    }
    local want = {}
    for i, case in ipairs(cases) do
        local ok, res, err = pcall(case[1])
        assert(ok, "case " .. i .. " raised: " .. tostring(res))
        eq(res, nil, "case " .. i .. " result")
        assert(type(err) == "string" and #err > 0, "case " .. i .. " has an error message")
        want[case[2]] = (want[case[2]] or 0) + 1
    end
    local body = p:metric_data("text")
    for reason, n in pairs(want) do
        eq(sample(body, 'shmetrics_errors_total{reason="' .. reason .. '"}'), tostring(n), reason)
    end
    -- Nothing was recorded by the failed calls.
    eq(sample(body, 'e_total{a="x",b="y"}'), nil)
    eq(sample(body, "eg"), "0")
end)

test("label values with quotes, backslashes, newlines and invalid UTF-8 are escaped", function()
    local p = h.registry()
    local c = p:counter("esc_total", "Esc", { "v" })
    c:inc(1, { 'a"b\\c\nd' })
    c:inc(1, { "bad\255" })
    c:inc(1, { "bad\254" })   -- renders alike: the same series
    local body = p:metric_data("text")
    eq(sample(body, 'esc_total{v="a\\"b\\\\c\\nd"}'), "1")
    eq(sample(body, 'esc_total{v="bad\239\191\189"}'), "2")
end)

test("more than max_series: store_full, existing series keep counting", function()
    local p = h.registry({ max_series = 4 })
    local c = p:counter("f_total", "F", { "k" })
    for i = 1, 4 do assert(c:inc(1, { "k" .. i })) end
    local ok, err = c:inc(1, { "k5" })
    eq(ok, nil); contains(err, "max_series")
    assert(c:inc(1, { "k1" }))
    local body = p:metric_data("text")
    eq(sample(body, 'f_total{k="k1"}'), "2")
    eq(sample(body, 'shmetrics_errors_total{reason="store_full"}'), "1")
    eq(sample(body, "shmetrics_series_used"), "4")
    eq(sample(body, "shmetrics_series_capacity"), "4")
end)

test("a metric's own max_series sends new label sets to one overflow series", function()
    local p = h.registry()
    local c = p:counter("user_requests_total", "R", { "user", "route" }, { max_series = 2 })
    for i = 1, 5 do assert(c:inc(i, { "u" .. i, "/r" })) end
    assert(c:inc(10, { "u1", "/r" }))   -- an existing series keeps counting
    assert(c:inc(1, { "u9", "/r" }))    -- and a new one overflows again
    local body = p:metric_data("text")
    eq(sample(body, 'user_requests_total{user="u1",route="/r"}'), "11")
    eq(sample(body, 'user_requests_total{user="u2",route="/r"}'), "2")
    eq(sample(body, 'user_requests_total{user="u3",route="/r"}'), nil)
    eq(sample(body, 'user_requests_total{user="__overflow__",route="__overflow__"}'), "13")
    eq(sample(body, 'shmetrics_series_overflow_total{family="user_requests_total"}'), "4")
    -- Deleting a series makes room for a new one.
    assert(c:del({ "u2", "/r" }))
    assert(c:inc(1, { "u7", "/r" }))
    body = p:metric_data("text")
    eq(sample(body, 'user_requests_total{user="u7",route="/r"}'), "1")
    eq(sample(body, 'user_requests_total{user="__overflow__",route="__overflow__"}'), "13")
    -- Options are checked.
    contains(raises(p.counter, p, "o1_total", "x", nil, { max_series = 0 }), '"max_series"')
    contains(raises(p.counter, p, "o2_total", "x", nil, { nonsense = 1 }), '"nonsense"')
    contains(raises(p.counter, p, "o3_total", "x", nil, 3600), "exptime")
    local hh = p:histogram("oh", "x", { "k" }, { 1, 2 }, { max_series = 1 })
    assert(hh:observe(1, { "a" })); assert(hh:observe(1, { "b" }))
    eq(sample(p:metric_data("text"), 'oh_count{k="__overflow__"}'), "1")
end)

test("a full store counts the dropped series per family", function()
    local p = h.registry({ max_series = 2 })
    local c = p:counter("d_total", "D", { "k" })
    for i = 1, 5 do c:inc(1, { "k" .. i }) end
    local body = p:metric_data("text")
    eq(sample(body, 'shmetrics_series_dropped_total{family="d_total"}'), "3")
    eq(sample(body, 'shmetrics_errors_total{reason="store_full"}'), "3")
end)

test("a garbage file at the path is replaced, and a self-metric says so", function()
    local path = "/dev/shm/shmetrics-lt-garbage-" .. math.random(1, 1e9)
    local f = assert(io.open(path, "wb"))
    f:write(string.rep("garbage!", 1000))
    f:close()
    os.execute("chmod 600 " .. path)
    local p = require("resty.shmetrics").init("lt_garbage", { path = path })
    local body = p:metric_data("text")
    os.remove(path)
    eq(sample(body, 'shmetrics_region_replaced{reason="bad_file"}'), "1")
    local q = h.registry()
    eq(sample(q:metric_data("text"), 'shmetrics_region_replaced{reason="bad_file"}'), nil)
end)

test("labels() binds label values once: children record into the same series", function()
    local p = h.registry()
    local c = p:counter("kid_total", "K", { "a", "b" })
    local g = p:gauge("kid_gauge", "K", { "a" })
    local hh = p:histogram("kid_seconds", "K", { "a" }, { 1 })
    local lv = { "x", "y" }
    local kid = assert(c:labels(lv))
    lv[1] = "changed"                      -- the child keeps its own copy
    for _ = 1, 10 do assert(kid:inc()) end
    assert(kid:inc(2.5))
    assert(c:inc(1, { "x", "y" }))
    local gk = assert(g:labels({ "x" }))
    assert(gk:set(7)); assert(gk:inc(2)); assert(gk:dec())
    local hk = assert(hh:labels({ "x" }))
    assert(hk:observe(0.5)); assert(hk:observe(5))
    local body = p:metric_data("text")
    eq(sample(body, 'kid_total{a="x",b="y"}'), "13.5")
    eq(sample(body, 'kid_total{a="changed",b="y"}'), nil)
    eq(sample(body, 'kid_gauge{a="x"}'), "8")
    eq(sample(body, 'kid_seconds_bucket{a="x",le="1"}'), "1")
    eq(sample(body, 'kid_seconds_count{a="x"}'), "2")
    -- Bad values: nil, err, counted, as for the metric itself.
    local ok, err = kid:inc(-1)
    eq(ok, nil); contains(err, "cannot decrease")
    ok, err = hk:observe(0 / 0)
    eq(ok, nil); contains(err, "NaN")
    -- After a reset, a child records into a new series from 0.
    assert(c:reset())
    assert(kid:inc(1))
    eq(sample(p:metric_data("text"), 'kid_total{a="x",b="y"}'), "1")
    -- Wrong label values: labels() itself returns nil, err.
    ok, err = c:labels({ "only-one" })
    eq(ok, nil); contains(err, "2 label values")
    body = p:metric_data("text")
    eq(sample(body, 'shmetrics_errors_total{reason="value_negative"}'), "1")
    eq(sample(body, 'shmetrics_errors_total{reason="value_nan"}'), "1")
    eq(sample(body, 'shmetrics_errors_total{reason="label_count"}'), "1")
end)

test("init with the same name returns the same registry", function()
    local sm = require "resty.shmetrics"
    local a = sm.init("same_name_test", { path = "/dev/shm/shmetrics-same-name-test", reset = true })
    local b = sm.init("same_name_test")
    assert(a == b)
    os.remove("/dev/shm/shmetrics-same-name-test")
end)

test("a valid existing file is attached: counts carry on", function()
    -- Written by a child luajit process, read back by another.
    local path = "/dev/shm/shmetrics-lt-attach-" .. math.random(1, 1e9)
    os.remove(path)
    local prog = [[
        package.path = "%s/lua/?.lua;" .. package.path
        package.cpath = "%s/?.so;" .. package.cpath
        local p = require("resty.shmetrics").init("x", { path = "%s" })
        local c = p:counter("carry_total", "C", { "k" })
        c:inc(%d, { "a" })
        io.write(p:metric_data("text"):match('carry_total{k="a"} (%%S+)'))
    ]]
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local function run(n)
        local f = assert(io.open(path .. ".lua", "w"))
        f:write(string.format(prog, root, libdir, path, n))
        f:close()
        local p = io.popen("luajit " .. path .. ".lua")
        local out = p:read("*a")
        p:close()
        return out
    end
    eq(run(3), "3")
    eq(run(4), "7", "the second process attached the first one's file")
    os.remove(path .. ".lua")
    os.remove(path)
end)

return T
