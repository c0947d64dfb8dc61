-- nginx-lua-prometheus's calls, unchanged, in real LuaJIT (no nginx: the process
-- is its own worker). tests/nginx_dropin.rs plays its integration scenario.
local h = require "helpers"
local eq, sample, raises, contains = h.eq, h.sample, h.raises, h.contains
local sm = require "resty.shmetrics"

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

local function path(tag)
    local p = "/dev/shm/shmetrics-lt-dropin-" .. tag .. "-" .. math.random(1, 1e9)
    os.remove(p)
    h.paths[#h.paths + 1] = p
    return p
end

test("init: the default name, a prefix string, the incumbent's options", function()
    -- No name: nginx-lua-prometheus's dict name (the path keeps the test apart).
    local p = sm.init(nil, { path = path("default"), sync_interval = 0.1, lookup_max_size = 1000 })
    eq(p.name, "prometheus_metrics")
    eq(p:init_worker(), true)
    eq(p:init_worker(0.5), true)
    contains(raises(p.init_worker, p, "soon"), 'bad argument "sync_interval"')
    contains(raises(p.init_worker, p, 0), 'bad argument "sync_interval"')
    -- A string second argument is the prefix; it goes before every family name,
    -- the error counter's too.
    local qname = "lt_dropin_prefix_" .. math.random(1, 1e9)
    h.paths[#h.paths + 1] = "/dev/shm/shmetrics-" .. qname
    local q = sm.init(qname, "myapp_")
    eq(q.prefix, "myapp_")
    local r = sm.init("dropin_opts", { path = path("opts"), prefix = "svc_", error_metric_name = "svc_errs_total" })
    r:counter("hits_total", "Hits"):inc(2)
    local body = r:metric_data("text")
    eq(sample(body, "svc_hits_total"), "2")
    eq(sample(body, "svc_svc_errs_total"), "0")
    eq(sample(body, "nginx_metric_errors_total"), nil)
    contains(raises(r.counter, r, "svc_errs_total", "x"), "error counter's name")
    -- Options are still checked.
    contains(raises(sm.init, "dropin_bad1", { path = path("b1"), sync_interval = -1 }), 'bad option "sync_interval"')
    contains(raises(sm.init, "dropin_bad2", { path = path("b2"), format = "json" }), 'bad option "format"')
    contains(raises(sm.init, "dropin_bad3", { path = path("b3"), prefix = "9x" }), 'bad option "prefix"')
    contains(raises(sm.init, "dropin_bad4", { path = path("b4"), error_metric_name = "bad name" }),
             'bad option "error_metric_name"')
end)

test("numeric strings are numbers; other strings are refused and counted", function()
    local p = h.registry()
    local c = p:counter("n_total", "N", { "k" })
    local g = p:gauge("n_gauge", "N", { "k" })
    local hh = p:histogram("n_seconds", "N", { "k" }, { 0.1, 1 })
    assert(c:inc("2", { "a" })); assert(c:inc(" 0.5 ", { "a" }))
    assert(g:set("7", { "a" })); assert(g:inc("3", { "a" })); assert(g:dec("1.5", { "a" }))
    assert(hh:observe("0.25", { "a" }))
    local child = assert(c:labels({ "b" }))
    assert(child:inc("4"))
    local ok, err = c:inc("2 apples", { "a" })
    eq(ok, nil); contains(err, 'value must be a number, got string "2 apples"')
    ok, err = c:inc("-1", { "a" })
    eq(ok, nil); contains(err, "counters cannot decrease")
    local body = p:metric_data("text")
    eq(sample(body, 'n_total{k="a"}'), "2.5")
    eq(sample(body, 'n_total{k="b"}'), "4")
    eq(sample(body, 'n_gauge{k="a"}'), "8.5")
    eq(sample(body, 'n_seconds_bucket{k="a",le="1"}'), "1")
    eq(sample(body, 'n_seconds_sum{k="a"}'), "0.25")
    eq(sample(body, 'shmetrics_errors_total{reason="value_type"}'), "1")
    eq(sample(body, 'shmetrics_errors_total{reason="value_negative"}'), "1")
    -- Every hot-path error is in the incumbent's error counter too.
    eq(sample(body, "nginx_metric_errors_total"), "2")
    p:log_error("a", "b")
    p:log_error_kv("k", "v", "failed")
    eq(sample(p:metric_data("text"), "nginx_metric_errors_total"), "4")
end)

test("log_error as a process's first call counts it (no update before)", function()
    local p = h.registry()
    p:log_error("first")
    eq(sample(p:metric_data("text"), "nginx_metric_errors_total"), "1")
end)

test("metric_data() is an array of lines that table.concat joins into the exposition", function()
    local p = h.registry()
    p:counter("md_total", "MD", { "k" }):inc(1, { "x" })
    local lines = p:metric_data()
    eq(type(lines), "table")
    for i, line in ipairs(lines) do
        assert(line:sub(-1) == "\n" and not line:sub(1, -2):find("\n"), "line " .. i .. " is one line")
    end
    eq(table.concat(lines, ""), p:metric_data("text"))
    eq(lines[1], "# HELP md_total MD\n")
    eq(type(p:metric_data("openmetrics")), "string")
end)

test("hot-path errors: the first logged at once, then one line per interval with the count", function()
    -- In a child process whose global ngx (read when the module loads) is a
    -- stand-in that records ngx.log lines and lets the test move ngx.now.
    local file = path("log") .. ".lua"
    local region = path("logregion")
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local f = assert(io.open(file, "w"))
    f:write(string.format([[
        package.path = "%s/lua/?.lua;" .. package.path
        package.cpath = "%s/?.so;" .. package.cpath
        local now, phase = 1000, "init"   -- init in init_by_lua, updates in a timer
        ngx = { ERR = 4, WARN = 5, now = function() return now end,
                get_phase = function() return phase end,
                log = function(_, ...) io.write(table.concat({ ... }), "\n") end }
        local p = require("resty.shmetrics").init("x", { path = "%s", error_log_interval = 0.2 })
        local c = p:counter("le_total", "L", { "k" })
        phase = "timer"
        for _ = 1, 5 do c:inc(-1, { "a" }) end   -- one line, 4 suppressed
        c:inc(1, { "a", "b" })                   -- another reason: its own first line
        now = now + 0.3
        c:inc(-2, { "a" })                       -- the interval passed: a line with the count
        c:inc(-2, { "a" })                       -- suppressed again
    ]], root, libdir, region))
    f:close()
    local pipe = io.popen("luajit " .. file .. " 2>&1")
    local logged = {}
    for line in pipe:lines() do logged[#logged + 1] = line end
    pipe:close()
    os.remove(file)
    eq(#logged, 3, "lines logged: " .. table.concat(logged, " | "))
    contains(logged[1], "le_total: counters cannot decrease (value -1) (reason value_negative)")
    contains(logged[2], "le_total needs 1 label values, got more (reason label_count)")
    contains(logged[3], "le_total: counters cannot decrease (value -2) (reason value_negative; "
             .. "4 more of this reason for le_total not logged in the last 0.3 s)")
end)

test("negotiation never renames a stored series; the format option forces one", function()
    local p = h.registry()
    p:counter("nginx_http_request_size_bytes", "Bytes"):inc(5)
    eq(p.om_renames, "nginx_http_request_size_bytes")
    local q = h.registry()
    q:counter("ok_total", "OK")
    eq(q.om_renames, nil)
    local r = h.registry({ format = "openmetrics" })
    eq(r.format, 1)
    local t = h.registry({ format = "text" })
    eq(t.format, 0)
end)

return T
