-- resty.shmetrics: Prometheus metrics for nginx Lua code, recorded lock-free into
-- per-worker shared memory by libshmetrics.so. See README.md for the API.
--
-- The public entry point: init() and the registry it returns (metric
-- definitions, metric_data, collect, log_error, status). The layers below it,
-- each requiring only those under it (docs/architecture.md):
--   resty.shmetrics.serve     scrape filter, formats, the render loops
--   resty.shmetrics.metrics   metric objects and the hot-path updaters
--   resty.shmetrics.binding   ffi.cdef, constants, library loading, error text

local ffi = require "ffi"
local binding = require "resty.shmetrics.binding"
local metrics = require "resty.shmetrics.metrics"
local serving = require "resty.shmetrics.serve"

local type = type
local error = error
local tostring = tostring
local pairs = pairs
local setmetatable = setmetatable
local floor = math.floor
local str_find = string.find
local str_format = string.format
local ffi_new = ffi.new
local ngx = ngx

local INF = math.huge

local _M = {
    _VERSION = "0.1.0",
    -- shmetrics_abi_version() this module needs (resty.shmetrics.binding).
    ABI_VERSION = binding.ABI_VERSION,
}

local OPEN_RECREATED = binding.OPEN_RECREATED
local FORMAT_TEXT = binding.FORMAT_TEXT
local FORMAT_OPENMETRICS = binding.FORMAT_OPENMETRICS
local FORMAT_JSON = binding.FORMAT_JSON
local FLAG_RESET = binding.FLAG_RESET
local FLAG_FOLLOW_CONFIG = binding.FLAG_FOLLOW_CONFIG
local FAMILY_REPLACE = binding.FAMILY_REPLACE
local KIND_COUNTER = binding.KIND_COUNTER
local KIND_GAUGE = binding.KIND_GAUGE
local KIND_HISTOGRAM = binding.KIND_HISTOGRAM
local DEFAULT_MAX_SLOTS = binding.DEFAULT_MAX_SLOTS
local last_error = binding.last_error
local phase = binding.phase
local log = binding.log
local MAX_LABELS = metrics.MAX_LABELS
local WARN_INTERVAL = metrics.WARN_INTERVAL
local count_log_error = metrics.count_log_error
local render_string = serving.render_string
local serve = serving.serve
local scrape_format = serving.scrape_format
-- The default piece of a scrape: the event loop's work per piece (two copies,
-- the kernel's send) grows with its size, and pieces above 128 KiB are fresh
-- memory each time in LuaJIT's and glibc's allocators (page faults on every
-- 4 KiB). At 64 KiB a scrape's turns of the loop are as short as the loop's
-- turns without scrapes (BENCHMARKS.md section 3b); 256 KiB held it for 1-3 ms.
local DEFAULT_CHUNK_BYTES = 65536

-- The default buckets of nginx-lua-prometheus, so switching keeps dashboards.
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3,
                          0.4, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10 }

local lib               -- the loaded library (namespace: call lib.fn, never cache fn)

local region_out = ffi_new("const shmetrics_region *[1]")

_M._negotiate = serving.negotiate  -- for tests

------------------------------------------------------------------------------
-- The registry

local Registry = {}
Registry.__index = Registry

local registries = {}

local function check_labels(names, what)
    if names == nil then
        return {}
    end
    if type(names) ~= "table" then
        error("bad argument \"" .. what .. "\": want a table of strings, got " .. type(names), 3)
    end
    local n = #names
    for k in pairs(names) do
        if type(k) ~= "number" or k < 1 or k > n or k ~= floor(k) then
            error("bad argument \"" .. what .. "\": want an array of strings", 3)
        end
    end
    for i = 1, n do
        if type(names[i]) ~= "string" then
            error(str_format("bad argument \"%s\": entry #%d is a %s, not a string",
                             what, i, type(names[i])), 3)
        end
    end
    if n > MAX_LABELS then
        error(str_format("bad argument \"%s\": %d labels; at most %d", what, n, MAX_LABELS), 3)
    end
    return names
end

-- Phases in which a definition that differs from the stored one replaces it
-- (the configuration changed across a restart or reload); later phases raise.
local REDEFINE_PHASES = { init = true, init_worker = true, standalone = true }

local function define(self, kind, name, help, label_names, buckets, opts)
    if type(name) ~= "string" then
        error("bad argument \"name\": want a string, got " .. type(name), 3)
    end
    name = self.prefix .. name
    if name == self.error_metric then
        error("bad argument \"name\": \"" .. name .. "\" is the error counter's name "
              .. "(init option error_metric_name)", 3)
    end
    if help ~= nil and type(help) ~= "string" then
        error("bad argument \"help\": want a string, got " .. type(help), 3)
    end
    help = help or ""
    label_names = check_labels(label_names, "label_names")
    local n = #label_names
    local labels = ffi_new("const char *[?]", MAX_LABELS)
    local lens = ffi_new("size_t[?]", MAX_LABELS)
    for i = 1, n do
        labels[i - 1] = label_names[i]
        lens[i - 1] = #label_names[i]
    end
    local bounds, nb = nil, 0
    if kind == KIND_HISTOGRAM then
        buckets = buckets or DEFAULT_BUCKETS
        if type(buckets) ~= "table" then
            error("bad argument \"buckets\": want an array of numbers, got " .. type(buckets), 3)
        end
        nb = #buckets
        bounds = ffi_new("double[?]", nb + 1)
        for i = 1, nb do
            if type(buckets[i]) ~= "number" then
                error(str_format("bad argument \"buckets\": entry #%d is a %s, not a number",
                                 i, type(buckets[i])), 3)
            end
            bounds[i - 1] = buckets[i]
        end
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument \"options\": want a table, got " .. type(opts)
              .. (type(opts) == "number" and " (nginx-lua-prometheus's exptime is not supported)" or ""), 3)
    end
    local max_series = 0
    for k, v in pairs(opts or {}) do
        if k ~= "max_series" then
            error("bad option \"" .. tostring(k) .. "\": unknown (metrics take max_series)", 3)
        end
        if type(v) ~= "number" or v < 1 or v ~= floor(v) or v > 2^31 then
            error("bad option \"max_series\": want a positive integer, got " .. tostring(v), 3)
        end
        max_series = v
    end
    -- A name this Lua VM has not defined yet comes from the configuration
    -- being loaded: its definition replaces a different stored one. A second,
    -- different definition in the same configuration is refused.
    local flags = 0
    if not self.defined[name] and REDEFINE_PHASES[phase()] then
        flags = FAMILY_REPLACE
    end
    local fam = lib.shmetrics_family(self.h, kind + flags, name, #name, help, #help,
                                     labels, lens, n, bounds, nb, max_series)
    if fam < 0 then
        error(last_error(fam), 3)
    end
    self.defined[name] = true
    if kind == KIND_COUNTER and not self.om_renames and not str_find(name, "_total$") then
        -- OpenMetrics would expose this counter's samples as <name>_total.
        self.om_renames = name
    end
    local existing = self.metrics[fam]
    if existing then
        existing.max_series = max_series
        return existing
    end
    -- the library drops a trailing +Inf
    local nbounds = kind == KIND_HISTOGRAM and ((buckets[nb] == INF) and nb - 1 or nb) or nil
    local m = metrics.new(self, kind, fam, name, label_names, max_series, nbounds)
    self.metrics[fam] = m
    return m
end

--- prometheus:counter(name, help?, label_names?, options?) -> counter
-- options: { max_series = N } (label sets beyond N go to the overflow series)
function Registry:counter(name, help, label_names, opts)
    return define(self, KIND_COUNTER, name, help, label_names, nil, opts)
end

--- prometheus:gauge(name, help?, label_names?, options?) -> gauge
function Registry:gauge(name, help, label_names, opts)
    return define(self, KIND_GAUGE, name, help, label_names, nil, opts)
end

--- prometheus:histogram(name, help?, label_names?, buckets?, options?) -> histogram
function Registry:histogram(name, help, label_names, buckets, opts)
    return define(self, KIND_HISTOGRAM, name, help, label_names, buckets, opts)
end

--- prometheus:metric_data(format?, names?) -> lines | string | nil, err
-- Without format: text 0.0.4 as an array of lines, each ending in "\n", so
-- that table.concat(prometheus:metric_data()) is the exposition (what
-- nginx-lua-prometheus returns). With format "text", "openmetrics" or "json":
-- one string. names: family names to include (default: all).
function Registry:metric_data(format, names)
    local body, err = render_string(self, format or "text", names)
    if not body then
        return nil, err
    end
    if format ~= nil then
        return body
    end
    local lines = {}
    for line in body:gmatch("[^\n]*\n") do
        lines[#lines + 1] = line
    end
    return lines
end



--- prometheus:collect()   (content_by_lua: serves the exposition)
-- The format follows the Accept header (see scrape_format); `?name[]=a&name[]=b`
-- limits the scrape to those families.
function Registry:collect()
    return serve(self, scrape_format(self))
end

--- prometheus:init_worker(sync_interval?) -> true
-- nginx-lua-prometheus's per-worker setup. Nothing to do here (updates are
-- visible at once); the argument is checked as init's sync_interval option.
function Registry:init_worker(sync_interval)
    if sync_interval ~= nil and (type(sync_interval) ~= "number" or not (sync_interval > 0)
                                 or sync_interval == INF) then
        error("bad argument \"sync_interval\": want a positive number of seconds, got "
              .. tostring(sync_interval), 2)
    end
    return true
end

--- prometheus:log_error(...)   (any phase of a worker)
-- Logs its arguments, concatenated, at level error and counts one error in
-- the error counter (error_metric_name), as nginx-lua-prometheus does.
function Registry:log_error(...)
    log(ngx and ngx.ERR, ...)
    count_log_error(self)
end

--- prometheus:log_error_kv(key, value, err)
-- log_error for a failed update of `key` to `value`.
function Registry:log_error_kv(key, value, err)
    self:log_error("shmetrics: cannot set ", tostring(key), " to ", tostring(value), ": ",
                   tostring(err))
end

--- prometheus:collect_json()   (content_by_lua: serves the JSON view)
-- `?name[]=a&name[]=b` limits it to those families.
function Registry:collect_json()
    return serve(self, FORMAT_JSON)
end

--- shmetrics.render_jobs() -> n
-- Scrapes this process's render thread still holds (started, neither finished
-- nor dropped after the client left): 0 when none is in progress. Diagnostics.
function _M.render_jobs()
    if not lib then
        return 0
    end
    return lib.shmetrics_render_jobs()
end

--- prometheus:status()   (content_by_lua: the live status page, docs/status.md)
function Registry:status()
    return require("resty.shmetrics.status").serve(self, render_string)
end

local OPTIONS = {
    path = "string", max_series = "number", max_families = "number",
    max_slots = "number", max_label_bytes = "number", max_cells = "number",
    arena_bytes = "number", reset = "boolean", chunk_bytes = "number", render_thread = "boolean",
    lib_path = "string", format = "string", error_log_interval = "number",
    -- nginx-lua-prometheus's options
    prefix = "string", error_metric_name = "string", sync_interval = "number",
    lookup_max_size = "number",
}
-- Options measured in seconds: any non-negative number, not only integers.
local SECONDS = { sync_interval = true, error_log_interval = true }
local SCRAPE_FORMATS = { auto = false, text = FORMAT_TEXT, openmetrics = FORMAT_OPENMETRICS }

-- init() outside init_by_lua: each worker would open the file on its own, and
-- two of them racing on its creation map different files (the counts split).
-- A registry the master opened (inherited across fork) is returned as before.
local function refuse_outside_init(name)
    local p = phase()
    if p == "init" or p == "standalone" or registries[name] then
        return
    end
    error(str_format("shmetrics.init(\"%s\") called in %s: call it in init_by_lua, "
                     .. "where the nginx master maps the region once for every worker; "
                     .. "metric definitions (counter, gauge, histogram) may stay in "
                     .. "init_worker_by_lua", tostring(name), p == "init_worker"
                     and "init_worker_by_lua" or ("the " .. tostring(p) .. " phase")), 3)
end

-- Warns at start when the workers of two generations (the new ones and those
-- draining after a reload) cannot all have a slot: the excess counts nothing.
local function warn_slot_capacity(max_slots)
    local workers = ngx and ngx.worker and ngx.worker.count and ngx.worker.count()
    max_slots = (max_slots or 0) > 0 and max_slots or DEFAULT_MAX_SLOTS
    if phase() ~= "init" or not workers or workers < 1 or 2 * workers <= max_slots - 1 then
        return
    end
    log(ngx.WARN, str_format("shmetrics: max_slots = %d leaves %d worker slots for %d worker "
                             .. "processes: with the old workers that drain after a reload, "
                             .. "up to %d processes write at once, and updates in a process "
                             .. "without a slot are not counted (no_slot); raise max_slots "
                             .. "to at least %d", max_slots, max_slots - 1, workers,
                             2 * workers, 2 * workers + 1))
end

-- nginx-lua-prometheus's defaults, so its users' calls work unchanged.
local DEFAULT_NAME = "prometheus_metrics"
local DEFAULT_ERROR_METRIC = "nginx_metric_errors_total"

local function check_options(opts)
    for k, v in pairs(opts) do
        local want = OPTIONS[k]
        if not want then
            error("bad option \"" .. tostring(k) .. "\": unknown", 3)
        end
        if type(v) ~= want then
            error(str_format("bad option \"%s\": want a %s, got %s", k, want, type(v)), 3)
        end
        if SECONDS[k] then
            if not (v >= 0 and v < INF) then
                error(str_format("bad option \"%s\": want a number of seconds, got %s", k, tostring(v)), 3)
            end
        elseif want == "number" and (v < 0 or v ~= floor(v) or v > (k == "arena_bytes" and 2^40 or 2^32 - 1)) then
            error(str_format("bad option \"%s\": want a non-negative integer, got %s", k, tostring(v)), 3)
        end
    end
    if opts.format ~= nil and SCRAPE_FORMATS[opts.format] == nil then
        error("bad option \"format\": want \"auto\", \"text\" or \"openmetrics\", got \""
              .. opts.format .. "\"", 3)
    end
    if opts.prefix ~= nil and opts.prefix ~= "" and not str_find(opts.prefix, "^[%a_:][%w_:]*$") then
        error("bad option \"prefix\": \"" .. opts.prefix .. "\" cannot start a metric name", 3)
    end
end

--- shmetrics.init(name?, options_or_prefix?) -> registry
-- Call in init_by_lua (the master maps the region before forking the workers).
-- name defaults to "prometheus_metrics"; a string second argument is the
-- prefix option (nginx-lua-prometheus's forms).
function _M.init(name, opts)
    if name == nil then
        name = DEFAULT_NAME
    end
    refuse_outside_init(name)
    if type(name) ~= "string" or not str_find(name, "^[%w_.-]+$") or #name > 200 then
        error("bad argument \"name\": want at most 200 letters, digits, '_', '.', '-'", 2)
    end
    if type(opts) == "string" then
        opts = { prefix = opts }
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument \"options\": want a table or a prefix string, got " .. type(opts), 2)
    end
    opts = opts or {}
    check_options(opts)
    local existing = registries[name]
    if existing then
        return existing
    end
    lib = binding.load_library(opts.lib_path)
    metrics.bind(lib)
    serving.bind(lib)
    local path = opts.path or ("/dev/shm/shmetrics-" .. name)
    local o = ffi_new("shmetrics_options")
    o.max_series = opts.max_series or 0
    o.max_families = opts.max_families or 0
    o.max_slots = opts.max_slots or 0
    o.max_label_bytes = opts.max_label_bytes or 0
    o.max_cells = opts.max_cells or 0
    o.arena_bytes = opts.arena_bytes or 0
    o.flags = FLAG_FOLLOW_CONFIG + (opts.reset and FLAG_RESET or 0)
    local rc = lib.shmetrics_open(path, #path, o, region_out)
    if rc < 0 then
        error("shmetrics.init(\"" .. name .. "\"): " .. last_error(rc), 2)
    end
    if rc == OPEN_RECREATED then
        log(ngx and ngx.WARN, "shmetrics: replaced region file ", path, ": ", last_error(rc))
    end
    local reg = setmetatable({
        name = name,
        path = path,
        h = region_out[0],
        metrics = {},
        chunk_bytes = opts.chunk_bytes or DEFAULT_CHUNK_BYTES,
        -- collect() renders on the library's thread (false: in the event loop).
        render_thread = opts.render_thread ~= false,
        prefix = opts.prefix or "",
        format = SCRAPE_FORMATS[opts.format or "auto"],
        log_interval = opts.error_log_interval or WARN_INTERVAL,
        defined = {},   -- family names this Lua VM has defined
    }, Registry)
    warn_slot_capacity(opts.max_slots)
    local em = reg.prefix .. (opts.error_metric_name or DEFAULT_ERROR_METRIC)
    rc = lib.shmetrics_error_metric(reg.h, em, #em)
    if rc < 0 then
        error("shmetrics.init(\"" .. name .. "\"): " .. last_error(rc), 2)
    end
    reg.error_metric = em
    if not str_find(em, "_total$") then
        reg.om_renames = em
    end
    registries[name] = reg
    return reg
end

return _M
