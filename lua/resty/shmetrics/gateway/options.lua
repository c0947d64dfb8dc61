-- resty.shmetrics.gateway.options: the checks of gateway.new()'s options, one
-- named step per option, each setting what the phase handlers read into the
-- gateway object. Misuse raises at the caller of new(). Requires nothing of
-- resty.shmetrics (docs/architecture.md).

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local lower = string.lower
local gsub = string.gsub
local floor = math.floor

local _M = {}

local OTHER = "other"

-- Durations of LLM calls reach minutes: the request-duration histograms go to 300 s.
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                          30, 60, 120, 300 }
local DEFAULT_TTFT_BUCKETS = { 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30 }

local OPTIONS = { namespace = true, route = true, models = true, prices = true,
                  upstream = true, buckets = true, ttft_buckets = true,
                  max_namespaces = true }

-- A misuse found by a step: apply() raises its message at new()'s caller,
-- however deep the step found it.
local Misuse = {}

local function bad(msg)
    error(setmetatable({ msg = msg }, Misuse))
end

local function check_buckets(v, what)
    if v == nil then
        return nil
    end
    if type(v) ~= "table" or #v == 0 then
        bad("bad option \"" .. what .. "\": want an array of increasing numbers")
    end
    for i, b in ipairs(v) do
        if type(b) ~= "number" or (i > 1 and b <= v[i - 1]) then
            bad("bad option \"" .. what .. "\": want an array of increasing numbers")
        end
    end
    return v
end

local function check_string(v, what)
    if type(v) ~= "string" or v == "" then
        bad("bad option \"" .. what .. "\": want a non-empty string, got " .. type(v))
    end
    return v
end

-- nginx's variable for a request header: X-Namespace -> http_x_namespace
local function header_var(name)
    return "http_" .. gsub(lower(name), "-", "_")
end

local function set_of(list, what)
    if list == nil then
        return nil
    end
    if type(list) ~= "table" then
        bad("bad option \"" .. what .. "\": want an array of strings")
    end
    local set = {}
    for _, v in ipairs(list) do
        set[check_string(v, what)] = v
    end
    return set
end

local function check_names(opts)
    for k in pairs(opts) do
        if not OPTIONS[k] then
            bad("bad option \"" .. tostring(k) .. "\": unknown")
        end
    end
end

-- namespace: {header=, var=, default=, known=} or function() -> string|nil
local function read_namespace(self, ns)
    if type(ns) == "function" then
        self.ns_fn = ns
        self.ns_default = "default"
    elseif type(ns) == "table" or ns == nil then
        ns = ns or {}
        for k in pairs(ns) do
            if k ~= "header" and k ~= "var" and k ~= "default" and k ~= "known" then
                bad("bad option \"namespace." .. tostring(k) .. "\": want header, var, default or known")
            end
        end
        if ns.header ~= nil and ns.var ~= nil then
            bad("bad option \"namespace\": give header or var, not both")
        end
        if ns.header ~= nil then
            self.ns_var = header_var(check_string(ns.header, "namespace.header"))
        elseif ns.var ~= nil then
            self.ns_var = check_string(ns.var, "namespace.var")
        end
        self.ns_default = ns.default == nil and "default" or check_string(ns.default, "namespace.default")
        self.ns_known = set_of(ns.known, "namespace.known")
    else
        bad("bad option \"namespace\": want a table or a function")
    end
end

-- max_namespaces: distinct namespaces counted before the rest become "other".
local function read_max_namespaces(self, max_ns)
    max_ns = max_ns or 100
    if type(max_ns) ~= "number" or max_ns < 1 or max_ns ~= floor(max_ns) then
        bad("bad option \"max_namespaces\": want a positive integer")
    end
    self.max_namespaces = max_ns
    self.ns_seen = {}
    self.ns_count = 0
end

-- route: {[uri] = template} or function(uri) -> template|nil
local function read_route(self, route)
    if type(route) == "function" then
        self.route_fn = route
    elseif type(route) == "table" then
        for k, v in pairs(route) do
            check_string(k, "route (a key)")
            check_string(v, "route[\"" .. k .. "\"]")
        end
        self.routes = route
    else
        bad("bad option \"route\": want a table {[uri] = template} or a function(uri)")
    end
end

-- models: {"gpt-4o", ..., ["alias"] = "gpt-4o"}: request model -> label
local function read_models(self, models)
    if type(models) ~= "table" then
        bad("bad option \"models\": want an array of model names")
    end
    local labels = {}
    for k, v in pairs(models) do
        check_string(v, "models")
        if type(k) == "number" then
            labels[v] = v
        else
            labels[check_string(k, "models (an alias)")] = v
        end
    end
    for alias, label in pairs(labels) do
        if labels[label] ~= label and label ~= OTHER then
            bad("bad option \"models\": alias \"" .. alias .. "\" names \"" .. label
                .. "\", which is not a model")
        end
    end
    self.model_labels = labels
end

-- prices: {[model] = {input = USD per 1M tokens, output = USD per 1M tokens}}
-- (after read_models: a priced model must be a model label)
local function read_prices(self, opt)
    local labels = self.model_labels
    local prices = {}
    if opt ~= nil then
        if type(opt) ~= "table" then
            bad("bad option \"prices\": want a table {[model] = {input = n, output = n}}")
        end
        for model, p in pairs(opt) do
            if type(model) ~= "string" or (labels[model] ~= model and model ~= OTHER) then
                bad("bad option \"prices\": \"" .. tostring(model) .. "\" is not in models")
            end
            if type(p) ~= "table" or type(p.input) ~= "number" or type(p.output) ~= "number"
                    or not (p.input >= 0 and p.output >= 0 and p.input < math.huge and p.output < math.huge) then
                bad("bad option \"prices[\"" .. model .. "\"]\": want {input = n, output = n}, "
                    .. "USD per million tokens")
            end
            prices[model] = { p.input / 1e6, p.output / 1e6 }
        end
    end
    self.prices = prices
end

-- upstream: "openai" | {var = "name"} | function() -> string
local function read_upstream(self, up)
    if up == nil then
        self.upstream = "default"
    elseif type(up) == "string" then
        self.upstream = check_string(up, "upstream")
    elseif type(up) == "function" then
        self.upstream_fn = up
    elseif type(up) == "table" and type(up.var) == "string" then
        self.upstream_var = up.var
    else
        bad("bad option \"upstream\": want a string, {var = name} or a function")
    end
end

-- Every step, in the order new() has always checked them; returns the two
-- bucket lists.
local function read_all(self, opts)
    check_names(opts)
    read_namespace(self, opts.namespace)
    read_max_namespaces(self, opts.max_namespaces)
    read_route(self, opts.route)
    read_models(self, opts.models)
    read_prices(self, opts.prices)
    read_upstream(self, opts.upstream)
    local buckets = check_buckets(opts.buckets, "buckets") or DEFAULT_BUCKETS
    local ttft_buckets = check_buckets(opts.ttft_buckets, "ttft_buckets") or DEFAULT_TTFT_BUCKETS
    return buckets, ttft_buckets
end

--- options.apply(gw, opts) -> buckets, ttft_buckets
-- Checks the options table of gateway.new() and sets what they configure into
-- gw. Raises a misuse at the caller of new() (apply's caller's caller).
function _M.apply(self, opts)
    local ok, buckets, ttft_buckets = pcall(read_all, self, opts)
    if not ok then
        local err = buckets
        if getmetatable(err) == Misuse then
            error(err.msg, 3)
        end
        error(err, 0)
    end
    return buckets, ttft_buckets
end

_M.OTHER = OTHER
_M.header_var = header_var

return _M
