-- resty.shmetrics.gateway: the seed plan's LLM-gateway metric catalog, recorded by
-- three phase handlers. See docs/gateway.md.
--
--   init_by_lua:          gw = require("resty.shmetrics.gateway").new(prometheus, opts)
--   access_by_lua:        gw:access()        reads the request body: model (and stream options)
--   body_filter_by_lua:   gw:body_filter()   scans the response in place: usage, TTFT
--   log_by_lua:           gw:log()           records everything once per request
--
-- Nothing here raises at request time: failures to read a request or a response
-- are counted in gateway_instrumentation_errors_total{reason} and the response
-- passes through untouched (ngx.arg[1] is only ever read).
--
-- The phase handlers and the public methods; the parts they use, each in its own
-- module under resty.shmetrics.gateway (docs/architecture.md):
--   options   the checks of new()'s options
--   outcome   error_type of a request, problems of a model response
--   stream    the response feeders (JSON, SSE)
--   request   the lenient request-body scanner
--   json      JSON scanning: lenient helpers, the strict usage parser

local options = require "resty.shmetrics.gateway.options"
local request = require "resty.shmetrics.gateway.request"
local stream = require "resty.shmetrics.gateway.stream"
local outcome = require "resty.shmetrics.gateway.outcome"

local type = type
local pcall = pcall
local tostring = tostring
local error = error
local setmetatable = setmetatable
local find = string.find
local lower = string.lower
local ngx = ngx

local ok_new_tab, new_tab = pcall(require, "table.new")
if not ok_new_tab then
    new_tab = function() return {} end
end

local scan_request = request.scan_request
local json_feed = stream.json_feed
local sse_feed = stream.sse_feed
local classify = outcome.classify
local usage_problem = outcome.usage_problem
local MODE_NONE = stream.MODE_NONE
local MODE_JSON = stream.MODE_JSON
local MODE_SSE = stream.MODE_SSE
local MODE_UNSUPPORTED = stream.MODE_UNSUPPORTED

local _M = { _VERSION = "0.1.0" }

local OTHER = options.OTHER
local NONE = "none"

-- Longest namespace label value; longer values become "other".
local NAMESPACE_MAX = 64

local CTX_KEY = "shmetrics_gateway"

local METHODS = { GET = "GET", POST = "POST", PUT = "PUT", DELETE = "DELETE",
                  PATCH = "PATCH", HEAD = "HEAD", OPTIONS = "OPTIONS" }
-- Methods whose requests are read for a JSON body.
local BODY_METHODS = { POST = true, PUT = true, PATCH = true }

-- The reasons of gateway_instrumentation_errors_total{reason}:
--   request_unreadable     body spooled to a file or unreadable: model "other"
--   request_malformed      body starts like a JSON object but does not parse
--   response_unsupported   2xx model response neither JSON nor SSE, or compressed
--   response_malformed     JSON not framed as an object; SSE line not SSE
--   usage_malformed        a usage object that does not parse, or holds no counts
--   usage_missing          complete 2xx model response without usage
--   usage_not_requested    SSE stream without usage; the request lacked
--                          stream_options.include_usage
--   namespace_overflow     more distinct namespaces than max_namespaces
--   callback_error         a namespace/route/upstream function raised: see error.log
--   internal               a Lua error in this module (a bug): see error.log

local Gateway = {}
Gateway.__index = Gateway

-- Defines the catalog's metrics in the registry `p` (docs/gateway.md).
local function define_metrics(self, p, buckets, ttft_buckets)
    local MNP = { "method", "path", "namespace" }
    self.gateway_requests = p:counter("gateway_requests_total",
        "Requests through the gateway, by route template", MNP)
    self.gateway_duration = p:histogram("gateway_request_duration_seconds",
        "Time from the first byte of a request to the last byte of its response", MNP, buckets)
    self.http_requests = p:counter("http_requests_total",
        "Requests through the gateway, by route template and response status",
        { "method", "endpoint", "status_code", "namespace" })
    self.http_duration = p:histogram("http_request_duration_seconds",
        "Time from the first byte of a request to the last byte of its response",
        { "method", "endpoint", "namespace" }, buckets)
    self.namespace_requests = p:counter("namespace_requests_total",
        "Requests per namespace; status is success or error (see errors_total)",
        { "namespace", "status" })
    self.namespace_tokens = p:counter("namespace_tokens_total",
        "Model tokens per namespace, from the responses' usage", { "namespace", "token_type" })
    self.errors = p:counter("errors_total",
        "Failed requests by cause: client_error, client_abort, upstream_5xx, upstream_timeout, "
        .. "upstream_connect_failed, upstream_incomplete, internal_error",
        { "error_type", "namespace", "upstream" })
    self.model_requests = p:counter("model_requests_total",
        "Model API requests (JSON bodies); model is \"other\" when not configured",
        { "model", "namespace", "status" })
    self.model_duration = p:histogram("model_request_duration_seconds",
        "Duration of model API requests, to the last byte of the response",
        { "model", "namespace" }, buckets)
    self.model_ttft = p:histogram("model_time_to_first_token_seconds",
        "Time from the request to the first data event of a streamed (SSE) response",
        { "model", "namespace" }, ttft_buckets)
    self.tokens_in = p:counter("model_tokens_input_total",
        "Input (prompt) tokens, from the responses' usage", { "model", "namespace" })
    self.tokens_out = p:counter("model_tokens_output_total",
        "Output (completion) tokens, from the responses' usage", { "model", "namespace" })
    self.throughput = p:gauge("model_throughput_tokens_per_second",
        "Output tokens per second of generation in the latest response with usage",
        { "model", "namespace" })
    self.cost = p:counter("model_cost_usd_total",
        "Spend in US dollars: tokens times the configured price per million", { "model", "namespace" })
    self.rate_limit_hits = p:counter("rate_limit_hits_total",
        "Requests that reached a rate limit (delayed or refused)", { "namespace", "rule_type" })
    self.rate_limit_violations = p:counter("rate_limit_violations_total",
        "Requests refused by a rate limit", { "namespace", "rule_type" })
    self.cache_hits = p:counter("cache_hits_total", "Cache lookups that found the entry", { "cache_type" })
    self.cache_misses = p:counter("cache_misses_total", "Cache lookups that missed", { "cache_type" })
    self.accuracy = p:gauge("model_accuracy_percent",
        "Model accuracy from offline evaluation, in percent", { "model", "task_type" })
    self.instrumentation_errors = p:counter("gateway_instrumentation_errors_total",
        "Requests or responses the gateway metrics could not read (they pass untouched)",
        { "reason" })
end

--- gateway.new(prometheus, options) -> gw      (init_by_lua)
function _M.new(prometheus, opts)
    if type(prometheus) ~= "table" or type(prometheus.counter) ~= "function" then
        error("bad argument #1: want the registry returned by resty.shmetrics.init", 2)
    end
    if type(opts) ~= "table" then
        error("bad argument #2: want an options table", 2)
    end
    local self = setmetatable({}, Gateway)
    local buckets, ttft_buckets = options.apply(self, opts)
    define_metrics(self, prometheus, buckets, ttft_buckets)
    -- Scratch label arrays, one per arity: filled right before each update
    -- (the library keeps values, never the table).
    self.l1, self.l2, self.l3, self.l4 = { "" }, { "", "" }, { "", "", "" }, { "", "", "", "" }
    self.last_internal_log = 0
    return self
end

local function count(self, reason)
    local l1 = self.l1
    l1[1] = reason
    self.instrumentation_errors:inc(1, l1)
end

-- Counts a Lua error and logs it, at most every 10 s per worker.
local function report(self, reason, what, err)
    count(self, reason)
    local now = ngx.now()
    if now - self.last_internal_log >= 10 then
        self.last_internal_log = now
        ngx.log(ngx.ERR, "shmetrics gateway: ", what, tostring(err))
    end
end

local function internal(self, err)
    report(self, "internal", "", err)
end

-- Calls a function the configuration gave; nil when it raised.
local function callback(self, fn, arg)
    local ok, v = pcall(fn, arg)
    if ok then
        return v
    end
    report(self, "callback_error", "an option's function raised: ", v)
    return nil
end

local function namespace_of(self)
    local ns
    if self.ns_fn then
        ns = callback(self, self.ns_fn)
    elseif self.ns_var then
        ns = ngx.var[self.ns_var]
    end
    if ns == nil or ns == "" or type(ns) ~= "string" then
        return self.ns_default
    end
    local known = self.ns_known
    if known then
        return known[ns] or OTHER
    end
    if #ns > NAMESPACE_MAX then
        return OTHER
    end
    local seen = self.ns_seen
    if not seen[ns] then
        if self.ns_count >= self.max_namespaces then
            count(self, "namespace_overflow")
            return OTHER
        end
        self.ns_count = self.ns_count + 1
        seen[ns] = true
    end
    return ns
end

local function route_of(self)
    local uri = ngx.var.uri
    local r
    if self.routes then
        r = self.routes[uri]
    else
        r = callback(self, self.route_fn, uri)
    end
    if type(r) ~= "string" or r == "" then
        return OTHER
    end
    return r
end

-- The request's state, made at the first phase handler that runs.
local function state(self, ctx)
    local st = ctx[CTX_KEY]
    if st == nil then
        st = new_tab(0, 16)
        st.namespace = namespace_of(self)
        st.route = route_of(self)
        st.method = METHODS[ngx.req.get_method()] or OTHER
        ctx[CTX_KEY] = st
    end
    return st
end

local function access(self)
    local st = state(self, ngx.ctx)
    if st.accessed then
        return
    end
    st.accessed = true
    if not BODY_METHODS[st.method] then
        return
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil then
        if ngx.req.get_body_file() ~= nil then
            st.model = OTHER
            count(self, "request_unreadable")
        end
        return
    end
    local r = scan_request(body, st)
    if r == false then
        return      -- not a JSON object: not a model request
    end
    if r == nil then
        count(self, "request_malformed")
        st.req_model = nil      -- a model read before the error is not trusted
    end
    st.model = self.model_labels[st.req_model] or OTHER
end

-- A phase handler that never raises: an error in the module is counted
-- (reason "internal") and logged, and the response goes on untouched.
local function guarded(handler)
    return function(self)
        local ok, err = pcall(handler, self)
        if not ok then
            internal(self, err)
        end
    end
end

--- gw:access()     (rewrite_by_lua*, access_by_lua*)
Gateway.access = guarded(access)

local function start_mode(st)
    if st.model == nil then
        return MODE_NONE
    end
    local status = ngx.status
    if status < 200 or status >= 300 then
        return MODE_NONE
    end
    local header = ngx.header
    local enc = header["Content-Encoding"]
    if enc ~= nil and enc ~= "identity" then
        return MODE_UNSUPPORTED
    end
    local ctype = header["Content-Type"]
    if type(ctype) ~= "string" then
        return MODE_UNSUPPORTED
    end
    ctype = lower(ctype)
    if find(ctype, "text/event-stream", 1, true) then
        return MODE_SSE
    elseif find(ctype, "json", 1, true) then
        return MODE_JSON
    end
    return MODE_UNSUPPORTED
end

local function body_filter(self)
    local st = ngx.ctx[CTX_KEY]
    if st == nil then
        return
    end
    local eof = ngx.arg[2]
    if eof then
        st.eof = true
    end
    local mode = st.mode
    if mode == nil then
        st.started = true
        mode = start_mode(st)
        st.mode = mode
    end
    if mode == MODE_JSON then
        json_feed(st, ngx.arg[1], eof)
    elseif mode == MODE_SSE then
        -- the clock is only needed until the first event is stamped (TTFT)
        sse_feed(st, ngx.arg[1], eof, st.ttft_at == nil and ngx.now() or 0)
    end
end

--- gw:body_filter()     (body_filter_by_lua*)
Gateway.body_filter = guarded(body_filter)

local function upstream_label(self)
    if self.upstream then
        return self.upstream
    end
    local u
    if self.upstream_fn then
        u = callback(self, self.upstream_fn)
    else
        u = ngx.var[self.upstream_var]
    end
    if type(u) ~= "string" or u == "" then
        return self.upstream or "default"
    end
    return u
end


local function log(self)
    local st = state(self, ngx.ctx)
    local status = ngx.status
    local elapsed = ngx.now() - ngx.req.start_time()
    if elapsed < 0 then
        elapsed = 0
    end
    local ns, method, route = st.namespace, st.method, st.route
    local error_type, upstream = classify(status, st.started, st.eof, ngx.var)
    local outcome = error_type and "error" or "success"

    local l2, l3, l4 = self.l2, self.l3, self.l4
    l3[1], l3[2], l3[3] = method, route, ns
    self.gateway_requests:inc(1, l3)
    self.gateway_duration:observe(elapsed, l3)
    self.http_duration:observe(elapsed, l3)
    l4[1], l4[2], l4[3], l4[4] = method, route, status, ns
    self.http_requests:inc(1, l4)
    l2[1], l2[2] = ns, outcome
    self.namespace_requests:inc(1, l2)
    if error_type then
        l3[1], l3[2], l3[3] = error_type, ns, upstream and upstream_label(self) or NONE
        self.errors:inc(1, l3)
    end

    local model = st.model
    if model == nil then
        return
    end
    l3[1], l3[2], l3[3] = model, ns, outcome
    self.model_requests:inc(1, l3)
    l2[1], l2[2] = model, ns
    self.model_duration:observe(elapsed, l2)
    local ttft = st.ttft_at
    if ttft ~= nil then
        ttft = ttft - ngx.req.start_time()
        if ttft < 0 then
            ttft = 0
        end
        self.model_ttft:observe(ttft, l2)
    end
    if st.eof and not error_type then
        local problem = usage_problem(st)
        if problem then
            count(self, problem)
        end
    end
    local tin, tout = st.tokens_in, st.tokens_out
    if tin ~= nil then
        self.tokens_in:inc(tin, l2)
        self.tokens_out:inc(tout, l2)
        local price = self.prices[model]
        if price then
            self.cost:inc(tin * price[1] + tout * price[2], l2)
        end
        local generating = elapsed - (ttft or 0)
        if tout > 0 and generating > 0 then
            self.throughput:set(tout / generating, l2)
        end
        l2[1], l2[2] = ns, "input"
        self.namespace_tokens:inc(tin, l2)
        l2[2] = "output"
        self.namespace_tokens:inc(tout, l2)
    end
end

--- gw:log()     (log_by_lua*)
Gateway.log = guarded(log)

--- gw:namespace() -> the namespace label of the current request
function Gateway:namespace()
    local ok, st = pcall(state, self, ngx.ctx)
    if not ok then
        return self.ns_default
    end
    return st.namespace
end

local function inc2(self, metric, a, b)
    local l2 = self.l2
    l2[1], l2[2] = a, b
    return metric:inc(1, l2)
end

--- gw:rate_limit_hit(rule_type, namespace?) -> true | nil, err
-- A request reached a rate limit (delayed or refused).
function Gateway:rate_limit_hit(rule_type, ns)
    return inc2(self, self.rate_limit_hits, ns or self:namespace(), rule_type)
end

--- gw:rate_limit_violation(rule_type, namespace?) -> true | nil, err
-- A request was refused by a rate limit.
function Gateway:rate_limit_violation(rule_type, ns)
    return inc2(self, self.rate_limit_violations, ns or self:namespace(), rule_type)
end

--- gw:cache_hit(cache_type) / gw:cache_miss(cache_type) -> true | nil, err
function Gateway:cache_hit(cache_type)
    local l1 = self.l1
    l1[1] = cache_type
    return self.cache_hits:inc(1, l1)
end

function Gateway:cache_miss(cache_type)
    local l1 = self.l1
    l1[1] = cache_type
    return self.cache_misses:inc(1, l1)
end

--- gw:set_accuracy(model, task_type, percent) -> true | nil, err
-- model goes through the models option (aliases; unknown -> "other").
function Gateway:set_accuracy(model, task_type, percent)
    if type(percent) ~= "number" or not (percent >= 0 and percent <= 100) then
        return nil, "percent must be a number from 0 to 100"
    end
    local l2 = self.l2
    l2[1], l2[2] = self.model_labels[model] or OTHER, task_type
    return self.accuracy:set(percent, l2)
end

return _M
