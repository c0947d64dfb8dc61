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
    local text = assert(p:metric_data("text"))
    assert(h.has_line(text, "# TYPE requests_total counter"), text)
    assert(h.has_line(text, '# HELP requests_total Requests "quoted"'), text)
    eq(h.sample(text, "bytes"), "5")
    assert(not text:find("# EOF", 1, true))
end)

test("metric_data rejects an unknown format", function()
    local p = h.registry()
    local ok, err = p:metric_data("xml")
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

-- A small JSON reader for the test (strict enough for our output).
local function json_decode(s)
    local pos = 1
    local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
    local value
    local function str()
        local out, i = {}, pos + 1
        while true do
            local c = s:sub(i, i)
            if c == '"' then pos = i + 1; return table.concat(out) end
            if c == "\\" then
                local e = s:sub(i + 1, i + 1)
                local map = { n = "\n", t = "\t", r = "\r", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
                if e == "u" then
                    out[#out + 1] = string.char(tonumber(s:sub(i + 2, i + 5), 16)); i = i + 6
                else
                    out[#out + 1] = assert(map[e], "bad escape"); i = i + 2
                end
            else
                out[#out + 1] = c; i = i + 1
            end
        end
    end
    function value()
        ws()
        local c = s:sub(pos, pos)
        if c == "{" then
            local t = {}; pos = pos + 1; ws()
            if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
            while true do
                ws(); local k = str(); ws(); assert(s:sub(pos, pos) == ":"); pos = pos + 1
                t[k] = value(); ws()
                local d = s:sub(pos, pos); pos = pos + 1
                if d == "}" then return t end
                assert(d == ",", "expected , at " .. pos)
            end
        elseif c == "[" then
            local t = {}; pos = pos + 1; ws()
            if s:sub(pos, pos) == "]" then pos = pos + 1; return t end
            while true do
                t[#t + 1] = value(); ws()
                local d = s:sub(pos, pos); pos = pos + 1
                if d == "]" then return t end
                assert(d == ",", "expected , at " .. pos)
            end
        elseif c == '"' then
            return str()
        else
            local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
            assert(num and #num > 0, "bad value at " .. pos .. ": " .. s:sub(pos, pos + 20))
            pos = pos + #num
            return tonumber(num)
        end
    end
    local v = value(); ws()
    assert(pos == #s + 1, "trailing data at " .. pos)
    return v
end

test("JSON view: families, labels, values, cumulative buckets", function()
    local p = h.registry({ chunk_bytes = 16 })
    local c = p:counter("ns_requests_total", "Requests \"by\" namespace", { "namespace" })
    local g = p:gauge("temp", "T")
    local hh = p:histogram("lat_seconds", "L", { "model" }, { 0.5, 1 })
    c:inc(3, { "wechat" }); c:inc(2, { 'we"ird\n' })
    g:set(-1 / 0)
    hh:observe(0.2, { "gpt-4" }); hh:observe(0.7, { "gpt-4" }); hh:observe(3, { "gpt-4" })
    local body = assert(p:metric_data("json"))
    local doc = json_decode(body)
    eq(#doc.families, 3)
    local f1, f2, f3 = doc.families[1], doc.families[2], doc.families[3]
    eq(f1.name, "ns_requests_total"); eq(f1.type, "counter"); eq(f1.help, 'Requests "by" namespace')
    eq(f1.labels[1], "namespace")
    eq(#f1.series, 2)
    eq(f1.series[1].labels.namespace, "wechat"); eq(f1.series[1].value, 3)
    eq(f1.series[2].labels.namespace, 'we"ird\n'); eq(f1.series[2].value, 2)
    eq(f2.name, "temp"); eq(f2.series[1].value, "-Inf")
    eq(f3.type, "histogram")
    local s = f3.series[1]
    eq(s.labels.model, "gpt-4")
    eq(#s.buckets, 3)
    eq(s.buckets[1][1], 0.5); eq(s.buckets[1][2], 1)
    eq(s.buckets[2][1], 1); eq(s.buckets[2][2], 2)
    eq(s.buckets[3][1], "+Inf"); eq(s.buckets[3][2], 3)
    eq(s.sum, 3.9); eq(s.count, 3)
    local only = json_decode(assert(p:metric_data("json", { "temp" })))
    eq(#only.families, 1); eq(only.families[1].name, "temp")
    eq(assert(p:metric_data("json", { "none" })), '{"families":[]}\n')
end)

return T
