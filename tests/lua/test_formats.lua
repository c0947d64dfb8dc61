-- OpenMetrics rendering, Accept negotiation and family filtering.
local h = require "helpers"
local eq, contains, raises = h.eq, h.contains, h.raises

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

test("OpenMetrics: counter families without _total, samples with it, # EOF last", function()
    local p = h.registry()
    local c = p:counter("requests_total", "Requests \"quoted\"", { "code" })
    local plain = p:counter("bytes", "Bytes")
    c:inc(3, { "200" }); plain:inc(5)
    local body = assert(p:metric_data("openmetrics"))
    assert(h.has_line(body, "# TYPE requests counter"), body)
    assert(h.has_line(body, '# HELP requests Requests \\"quoted\\"'), body)
    eq(h.sample(body, 'requests_total{code="200"}'), "3")
    assert(h.has_line(body, "# TYPE bytes counter"), body)
    eq(h.sample(body, "bytes_total"), "5")
    assert(h.has_line(body, "# TYPE shmetrics_errors counter"), body)
    eq(body:sub(-6), "# EOF\n")
    local text = assert(p:metric_data())
    assert(h.has_line(text, "# TYPE requests_total counter"), text)
    assert(h.has_line(text, '# HELP requests_total Requests "quoted"'), text)
    eq(h.sample(text, "bytes"), "5")
    assert(not text:find("# EOF", 1, true))
end)

test("metric_data rejects an unknown format", function()
    local p = h.registry()
    local ok, err = p:metric_data("json")
    eq(ok, nil); contains(err, "format")
end)

test("names that collide in either format are refused at definition", function()
    local p = h.registry()
    p:counter("jobs_total", "J")
    contains(raises(p.gauge, p, "jobs", "J"), 'both would expose "jobs"')
    contains(raises(p.counter, p, "jobs", "J"), "collides")
    p:gauge("temp", "T")
    contains(raises(p.counter, p, "temp_total", "T"), 'both would expose "temp"')
    p:histogram("lat", "L")
    contains(raises(p.gauge, p, "lat_sum", "L"), 'both would expose "lat_sum"')
end)

test("filtering by family name, counters also without _total", function()
    local p = h.registry()
    local a = p:counter("a_total", "A")
    local b = p:gauge("b", "B")
    a:inc(1); b:set(2)
    local body = assert(p:metric_data("text", { "b" }))
    eq(h.sample(body, "b"), "2")
    eq(h.sample(body, "a_total"), nil)
    eq(h.sample(body, "shmetrics_series_used"), nil)
    body = assert(p:metric_data("text", { "a", "shmetrics_series_used" }))
    eq(h.sample(body, "a_total"), "1")
    eq(h.sample(body, "b"), nil)
    eq(h.sample(body, "shmetrics_series_used"), "2")
    body = assert(p:metric_data("openmetrics", "nothing_by_that_name"))
    eq(body, "# EOF\n")
    local ok, err = p:metric_data("text", { 1 })
    eq(ok, nil); contains(err, "names[1]")
end)

test("Accept negotiation follows q-values the way Prometheus sends them", function()
    local neg = require("resty.shmetrics")._negotiate
    local OM, TEXT = 1, 0
    eq(neg(nil), TEXT)
    eq(neg(""), TEXT)
    eq(neg("*/*"), TEXT)
    eq(neg("text/plain"), TEXT)
    eq(neg("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
           .. "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), OM)
    eq(neg("application/openmetrics-text; version=0.0.1; q=0.75, text/plain; version=0.0.4; q=0.5"), OM)
    eq(neg("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"), TEXT)
    eq(neg("application/openmetrics-text;version=2.0.0"), TEXT)
    eq(neg("application/openmetrics-text;q=0"), TEXT)
    eq(neg({ "text/plain;q=0.1", "application/openmetrics-text" }), OM)
end)

return T
