-- resty.shmetrics.gateway without nginx: the request scanner, the usage parser,
-- the JSON and SSE response scanners fed every split of a body into chunks,
-- the error classification, and the option checks of new().
local h = require "helpers"
local eq, contains, raises = h.eq, h.contains, h.raises
local gateway = require "resty.shmetrics.gateway"
-- The inner modules, for their unit tests.
local json = require "resty.shmetrics.gateway.json"
local stream = require "resty.shmetrics.gateway.stream"
local outcome = require "resty.shmetrics.gateway.outcome"
local I = {
    scan_request = require("resty.shmetrics.gateway.request").scan_request,
    header_var = require("resty.shmetrics.gateway.options").header_var,
    parse_usage = json.parse_usage, json_feed = stream.json_feed, sse_feed = stream.sse_feed,
    classify = outcome.classify, usage_problem = outcome.usage_problem,
    last_entry = outcome.last_entry,
    USAGE_OK = json.USAGE_OK, USAGE_NULL = json.USAGE_NULL, NOT_KEY = json.NOT_KEY,
    MORE = json.MORE, BAD = json.BAD, USAGE_MAX = stream.USAGE_MAX,
    MODE_JSON = stream.MODE_JSON, MODE_SSE = stream.MODE_SSE,
    MODE_UNSUPPORTED = stream.MODE_UNSUPPORTED,
}

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

------------------------------------------------------------------------------
-- request bodies

local function scan(body)
    local out = {}
    local r = I.scan_request(body, out)
    return r, out.req_model, out.req_include_usage
end

test("request: model found at top level after messages, nested keys ignored", function()
    local body = [[{"messages":[{"role":"user","content":"say \"model\": \"x\" and {\"model\":1} ]}"}],
        "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",
        "properties":{"model":{"type":"string"}}}}}],
        "temperature":0.5, "n":1, "stop":null, "logit_bias":{}, "stream":true,
        "model" : "gpt-4o-mini" }]]
    local r, model, iu = scan(body)
    eq(r, true); eq(model, "gpt-4o-mini"); eq(iu, nil)
end)

test("request: stream_options.include_usage, whitespace, escapes before the key", function()
    local r, model, iu = scan(' \n{ "model":"gpt-4o", "stream": true, "stream_options" : { "include_usage" : true } ,'
                              .. ' "messages": [ {"content": "back\\\\slash\\\\"} ] } \n')
    eq(r, true); eq(model, "gpt-4o"); eq(iu, true)
    r, model, iu = scan('{"stream_options":{"include_usage":false},"model":"m"}')
    eq(r, true); eq(model, "m"); eq(iu, false)
    -- include_usage only counts inside stream_options
    r, model, iu = scan('{"include_usage":true,"model":"m"}')
    eq(iu, nil)
end)

test("request: an object without model is a model request with no model", function()
    local r, model = scan('{"input":"hello"}')
    eq(r, true); eq(model, nil)
    r, model = scan("{}")
    eq(r, true); eq(model, nil)
    r, model = scan('{"model":42}')
    eq(r, true); eq(model, nil)
end)

test("request: bodies that are not JSON objects are not model requests", function()
    for _, body in ipairs({ "", "   ", "[1,2]", "hello", "model=gpt-4o", '"model"' }) do
        eq(scan(body), false, body)
    end
end)

test("request: truncated or broken objects are malformed (nil)", function()
    local full = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi \\"there\\""}],"stream":false}'
    for cut = 1, #full - 1 do
        eq(scan(full:sub(1, cut)), nil, "cut at " .. cut)
    end
    eq(scan(full), true)
    for _, body in ipairs({ '{"model" "x"}', '{"model":"x",}', '{"model":"x"} trailing', '{model:"x"}',
                            '{"a":1 "b":2}', '{"a":[1,2}' }) do
        eq(scan(body), nil, body)
    end
end)

test("request: a large body scans fast and finds a trailing model", function()
    local parts = {}
    for i = 1, 2000 do
        parts[i] = '{"role":"user","content":"' .. string.rep("lorem \\\"ipsum\\\" ", 20) .. '"}'
    end
    local body = '{"messages":[' .. table.concat(parts, ",") .. '],"model":"gpt-4o"}'
    assert(#body > 500000, #body)
    local t = os.clock()
    local r, model = scan(body)
    local dt = os.clock() - t
    eq(r, true); eq(model, "gpt-4o")
    assert(dt < 0.5, "scanning " .. #body .. " bytes took " .. dt .. " s")
end)

------------------------------------------------------------------------------
-- usage objects

local function usage(s)
    local k = assert(s:find('"usage"', 1, true))
    return I.parse_usage(s, k, #s)
end

test("usage: OpenAI, Responses API, embeddings, details, exponents", function()
    local code, a, b = usage('"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}')
    eq(code, I.USAGE_OK); eq(a, 12); eq(b, 30)
    code, a, b = usage('"usage" : { "input_tokens" : 7 , "output_tokens" : 9 , "output_tokens_details":{"reasoning_tokens":3}}')
    eq(code, I.USAGE_OK); eq(a, 7); eq(b, 9)
    code, a, b = usage('"usage":{"prompt_tokens":8,"total_tokens":8}')
    eq(code, I.USAGE_OK); eq(a, 8); eq(b, 0)
    code, a, b = usage('"usage":{"prompt_tokens_details":{"cached_tokens":5,"audio_tokens":0},"prompt_tokens":1e3,'
                       .. '"completion_tokens":0,"completion_tokens_details":{"reasoning_tokens":0,"x":[1,"a",null,true]}}')
    eq(code, I.USAGE_OK); eq(a, 1000); eq(b, 0)
end)

test("usage: null, a string value, and bad objects", function()
    eq(usage('"usage":null,'), I.USAGE_NULL)
    eq(usage('{"content":"usage"}'), I.NOT_KEY)
    eq(usage('["usage", 1]'), I.NOT_KEY)
    for _, s in ipairs({
        '"usage":{}', '"usage":{"total_tokens":5}', '"usage":{"prompt_tokens":"12"}',
        '"usage":{"prompt_tokens":-1}', '"usage":{"prompt_tokens":1.5}', '"usage":{"prompt_tokens":01}',
        '"usage":{"prompt_tokens":1,}', '"usage":{"prompt_tokens":1 "completion_tokens":2}',
        '"usage":[1]', '"usage":12', '"usage":nul}', '"usage":{"a":tru}',
        '"usage":{"bad\\q":1,"prompt_tokens":1}', '"usage":{"prompt_tokens":1,"x":"\1"}',
    }) do
        eq(usage(s), I.BAD, s)
    end
end)

test("usage: every truncation of a valid object asks for more input", function()
    local s = '"usage" : {"prompt_tokens": 12, "completion_tokens":30, "total_tokens":42,'
              .. ' "completion_tokens_details": {"reasoning_tokens": 1.5e2, "s": "a\\u00e9\\n"}}'
    eq((usage(s)), I.USAGE_OK)
    for cut = 7, #s - 1 do
        eq(I.parse_usage(s, 1, cut), I.MORE, "cut at " .. cut .. ": " .. s:sub(1, cut))
    end
end)

------------------------------------------------------------------------------
-- non-streamed JSON responses

local CHAT = '{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o",'
    .. '"choices":[{"index":0,"message":{"role":"assistant","content":"the word \\"usage\\": and usage"},'
    .. '"logprobs":{"content":[{"token":"usage","logprob":-0.1}]},"finish_reason":"stop"}],'
    .. '"usage":{"prompt_tokens":123,"completion_tokens":45,"total_tokens":168,'
    .. '"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp"}\n'

local function feed_json(chunks)
    local st = {}
    for i, c in ipairs(chunks) do
        I.json_feed(st, c, i == #chunks)
    end
    return st
end

local function splits(body, k)
    -- every split of body into chunks at the positions in k (1 or 2 cut points)
    local out = {}
    local n = #body
    if k == 1 then
        for a = 0, n do
            out[#out + 1] = { body:sub(1, a), body:sub(a + 1) }
        end
    else
        for a = 0, n, 3 do
            for b = a, n, 5 do
                out[#out + 1] = { body:sub(1, a), body:sub(a + 1, b), body:sub(b + 1), "" }
            end
        end
    end
    return out
end

test("json: usage read wherever the body is cut into chunks", function()
    for _, k in ipairs({ 1, 2 }) do
        for _, chunks in ipairs(splits(CHAT, k)) do
            local st = feed_json(chunks)
            local what = "chunks " .. table.concat(chunks, "|")
            eq(st.tokens_in, 123, what); eq(st.tokens_out, 45, what)
            eq(I.usage_problem(setmetatable({ mode = I.MODE_JSON }, { __index = st })), nil, what)
        end
    end
end)

test("json: one byte per chunk", function()
    local chunks = {}
    for i = 1, #CHAT do chunks[i] = CHAT:sub(i, i) end
    local st = feed_json(chunks)
    eq(st.tokens_in, 123); eq(st.tokens_out, 45)
end)

test("json: a large body keeps only small carries between chunks", function()
    local big = '{"object":"list","data":[' .. string.rep('{"embedding":[0.1,-0.2,"x"],"index":0},', 20000)
        .. '{}],"model":"m","usage":{"prompt_tokens":9,"total_tokens":9}}'
    local st = {}
    local size = 8192
    local max_carry = 0
    for i = 1, #big, size do
        I.json_feed(st, big:sub(i, i + size - 1), i + size > #big)
        max_carry = math.max(max_carry, st.carry and #st.carry or 0)
    end
    eq(st.tokens_in, 9); eq(st.tokens_out, 0)
    assert(max_carry <= 6, "carry of " .. max_carry .. " bytes")
end)

local function problem(st, mode)
    st.mode = mode
    return I.usage_problem(st)
end

test("json: missing usage, null usage, malformed body, malformed usage", function()
    eq(problem(feed_json({ '{"id":"x","choices":[]}' }), I.MODE_JSON), "usage_missing")
    eq(problem(feed_json({ '{"id":"x","usage":null}' }), I.MODE_JSON), "usage_missing")
    eq(problem(feed_json({ '{"id":"x","usage":{"prompt_tokens":12,', '"completion_tokens":' }), I.MODE_JSON),
       "response_malformed")
    eq(problem(feed_json({ '<html>bad gateway</html>' }), I.MODE_JSON), "response_malformed")
    eq(problem(feed_json({ '{"usage":{"prompt_tokens":"many"}}' }), I.MODE_JSON), "usage_malformed")
    eq(problem(feed_json({ "", "  " }), I.MODE_JSON), "response_malformed")
    eq(problem({}, I.MODE_UNSUPPORTED), "response_unsupported")
end)

test("json: a usage object larger than the limit is malformed, not buffered", function()
    local pad = string.rep("x", 2 * I.USAGE_MAX)
    local body = '{"usage":{"pad":"' .. pad .. '","prompt_tokens":1}}'
    local st = {}
    for i = 1, #body, 1000 do
        I.json_feed(st, body:sub(i, i + 999), i + 1000 > #body)
        assert(not st.carry or #st.carry < I.USAGE_MAX, "carry of " .. (st.carry and #st.carry or 0))
    end
    eq(st.tokens_in, nil)
    eq(problem(st, I.MODE_JSON), "usage_malformed")
    -- in one chunk it is read: the limit is on what is carried between chunks
    st = feed_json({ body })
    eq(st.tokens_in, 1)
end)

test("json: the last usage that parses wins", function()
    local st = feed_json({ '{"a":{"usage":{"prompt_tokens":1}},"usage":{"prompt_tokens":5,"completion_tokens":6}}' })
    eq(st.tokens_in, 5); eq(st.tokens_out, 6)
end)

------------------------------------------------------------------------------
-- streamed (SSE) responses

local function sse_event(obj) return "data: " .. obj .. "\n\n" end
local STREAM = table.concat({
    sse_event('{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}'),
    sse_event('{"id":"c","choices":[{"index":0,"delta":{"content":"usage"}}],"usage":null}'),
    ": keep-alive\n\n",
    "event: message\nid: 3\nretry: 100\n",
    sse_event('{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}'),
    sse_event('{"id":"c","choices":[],"usage":{"prompt_tokens":17,"completion_tokens":3,"total_tokens":20}}'),
    "data: [DONE]\n\n",
})

local function feed_sse(chunks, times)
    local st = {}
    for i, c in ipairs(chunks) do
        I.sse_feed(st, c, i == #chunks, times and times[i] or i)
    end
    return st
end

test("sse: usage, [DONE] and TTFT wherever the stream is cut", function()
    for _, k in ipairs({ 1, 2 }) do
        for _, chunks in ipairs(splits(STREAM, k)) do
            local st = feed_sse(chunks)
            local what = "chunks " .. table.concat(chunks, "|")
            eq(st.tokens_in, 17, what); eq(st.tokens_out, 3, what)
            eq(st.done, true, what); eq(st.malformed, nil, what)
            eq(st.usage_bad, nil, what)
            -- TTFT: the chunk holding the start of the first data line
            local first = 1
            while #chunks[first] == 0 do first = first + 1 end
            eq(st.ttft_at, first, what)
        end
    end
end)

test("sse: one byte per chunk, CRLF line ends", function()
    local crlf = STREAM:gsub("\n", "\r\n")
    local chunks = {}
    for i = 1, #crlf do chunks[i] = crlf:sub(i, i) end
    local st = feed_sse(chunks)
    eq(st.tokens_in, 17); eq(st.tokens_out, 3); eq(st.done, true); eq(st.malformed, nil)
    eq(st.ttft_at, 1)
end)

test("sse: TTFT is the first data event, not headers or comments", function()
    local st = feed_sse({ ": hello\n\n", "", sse_event('{"a":1}'), "data: [DONE]\n\n" }, { 0.1, 0.2, 0.35, 0.4 })
    eq(st.ttft_at, 0.35)
end)

test("sse: no usage, unrequested usage, malformed lines, unterminated last line", function()
    local st = feed_sse({ sse_event('{"choices":[]}'), "data: [DONE]\n\n" })
    eq(st.tokens_in, nil)
    eq(problem(st, I.MODE_SSE), "usage_not_requested")
    st = feed_sse({ sse_event('{"choices":[]}'), "data: [DONE]\n\n" })
    st.req_include_usage = true
    eq(problem(st, I.MODE_SSE), "usage_missing")
    st = feed_sse({ sse_event('{"a":1}'), "this is not sse\n\n", sse_event('{"usage":{"prompt_tokens":1,"completion_tokens":2}}') })
    eq(st.malformed, true); eq(st.tokens_in, 1)
    eq(problem(st, I.MODE_SSE), "response_malformed")
    st = feed_sse({ "data: not json\n\n" })
    eq(st.malformed, true)
    st = feed_sse({ sse_event('{"usage":{"prompt_tokens":1,') })
    eq(st.usage_bad, true)
    eq(problem(st, I.MODE_SSE), "usage_malformed")
    -- the last line without "\n" is still read at the end of the stream
    st = feed_sse({ sse_event('{"a":1}'), 'data: {"usage":{"prompt_tokens":4,"completion_tokens":5}}' })
    eq(st.tokens_in, 4); eq(st.tokens_out, 5)
end)

test("sse: an overlong line is skipped, later lines are read", function()
    local long = "data: {\"x\":\"" .. string.rep("y", 2 * 1048576) .. "\"}\n\n"
    local chunks = {}
    for i = 1, #long, 65536 do chunks[#chunks + 1] = long:sub(i, i + 65535) end
    chunks[#chunks + 1] = sse_event('{"usage":{"prompt_tokens":2,"completion_tokens":3}}')
    local st = feed_sse(chunks)
    eq(st.tokens_in, 2); eq(st.malformed, true)
end)

------------------------------------------------------------------------------
-- nothing raises, whatever arrives

local function mutate(s, rnd)
    local kind = rnd(4)
    local i = rnd(#s)
    if kind == 1 then       -- truncate
        return s:sub(1, i)
    elseif kind == 2 then   -- flip a byte
        return s:sub(1, i - 1) .. string.char(rnd(256) - 1) .. s:sub(i + 1)
    elseif kind == 3 then   -- insert structural noise
        local noise = { '"', "\\", "{", "}", "[", "]", ":", ",", "\n", "\r", "data:", '"usage"', "null", "-1e9" }
        return s:sub(1, i) .. noise[rnd(#noise)] .. s:sub(i + 1)
    end
    return s:sub(i) .. s:sub(1, i - 1)   -- rotate
end

local function random_chunks(s, rnd)
    local chunks, i = {}, 1
    while i <= #s do
        local n = rnd(3) == 1 and rnd(3) or rnd(200)
        chunks[#chunks + 1] = s:sub(i, i + n - 1)
        i = i + n
    end
    chunks[#chunks + 1] = ""
    return chunks
end

local function sane(st, what)
    for _, k in ipairs({ "tokens_in", "tokens_out" }) do
        local v = st[k]
        assert(v == nil or (type(v) == "number" and v >= 0 and v == math.floor(v)), what .. ": " .. k .. " = " .. tostring(v))
    end
    assert(st.carry == nil or #st.carry < I.USAGE_MAX + 8, what .. ": carry of " .. (st.carry and #st.carry or 0))
end

test("fuzz: mutated bodies in random chunks never raise", function()
    local seed = tonumber(os.getenv("GATEWAY_FUZZ_SEED")) or 20261126
    math.randomseed(seed)
    local rnd = math.random
    local request = '{"model":"gpt-4o","messages":[{"role":"user","content":"a \\"q\\" {x}"}],'
        .. '"stream":true,"stream_options":{"include_usage":true}}'
    for iter = 1, 3000 do
        local what = "seed " .. seed .. " iteration " .. iter
        local body = CHAT
        for _ = 1, rnd(3) do body = mutate(body, rnd) end
        local st = {}
        local chunks = random_chunks(body, rnd)
        for i, c in ipairs(chunks) do
            I.json_feed(st, c, i == #chunks)
        end
        sane(st, what)
        I.usage_problem(setmetatable({ mode = I.MODE_JSON }, { __index = st }))

        local stream = STREAM
        for _ = 1, rnd(3) do stream = mutate(stream, rnd) end
        st = {}
        chunks = random_chunks(stream, rnd)
        for i, c in ipairs(chunks) do
            I.sse_feed(st, c, i == #chunks, i)
        end
        sane(st, what)

        local req = request
        for _ = 1, rnd(3) do req = mutate(req, rnd) end
        local out = {}
        local r = I.scan_request(req, out)
        assert(r == true or r == false or r == nil, what)
        assert(out.req_model == nil or type(out.req_model) == "string", what)
    end
end)

------------------------------------------------------------------------------
-- outcome classification (nginx variables as a table)

test("classify: statuses and upstream variables", function()
    local C = I.classify
    local up = { upstream_addr = "127.0.0.1:1", upstream_connect_time = "0.000", upstream_header_time = "0.001",
                 upstream_status = "200", request_completion = "OK" }
    local function with(t)
        local v = {}
        for k, x in pairs(up) do v[k] = x end
        for k, x in pairs(t) do v[k] = x end
        return v
    end
    local function c(status, started, eof, vars)
        local e, p = C(status, started, eof, vars)
        return tostring(e) .. "/" .. tostring(p)
    end
    eq(c(200, true, true, up), "nil/false")
    eq(c(204, nil, nil, up), "nil/false")                     -- header only
    eq(c(400, true, true, {}), "client_error/false")           -- the gateway's own 4xx
    eq(c(429, true, true, up), "client_error/true")
    eq(c(499, nil, nil, with({ upstream_status = "-" })), "client_abort/true")
    eq(c(499, nil, nil, {}), "client_abort/false")
    eq(c(200, true, nil, with({ request_completion = "" })), "client_abort/true")
    eq(c(200, nil, nil, with({ request_completion = "" })), "client_abort/true")
    eq(c(200, true, nil, up), "upstream_incomplete/true")
    eq(c(500, true, true, with({ upstream_status = "500" })), "upstream_5xx/true")
    eq(c(504, true, true, with({ upstream_status = "504" })), "upstream_5xx/true")  -- the upstream's own 504
    eq(c(504, true, true, with({ upstream_status = "504", upstream_header_time = "-" })), "upstream_timeout/true")
    eq(c(502, true, true, with({ upstream_status = "502", upstream_header_time = "-" })), "upstream_5xx/true")
    eq(c(502, true, true, with({ upstream_status = "502", upstream_connect_time = "-", upstream_header_time = "-" })),
       "upstream_connect_failed/true")
    eq(c(504, true, true, with({ upstream_status = "504", upstream_connect_time = "-" })), "upstream_connect_failed/true")
    -- retries: the last attempt decides
    eq(c(504, true, true, with({ upstream_status = "502, 504", upstream_connect_time = "-, 0.001",
                                 upstream_header_time = "-, -" })), "upstream_timeout/true")
    eq(c(500, true, true, {}), "internal_error/false")
    eq(I.last_entry("502, 504 : 200"), "200")
    eq(I.last_entry("-"), "-")
end)

------------------------------------------------------------------------------
-- new() and the helpers

local function opts(extra)
    local o = { route = { ["/v1/chat/completions"] = "/v1/chat/completions" }, models = { "gpt-4o" } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
end

test("new: options are checked at setup", function()
    local p = h.registry()
    contains(raises(gateway.new, p, opts({ bogus = 1 })), 'bad option "bogus"')
    contains(raises(gateway.new, p, { models = {} }), 'bad option "route"')
    contains(raises(gateway.new, p, opts({ models = "gpt-4o" })), 'bad option "models"')
    contains(raises(gateway.new, p, opts({ models = { "a", b = "c" } })), 'alias "b" names "c"')
    contains(raises(gateway.new, p, opts({ prices = { ["gpt-5"] = { input = 1, output = 2 } } })), '"gpt-5" is not in models')
    contains(raises(gateway.new, p, opts({ prices = { ["gpt-4o"] = { input = 1 } } })), "USD per million tokens")
    contains(raises(gateway.new, p, opts({ namespace = { header = "X-N", var = "n" } })), "not both")
    contains(raises(gateway.new, p, opts({ namespace = { headr = "X-N" } })), 'namespace.headr')
    contains(raises(gateway.new, p, opts({ buckets = { 1, 1 } })), 'bad option "buckets"')
    contains(raises(gateway.new, p, opts({ upstream = 5 })), 'bad option "upstream"')
    contains(raises(gateway.new, {}, opts()), "bad argument #1")
    eq(I.header_var("X-Name-Space"), "http_x_name_space")
    local gw = gateway.new(p, opts({ models = { "gpt-4o", ["gpt-4o-2024-08-06"] = "gpt-4o" },
                                     prices = { ["gpt-4o"] = { input = 2.5, output = 10 }, other = { input = 1, output = 1 } } }))
    eq(gw.model_labels["gpt-4o-2024-08-06"], "gpt-4o")
    eq(gw.prices["gpt-4o"][1], 2.5e-6)
end)

test("new: every family of the catalog, with its labels", function()
    local p = h.registry()
    local gw = gateway.new(p, opts())
    assert(gw:cache_hit("namespace_config"))
    assert(gw:cache_miss("namespace_config"))
    assert(gw:rate_limit_hit("token_limit", "wechat"))
    assert(gw:rate_limit_violation("token_limit", "wechat"))
    assert(gw:set_accuracy("gpt-4o", "classification", 93.5))
    assert(gw:set_accuracy("llama", "classification", 50))
    local ok, err = gw:set_accuracy("gpt-4o", "classification", 101)
    eq(ok, nil); contains(err, "0 to 100")
    local want = {
        gateway_requests = "gateway_requests_total method,path,namespace",
        gateway_duration = "gateway_request_duration_seconds method,path,namespace",
        http_requests = "http_requests_total method,endpoint,status_code,namespace",
        http_duration = "http_request_duration_seconds method,endpoint,namespace",
        namespace_requests = "namespace_requests_total namespace,status",
        namespace_tokens = "namespace_tokens_total namespace,token_type",
        errors = "errors_total error_type,namespace,upstream",
        model_requests = "model_requests_total model,namespace,status",
        model_duration = "model_request_duration_seconds model,namespace",
        model_ttft = "model_time_to_first_token_seconds model,namespace",
        tokens_in = "model_tokens_input_total model,namespace",
        tokens_out = "model_tokens_output_total model,namespace",
        throughput = "model_throughput_tokens_per_second model,namespace",
        cost = "model_cost_usd_total model,namespace",
        rate_limit_hits = "rate_limit_hits_total namespace,rule_type",
        rate_limit_violations = "rate_limit_violations_total namespace,rule_type",
        cache_hits = "cache_hits_total cache_type",
        cache_misses = "cache_misses_total cache_type",
        accuracy = "model_accuracy_percent model,task_type",
        instrumentation_errors = "gateway_instrumentation_errors_total reason",
    }
    for field, def in pairs(want) do
        local m = gw[field]
        eq(m.name .. " " .. table.concat(m.label_names, ","), def, field)
    end
    local body = assert(p:metric_data("text"))
    eq(h.sample(body, 'cache_hits_total{cache_type="namespace_config"}'), "1")
    eq(h.sample(body, 'rate_limit_violations_total{namespace="wechat",rule_type="token_limit"}'), "1")
    eq(h.sample(body, 'model_accuracy_percent{model="gpt-4o",task_type="classification"}'), "93.5")
    eq(h.sample(body, 'model_accuracy_percent{model="other",task_type="classification"}'), "50")
    -- a second gateway on the same registry shares the families
    gateway.new(p, opts())
end)

------------------------------------------------------------------------------
-- the per-chunk scanners compile (traces, no NYI; short byte loops may abort
-- as "inner loop in root trace" and are then compiled as side traces)

local function compiles(what, f)
    local jit = require "jit"
    jit.flush()
    local log = os.tmpname()
    local v = require "jit.v"
    v.on(log)
    f()
    v.off()
    local problems, looped = {}, false
    for l in io.lines(log) do
        if l:find("NYI", 1, true) then problems[#problems + 1] = l end
        if l:find("^%[TRACE +%d+ ") then looped = true end
    end
    os.remove(log)
    if #problems > 0 then
        error(what .. ": NYI in traces:\n" .. table.concat(problems, "\n"), 2)
    end
    if not looped then
        error(what .. ": no trace compiled", 2)
    end
end

test("jit: the SSE and JSON scanners compile without NYI", function()
    local events = {}
    for i = 1, 8 do
        events[i] = sse_event('{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
            .. '"choices":[{"index":0,"delta":{"content":"token ' .. i .. '"},"finish_reason":null}],"usage":null}')
    end
    compiles("sse_feed", function()
        for _ = 1, 2000 do
            local st = {}
            for i = 1, 8 do I.sse_feed(st, events[i], false, 1) end
        end
    end)
    local chunks = {}
    for i = 1, #CHAT, 64 do chunks[#chunks + 1] = CHAT:sub(i, i + 63) end
    compiles("json_feed", function()
        for _ = 1, 2000 do
            local st = {}
            for i = 1, #chunks do I.json_feed(st, chunks[i], i == #chunks) end
        end
    end)
end)

return T
