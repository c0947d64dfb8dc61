-- The per-request benchmark's log handlers (nginx-test-conf/bench_req.conf).
-- Each records the seed's gateway set for one request — gateway_requests_total,
-- gateway_request_duration_seconds, model_requests_total, model input and
-- output tokens, model cost — with label values taken from the request.

local ops = require "ops"

local tonumber = tonumber
local ngx = ngx

local M = {}

-- The metric objects (also for handler code written inline in nginx.conf).
local m = {}
M.m = m

-- init_by_lua: the families (names and labels as the seed's catalog has them).
function M.define(prometheus)
    m.requests = prometheus:counter("gateway_requests_total", "Requests through the gateway",
                                    { "method", "path", "namespace" })
    m.duration = prometheus:histogram("gateway_request_duration_seconds", "Request latency",
                                      { "method", "path", "namespace" })
    m.model_requests = prometheus:counter("model_requests_total", "Model requests",
                                          { "model", "namespace", "status" })
    m.tokens_in = prometheus:counter("model_tokens_input_total", "Input tokens", { "model", "namespace" })
    m.tokens_out = prometheus:counter("model_tokens_output_total", "Output tokens", { "model", "namespace" })
    m.cost = prometheus:counter("model_cost_usd_total", "Spend in USD", { "model", "namespace" })
end

-- What every variant reads from the request (so /empty costs the same reads).
local function vars()
    local var = ngx.var
    return var.request_method, "/v1/chat/completions", var.arg_ns, var.arg_model,
           tonumber(var.request_time)
end

-- /empty: the reads, no metrics.
function M.empty()
    local method, path, ns, model, dur = vars()
    return method, path, ns, model, dur
end

-- /shmetrics: the set through resty.shmetrics, label tables built per request.
function M.shmetrics()
    local method, path, ns, model, dur = vars()
    local lv = { method, path, ns }
    m.requests:inc(1, lv)
    m.duration:observe(dur, lv)
    m.model_requests:inc(1, { model, ns, "success" })
    local lm = { model, ns }
    m.tokens_in:inc(120, lm)
    m.tokens_out:inc(480, lm)
    m.cost:inc(0.0042, lm)
end

-- /shdict: the same set as a pure-Lua shared-dict library does it: one key
-- string per update built by concatenation, then DICT:incr (a histogram is
-- bucket + _count + _sum: 8 incr calls in all).
function M.shdict()
    local method, path, ns, model, dur = vars()
    ops.gateway_set_shdict(ngx.shared.metrics, method, path, ns, model, dur)
end

return M
