-- resty.shmetrics: Prometheus metrics for nginx Lua code, recorded lock-free into
-- per-worker shared memory by libshmetrics.so. See README.md for the API.

local ffi = require "ffi"

local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local floor = math.floor
local concat = table.concat
local str_find = string.find
local str_format = string.format
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_cast = ffi.cast
local ngx = ngx

local INF = math.huge

local _M = {
    _VERSION = "0.1.0",
    -- Must equal shmetrics_abi_version() and SHMETRICS_ABI_VERSION in the header.
    ABI_VERSION = 1,
}

ffi.cdef [[
typedef struct shmetrics_region shmetrics_region;
typedef struct shmetrics_render shmetrics_render;
typedef struct shmetrics_render_job shmetrics_render_job;
typedef struct shmetrics_options {
    uint32_t max_series;
    uint32_t max_families;
    uint32_t max_slots;
    uint32_t max_label_bytes;
    uint32_t max_cells;
    uint32_t flags;
    uint64_t arena_bytes;
} shmetrics_options;

uint32_t shmetrics_abi_version(void);
const char *shmetrics_strerror(int32_t code);
size_t shmetrics_last_error(char *buf, size_t cap);
int32_t shmetrics_open(const char *path, size_t path_len,
                       const shmetrics_options *opts,
                       const shmetrics_region **out);
int32_t shmetrics_family(const shmetrics_region *r, uint32_t kind,
                         const char *name, size_t name_len,
                         const char *help, size_t help_len,
                         const char *const *labels, const size_t *label_lens,
                         uint32_t nlabels, const double *bounds, uint32_t nbounds,
                         uint32_t max_series);
const uint32_t *shmetrics_family_gen(const shmetrics_region *r, uint32_t fam);
const double *shmetrics_family_bounds(const shmetrics_region *r, uint32_t fam);
int32_t shmetrics_series(const shmetrics_region *r, uint32_t fam,
                         const char *const *values, const size_t *lens,
                         uint32_t n);
int32_t shmetrics_delete(const shmetrics_region *r, uint32_t fam,
                         const char *const *values, const size_t *lens,
                         uint32_t n);
int32_t shmetrics_reset(const shmetrics_region *r, uint32_t fam);
int32_t shmetrics_claim_slot(const shmetrics_region *r);
int32_t shmetrics_error_metric(const shmetrics_region *r, const char *name, size_t name_len);
double *shmetrics_slot_cells(const shmetrics_region *r, uint32_t slot);
void shmetrics_count_error(const shmetrics_region *r, uint32_t reason);
size_t shmetrics_corrupt_notice(const shmetrics_region *r, char *buf, size_t cap);
void shmetrics_observe(double *cells, uint32_t base, const double *bounds,
                       uint32_t nbounds, double v);
int32_t shmetrics_render_open(const shmetrics_region *r, uint32_t format,
                              const char *const *names, const size_t *lens,
                              uint32_t n, shmetrics_render **out);
int32_t shmetrics_render_next(shmetrics_render *it, size_t hint,
                              const char **chunk, size_t *len);
void shmetrics_render_close(shmetrics_render *it);
int32_t shmetrics_render_page(shmetrics_render *it, uint64_t offset, uint64_t limit,
                              const char *needle, size_t needle_len);
int32_t shmetrics_render_start(const shmetrics_region *r, uint32_t format,
                               const char *const *names, const size_t *lens, uint32_t n,
                               size_t hint, uint32_t depth, shmetrics_render_job **out);
int32_t shmetrics_render_poll(shmetrics_render_job *it, const char **chunk, size_t *len);
void shmetrics_render_stop(shmetrics_render_job *it);
uint32_t shmetrics_render_jobs(void);
]]

-- Mirrors of the header's constants (a test checks they agree).
local E_LABEL_COUNT = -3
local E_LABEL_TOO_LONG = -4
local E_FULL = -5
local E_NO_SLOT = -6
local E_INTERNAL = -8

local OPEN_RECREATED = 2
local FORMAT_TEXT = 0
local FORMAT_OPENMETRICS = 1
local FORMAT_JSON = 2
local MAX_FILTER_NAMES = 1024
local SERIES_OVERFLOW = 1073741824   -- 1 << 30, set in a shmetrics_series result
local RENDER_PENDING = 2             -- shmetrics_render_poll: no piece ready yet
local RENDER_DEPTH = 2               -- pieces a scrape's queue holds on the render thread
-- The default piece: the event loop's work per piece (two copies, the kernel's
-- send) grows with its size, and pieces above 128 KiB are fresh memory each
-- time in LuaJIT's and glibc's allocators (page faults on every 4 KiB). At
-- 64 KiB a scrape's turns of the loop are as short as the loop's turns without
-- scrapes (BENCHMARKS.md section 3b); 256 KiB held it for 1-3 ms.
local DEFAULT_CHUNK_BYTES = 65536
local WARN_INTERVAL = 60             -- seconds between warnings of one kind per metric
local FLAG_RESET = 1
local FLAG_FOLLOW_CONFIG = 2
local FAMILY_REPLACE = 256

local KIND_COUNTER = 0
local KIND_GAUGE = 1
local KIND_HISTOGRAM = 2

local CELL_GAUGE_SEQ = 0
-- The library's default max_slots (layout::Params::default), for the start-up warning.
local DEFAULT_MAX_SLOTS = 64
local CELL_ERRORS = 8
local CELL_LOG_ERRORS = 19
local STAMP_SLOTS = 4096

-- Hot-path error reasons: index into the reasons list of the library.
local R = {
    label_count = 0, label_type = 1, label_too_long = 2, value_type = 3,
    value_nan = 4, value_negative = 5, value_infinite = 6, store_full = 7,
    no_slot = 8, not_in_worker = 9, internal = 10,
}
local REASON_NAME = {}
for k, v in pairs(R) do
    REASON_NAME[v] = k
end

local CONTENT_TYPE = {
    [FORMAT_TEXT] = "text/plain; version=0.0.4; charset=utf-8",
    [FORMAT_OPENMETRICS] = "application/openmetrics-text; version=1.0.0; charset=utf-8",
    [FORMAT_JSON] = "application/json; charset=utf-8",
}
local FORMATS = { text = FORMAT_TEXT, openmetrics = FORMAT_OPENMETRICS, json = FORMAT_JSON }

-- The default buckets of nginx-lua-prometheus, so switching keeps dashboards.
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3,
                          0.4, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10 }

local MAX_LABELS = 10

local lib               -- the loaded library (namespace: call lib.fn, never cache fn)
local warn_once         -- defined below

-- Scratch buffers, allocated once per VM and reused on every call.
local vals_buf = ffi_new("const char *[?]", MAX_LABELS)
local lens_buf = ffi_new("size_t[?]", MAX_LABELS)
local region_out = ffi_new("const shmetrics_region *[1]")
local render_out = ffi_new("shmetrics_render *[1]")
local job_out = ffi_new("shmetrics_render_job *[1]")
local chunk_out = ffi_new("const char *[1]")
local len_out = ffi_new("size_t[1]")
local errbuf_len = 1024
local errbuf = ffi_new("char[?]", errbuf_len)

local function last_error(code)
    local n = tonumber(lib.shmetrics_last_error(errbuf, errbuf_len))
    if n == 0 then
        return ffi_string(lib.shmetrics_strerror(code))
    end
    if n > errbuf_len then
        n = errbuf_len
    end
    return ffi_string(errbuf, n)
end

-- Finds libshmetrics.so through package.cpath, the one place users configure.
local function find_library(explicit)
    if explicit then
        return explicit
    end
    for template in package.cpath:gmatch("[^;]+") do
        local path = template:gsub("%?", "libshmetrics")
        local f = io.open(path, "rb")
        if f then
            f:close()
            return path
        end
    end
    return nil
end

local function load_library(explicit)
    if lib then
        return lib
    end
    local path = find_library(explicit)
    if not path then
        error("libshmetrics.so not found in package.cpath (" .. package.cpath
              .. "); add its directory to lua_package_cpath", 3)
    end
    local ok, l = pcall(ffi.load, path)
    if not ok then
        error("cannot load " .. path .. ": " .. tostring(l), 3)
    end
    local v = l.shmetrics_abi_version()
    if v ~= _M.ABI_VERSION then
        error(str_format("%s implements ABI version %d but this Lua module needs %d; "
                         .. "install matching versions", path, v, _M.ABI_VERSION), 3)
    end
    lib = l
    return lib
end

local function phase()
    if ngx and ngx.get_phase then
        return ngx.get_phase()
    end
    return "standalone"
end

local function log(level, ...)
    if ngx and ngx.log then
        ngx.log(level, ...)
    end
end

-- Logs what the library found corrupt in the region file since the last
-- time (it rate-limits: at most one message every 10 seconds per process).
local function log_corrupt(reg)
    local n = tonumber(lib.shmetrics_corrupt_notice(reg.h, errbuf, errbuf_len))
    if n > 0 then
        log(ngx and ngx.ERR, "shmetrics: ", ffi_string(errbuf, n < errbuf_len and n or errbuf_len))
    end
end

-- A label value as the string stored in the registry. Strings pass through;
-- numbers are written exactly (integers without exponent or fraction).
local function number_label(v)
    if v == floor(v) and v > -2^53 and v < 2^53 then
        return str_format("%d", v)
    end
    if v ~= v then
        return "NaN"
    elseif v == INF then
        return "+Inf"
    elseif v == -INF then
        return "-Inf"
    end
    local s = str_format("%.15g", v)
    if tonumber(s) ~= v then
        s = str_format("%.17g", v)
    end
    return s
end

-- Generated label-cache walkers: walk[n](cache, lv) returns the cell cached for
-- the n label values in lv, or nil. Loop-free, so LuaJIT compiles them into the
-- caller's trace; built once at load time.
local walk = {}
do
    walk[0] = function(cache, lv)
        if lv ~= nil and (type(lv) ~= "table" or lv[1] ~= nil) then
            return nil
        end
        return cache[1]
    end
    for n = 1, MAX_LABELS do
        local src = { "local type = type\nreturn function(cache, lv)\n",
                      "if type(lv) ~= 'table' then return nil end\n",
                      "local t = cache[lv[1]]\n" }
        for i = 2, n do
            src[#src + 1] = "if t == nil then return nil end\n"
            src[#src + 1] = "t = t[lv[" .. i .. "]]\n"
        end
        src[#src + 1] = "if lv[" .. (n + 1) .. "] ~= nil then return nil end\n"
        src[#src + 1] = "return t\nend\n"
        walk[n] = assert(loadstring(concat(src), "=shmetrics.walk" .. n))()
    end
end

-- Keys worth caching: strings and integral numbers (whose label text is exact).
local function cacheable(v)
    return type(v) == "string" or (v == floor(v) and v > -2^53 and v < 2^53)
end

local anchors = {}  -- keeps converted label strings alive during an FFI call

-- Fills vals_buf/lens_buf from lv. Returns true, or nil, err, reason.
local function fill_labels(self, lv)
    local n = self.nlabels
    if n == 0 then
        if lv ~= nil and (type(lv) ~= "table" or lv[1] ~= nil) then
            return nil, self.name .. " has no labels; label_values must be nil or empty", R.label_count
        end
        return true
    end
    if type(lv) ~= "table" then
        return nil, str_format("%s needs a table of %d label values, got %s",
                               self.name, n, type(lv)), R.label_count
    end
    for i = 1, n do
        local v = lv[i]
        local tv = type(v)
        if tv == "number" then
            v = number_label(v)
            anchors[i] = v
        elseif tv ~= "string" then
            if v == nil then
                return nil, str_format("%s needs %d label values, got %d",
                                       self.name, n, i - 1), R.label_count
            end
            return nil, str_format("%s: label value #%d is a %s; want a string or number",
                                   self.name, i, tv), R.label_type
        end
        vals_buf[i - 1] = v
        lens_buf[i - 1] = #v
    end
    if lv[n + 1] ~= nil then
        return nil, str_format("%s needs %d label values, got more", self.name, n), R.label_count
    end
    return true
end

local function reason_of(code)
    if code == E_LABEL_COUNT then
        return R.label_count
    elseif code == E_LABEL_TOO_LONG then
        return R.label_too_long
    elseif code == E_FULL then
        return R.store_full
    elseif code == E_NO_SLOT then
        return R.no_slot
    end
    return R.internal
end

------------------------------------------------------------------------------
-- Metrics

local Metric = {}
Metric.__index = Metric

local attach_slot   -- defined below

-- Logs a hot-path error of metric m: the first of each reason at once, then
-- at most one line per reason and error_log_interval seconds, saying how many
-- were left unlogged meanwhile. Error path only.
local function log_failure(m, err, reason)
    local now = ngx and ngx.now and ngx.now() or os.time()
    local seen = m.logged
    if seen == nil then
        seen = {}
        m.logged = seen
    end
    local e = seen[reason]
    if e == nil then
        seen[reason] = { at = now, suppressed = 0 }
        log(ngx and ngx.ERR, "shmetrics: ", err, " (reason ", REASON_NAME[reason], ")")
        return
    end
    local interval = m.reg.log_interval
    if now - e.at < interval then
        e.suppressed = e.suppressed + 1
        return
    end
    if e.suppressed > 0 then
        log(ngx and ngx.ERR, "shmetrics: ", err, " (reason ", REASON_NAME[reason], "; ",
            e.suppressed, " more of this reason for ", m.name, " not logged in the last ",
            str_format("%g", now - e.at), " s)")
    else
        log(ngx and ngx.ERR, "shmetrics: ", err, " (reason ", REASON_NAME[reason], ")")
    end
    e.at = now
    e.suppressed = 0
end

-- Counts a hot-path error in this process's slot (the error counter,
-- error_metric_name, sums them), logs it (rate-limited) and returns nil, err.
local function fail(self, err, reason)
    local cells = self.cells
    if cells ~= nil then
        cells[CELL_ERRORS + reason] = cells[CELL_ERRORS + reason] + 1
    elseif reason ~= R.not_in_worker and phase() ~= "init" then
        -- No slot attached yet (the first update failed, or no slot is free):
        -- the library counts it. Never in the master, whose slot workers would
        -- inherit.
        lib.shmetrics_count_error(self.reg.h, reason)
    end
    if reason ~= R.no_slot then
        -- (attach_slot logs a failed claim itself, at most once a second)
        log_failure(self, err, reason)
    end
    return nil, err
end

-- Attaches this process's slot to every metric of the registry (first write).
-- When every slot is taken, tries again at most once a second: claiming scans
-- all slots, too slow to repeat on every update.
attach_slot = function(self)
    local reg = self.reg
    if reg.cells == nil then
        if phase() == "init" then
            return nil, "metrics cannot be recorded in init_by_lua (the master); "
                        .. "record them in a worker", R.not_in_worker
        end
        local now = os.time()
        if reg.claim_failed_at and now - reg.claim_failed_at < 1 then
            return nil, reg.claim_error, R.no_slot
        end
        local slot = lib.shmetrics_claim_slot(reg.h)
        if slot < 0 then
            local err = last_error(slot)
            reg.claim_failed_at = now
            -- Logged once per reason: the refusals themselves are counted (no_slot).
            if err ~= reg.claim_error then
                log(ngx and ngx.ERR, "shmetrics: ", err)
            end
            reg.claim_error = err
            return nil, err, R.no_slot
        end
        reg.slot = slot
        reg.cells = lib.shmetrics_slot_cells(reg.h, slot)
        reg.shared = lib.shmetrics_slot_cells(reg.h, 0)
        for _, m in pairs(reg.metrics) do
            m.cells = reg.cells
            m.shared = reg.shared
            m.slot = slot
        end
    end
    return true
end

-- Logs `msg` at most once per WARN_INTERVAL per metric and kind.
warn_once = function(self, kind, msg)
    local now = ngx and ngx.now and ngx.now() or os.time()
    local key = "warned_" .. kind
    if (self[key] or -WARN_INTERVAL) + WARN_INTERVAL <= now then
        self[key] = now
        log(ngx and ngx.WARN, "shmetrics: ", msg)
    end
end

-- The slow path of every update: slot attachment, cache refresh after a
-- del/reset elsewhere, series lookup or creation, and the label cache fill.
-- Returns the series' first cell, or nil, err, reason.
local function resolve(self, lv)
    if self.cells == nil then
        local ok, err, reason = attach_slot(self)
        if not ok then
            return nil, err, reason
        end
    end
    local gen = self.genp[0]
    if gen ~= self.gen then
        self.cache = {}
        self.gen = gen
    end
    local cell = self.walk(self.cache, lv)
    if cell then
        return cell
    end
    local ok, err, reason = fill_labels(self, lv)
    if not ok then
        return nil, err, reason
    end
    local n = self.nlabels
    local rc = lib.shmetrics_series(self.reg.h, self.fam, vals_buf, lens_buf, n)
    for i = 1, n do
        anchors[i] = nil
    end
    if rc < 0 then
        local err = self.name .. ": " .. last_error(rc)
        log_corrupt(self.reg)
        return nil, err, reason_of(rc)
    end
    if rc >= SERIES_OVERFLOW then
        -- Over the family's max_series: counted in the overflow series, and
        -- not cached (the label sets beyond the limit are unbounded).
        warn_once(self, "overflow", str_format(
            "%s: more than %s label sets; new ones are counted in the "
            .. "series whose labels are all \"__overflow__\"", self.name,
            self.max_series > 0 and "max_series=" .. self.max_series
            or "the default limit per metric (a quarter of init's max_series, at least 1000; "
               .. "give the metric its own max_series to change it)"))
        return rc - SERIES_OVERFLOW
    end
    if n == 0 then
        self.cache[1] = rc
        return rc
    end
    local t = self.cache
    for i = 1, n - 1 do
        local k = lv[i]
        if not cacheable(k) then
            return rc
        end
        local sub = t[k]
        if sub == nil then
            sub = {}
            t[k] = sub
        end
        t = sub
    end
    if cacheable(lv[n]) then
        t[lv[n]] = rc
    end
    return rc
end

-- Where an update goes: (cells, cell) of the series named by lv, from the
-- label cache on the fast path, else through resolve(); or nil, err, reason.
local function locate(self, lv)
    local cells = self.cells
    local cell = self.walk(self.cache, lv)
    if cell == nil or cells == nil or self.genp[0] ~= self.gen then
        local err, reason
        cell, err, reason = resolve(self, lv)
        if not cell then
            return nil, err, reason
        end
        cells = self.cells
    end
    return cells, cell
end

-- The same for a child (metric:labels()): its cell is bound once, and looked
-- up again only when a del/reset moved the family's generation or the
-- process had no slot yet. A child keeps copies of what the update methods
-- read (cells, genp, shared, slot, bounds), so its hot path is loads from
-- one table.
local function locate_child(self)
    local cells = self.cells
    if cells == nil or self.genp[0] ~= self.gen then
        local m = self.metric
        local cell, err, reason = resolve(m, self.lv)
        if not cell then
            return nil, err, reason
        end
        self.cell = cell
        self.gen = m.gen
        self.cells = m.cells
        self.shared = m.shared
        self.slot = m.slot
        return self.cells, cell
    end
    return cells, self.cell
end

-- Value checks: the value to record, or nil, a message suffix and a reason.
-- A value that is not a number takes the slow path: a string that tonumber()
-- reads (what ngx.var gives) is checked as that number; anything else is
-- refused. The number path is unchanged by it.
local function show_value(v)
    if type(v) == "string" then
        if #v > 64 then
            return str_format("%q...", v:sub(1, 64))
        end
        return str_format("%q", v)
    end
    return tostring(v)
end

local function not_a_number(v)
    return nil, ": value must be a number, got " .. type(v)
                .. (v ~= nil and (" " .. show_value(v)) or ""), R.value_type
end

local function from_string(v, check)
    local n = type(v) == "string" and tonumber(v)
    if not n then
        return not_a_number(v)
    end
    return check(n)
end

local function check_count(v)          -- counter:inc
    if v == nil then
        return 1
    elseif type(v) ~= "number" then
        return from_string(v, check_count)
    elseif v >= 0 and v < INF then
        return v
    elseif v ~= v then
        return nil, ": value is NaN", R.value_nan
    elseif v < 0 then
        return nil, ": counters cannot decrease (value " .. v .. ")", R.value_negative
    end
    return nil, ": value is infinite", R.value_infinite
end

local function check_delta(v)          -- gauge:inc
    if v == nil then
        return 1
    elseif type(v) ~= "number" then
        return from_string(v, check_delta)
    elseif v > -INF and v < INF then
        return v
    elseif v ~= v then
        return nil, ": value is NaN", R.value_nan
    end
    return nil, ": value is infinite", R.value_infinite
end

local function check_level(v)          -- gauge:set (±Inf allowed)
    if type(v) ~= "number" then
        return from_string(v, check_level)
    elseif v ~= v then
        return nil, ": value is NaN", R.value_nan
    end
    return v
end

local function check_sample(v)         -- histogram:observe
    if type(v) ~= "number" then
        return from_string(v, check_sample)
    end
    return check_delta(v)
end

-- What each update does to the cells of its series (m: the metric or child).
local function add(m, cells, cell, v)
    cells[cell] = cells[cell] + v
end

local function set_level(m, cells, cell, v)
    -- A stamp unique to this write: the slot's own sequence and the slot number.
    local seq = cells[CELL_GAUGE_SEQ] + 1
    cells[CELL_GAUGE_SEQ] = seq
    local stamp = seq * STAMP_SLOTS + m.slot
    cells[cell] = v
    cells[cell + 1] = stamp
    -- Publishing the stamp last makes this set the one readers use.
    m.shared[cell] = stamp
end

local function add_delta(m, cells, cell, v)
    -- Deltas count only since the last set (whose stamp is shared).
    local stamp = m.shared[cell]
    if cells[cell + 3] ~= stamp then
        cells[cell + 2] = 0
        cells[cell + 3] = stamp
    end
    cells[cell + 2] = cells[cell + 2] + v
end

local function observe(m, cells, cell, v)
    lib.shmetrics_observe(cells, cell, m.bounds, m.nbounds, v)
end

-- Builds an update method from its value check, its cell update and how it
-- finds the series. Made once at load time: each method is one closure whose
-- upvalues LuaJIT specialises on, so the whole update compiles into the
-- caller's trace. Returns true, or nil, err (counted, never raised).
local function updater(check, apply, find)
    return function(self, value, lv)
        local v, err, reason = check(value)
        if v == nil then
            local m = self.metric
            return fail(m, m.name .. err, reason)
        end
        local cells, cell
        cells, cell, reason = find(self, lv)
        if not cells then
            return fail(self.metric, cell, reason)
        end
        apply(self, cells, cell, v)
        return true
    end
end

local Counter = setmetatable({}, Metric)
Counter.__index = Counter
--- counter:inc(value?, label_values?) -> true | nil, err
Counter.inc = updater(check_count, add, locate)

local Gauge = setmetatable({}, Metric)
Gauge.__index = Gauge
--- gauge:set(value, label_values?) -> true | nil, err   (last writer wins)
Gauge.set = updater(check_level, set_level, locate)
--- gauge:inc(value?, label_values?) -> true | nil, err   (adds up across workers)
Gauge.inc = updater(check_delta, add_delta, locate)

local Histogram = setmetatable({}, Metric)
Histogram.__index = Histogram
--- histogram:observe(value, label_values?) -> true | nil, err
Histogram.observe = updater(check_sample, observe, locate)

-- Children: a metric with its label values bound (metric:labels(...)).
local CounterChild = { inc = updater(check_count, add, locate_child) }
CounterChild.__index = CounterChild
local GaugeChild = {
    set = updater(check_level, set_level, locate_child),
    inc = updater(check_delta, add_delta, locate_child),
}
GaugeChild.__index = GaugeChild
local HistogramChild = { observe = updater(check_sample, observe, locate_child) }
HistogramChild.__index = HistogramChild

--- gauge:dec(value?, label_values?), child:dec(value?)
local function dec(self, value, lv)
    if value == nil then
        value = 1
    elseif type(value) ~= "number" then
        local err, reason
        value, err, reason = from_string(value, tonumber)
        if not value then
            local m = self.metric
            return fail(m, m.name .. err, reason)
        end
    end
    return self:inc(-value, lv)
end
Gauge.dec = dec
GaugeChild.dec = dec

local CHILD = { [Counter] = CounterChild, [Gauge] = GaugeChild, [Histogram] = HistogramChild }

--- child = metric:labels(label_values) -> child | nil, err
-- Binds label values once; child:inc(v) / child:set(v) / child:observe(v) then
-- skip the label lookup. The values are copied: changing the table later does
-- not change the child.
function Metric:labels(lv)
    local cell, err, reason = resolve(self, lv)
    if not cell then
        return fail(self, err, reason)
    end
    local copy = {}
    for i = 1, self.nlabels do
        copy[i] = lv[i]
    end
    local methods = CHILD[getmetatable(self)]
    local child = {
        metric = self, lv = copy, cell = cell, gen = self.gen, genp = self.genp,
        cells = self.cells, shared = self.shared, slot = self.slot,
        bounds = self.bounds, nbounds = self.nbounds,
    }
    -- The methods in the child itself, found by one lookup instead of a miss
    -- and a metatable (children of one metric share a shape, which the JIT
    -- checks once per trace).
    for k, f in pairs(methods) do
        if k ~= "__index" then
            child[k] = f
        end
    end
    return setmetatable(child, methods)
end

--- metric:del(label_values) -> true | nil, err
function Metric:del(lv)
    local ok, err, reason = fill_labels(self, lv)
    if not ok then
        return fail(self, err, reason)
    end
    local rc = lib.shmetrics_delete(self.reg.h, self.fam, vals_buf, lens_buf, self.nlabels)
    for i = 1, self.nlabels do
        anchors[i] = nil
    end
    if rc < 0 then
        local err = self.name .. ": " .. last_error(rc)
        log_corrupt(self.reg)
        return fail(self, err, reason_of(rc))
    end
    return true
end

--- metric:reset() -> true | nil, err
function Metric:reset()
    local rc = lib.shmetrics_reset(self.reg.h, self.fam)
    if rc < 0 then
        local err = self.name .. ": " .. last_error(rc)
        log_corrupt(self.reg)
        return nil, err
    end
    return true
end

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

local function define(self, kind, proto, name, help, label_names, buckets, opts)
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
    local genp = lib.shmetrics_family_gen(self.h, fam)
    local m = setmetatable({
        reg = self,
        name = name,
        fam = fam,
        kind = kind,
        nlabels = n,
        label_names = label_names,
        walk = walk[n],
        max_series = max_series,
        cache = {},
        genp = genp,
        gen = genp[0],
        cells = self.cells,
        shared = self.shared,
        slot = self.slot,
    }, proto)
    m.metric = m    -- the update methods serve metrics and children alike
    if kind == KIND_HISTOGRAM then
        m.bounds = lib.shmetrics_family_bounds(self.h, fam)
        -- the library drops a trailing +Inf
        m.nbounds = (buckets[nb] == INF) and nb - 1 or nb
    end
    self.metrics[fam] = m
    if n == 0 then
        -- A metric without labels is exposed (as 0) from the start.
        local rc = lib.shmetrics_series(self.h, fam, nil, nil, 0)
        if rc >= 0 then
            m.cache[1] = rc
        end
    end
    return m
end

--- prometheus:counter(name, help?, label_names?, options?) -> counter
-- options: { max_series = N } (label sets beyond N go to the overflow series)
function Registry:counter(name, help, label_names, opts)
    return define(self, KIND_COUNTER, Counter, name, help, label_names, nil, opts)
end

--- prometheus:gauge(name, help?, label_names?, options?) -> gauge
function Registry:gauge(name, help, label_names, opts)
    return define(self, KIND_GAUGE, Gauge, name, help, label_names, nil, opts)
end

--- prometheus:histogram(name, help?, label_names?, buckets?, options?) -> histogram
function Registry:histogram(name, help, label_names, buckets, opts)
    return define(self, KIND_HISTOGRAM, Histogram, name, help, label_names, buckets, opts)
end

-- Phases in which collect() may yield to the event loop between pieces.
local YIELDABLE = { content = true, timer = true, rewrite = true, access = true }

-- Fills a name list for the render filter; returns the count, or nil, err.
local function fill_names(names)
    if names == nil then
        return 0
    end
    if type(names) == "string" then
        names = { names }
    end
    if type(names) ~= "table" then
        return nil, "names must be a string or an array of strings"
    end
    local n = #names
    if n > MAX_FILTER_NAMES then
        return nil, "at most " .. MAX_FILTER_NAMES .. " names"
    end
    local ptrs = ffi_new("const char *[?]", n + 1)
    local lens = ffi_new("size_t[?]", n + 1)
    for i = 1, n do
        local name = names[i]
        if type(name) ~= "string" then
            return nil, "names[" .. i .. "] is not a string"
        end
        ptrs[i - 1] = name
        lens[i - 1] = #name
    end
    return n, ptrs, lens
end

-- Renders the exposition in `format` for the family `names` (nil: all),
-- handing each piece to `emit`. With `pause`, calls it between pieces
-- (collect() sleeps there so the worker serves other requests). With `page`
-- ({offset, limit, needle}: the status page), one page of a JSON render.
-- Returns true or nil, err.
local function render(self, format, names, emit, pause, page)
    local n, ptrs, lens = fill_names(names)
    if not n then
        return nil, ptrs
    end
    local rc = lib.shmetrics_render_open(self.h, format, ptrs, lens, n, render_out)
    if rc < 0 then
        return nil, last_error(rc)
    end
    -- Freed by the GC if emit() raises; explicitly below otherwise.
    local it = ffi.gc(render_out[0], lib.shmetrics_render_close)
    if page then
        rc = lib.shmetrics_render_page(it, page[1], page[2], page[3], #page[3])
    end
    local hint = self.chunk_bytes
    local first = true
    while rc >= 0 do
        rc = lib.shmetrics_render_next(it, hint, chunk_out, len_out)
        if rc <= 0 then
            break
        end
        -- The chunk is valid until the next render call: copy it now, before
        -- a pause lets another request's collect() use the scratch pointers.
        local chunk = ffi_string(chunk_out[0], len_out[0])
        if pause and not first then
            pause()
        end
        first = false
        emit(chunk)
    end
    ffi.gc(it, nil)
    lib.shmetrics_render_close(it)
    if rc < 0 then
        return nil, last_error(rc)
    end
    log_corrupt(self)
    return true
end

-- The format an Accept header asks for: OpenMetrics when it is acceptable
-- with a q-value at least that of the text format (Prometheus sends
-- "application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1").
local function negotiate(accept)
    if type(accept) == "table" then
        accept = concat(accept, ",")
    end
    if type(accept) ~= "string" then
        return FORMAT_TEXT
    end
    local om, text = 0, 0
    for part in accept:gmatch("[^,]+") do
        local mt = part:match("^%s*([^;%s]+)")
        mt = mt and mt:lower()
        local q = tonumber(part:match(";%s*[qQ]%s*=%s*([%d.]+)")) or 1
        local version = part:match(";%s*version%s*=%s*([%w.]+)")
        if mt == "application/openmetrics-text" then
            if (version == nil or version == "1.0.0" or version == "0.0.1") and q > om then
                om = q
            end
        elseif (mt == "text/plain" or mt == "text/*" or mt == "*/*") and q > text then
            text = q
        end
    end
    if om > 0 and om >= text then
        return FORMAT_OPENMETRICS
    end
    return FORMAT_TEXT
end
_M._negotiate = negotiate  -- for tests

-- A 1 ms sleep: the shortest pause that logs nothing on nginx builds without
-- OpenResty's patches (ngx.sleep(0) warns there on every call).
local function pause()
    ngx.sleep(0.001)
end

--- prometheus:metric_data(format?, names?) -> lines | string | nil, err
-- Without format: text 0.0.4 as an array of lines, each ending in "\n", so
-- that table.concat(prometheus:metric_data()) is the exposition (what
-- nginx-lua-prometheus returns). With format "text", "openmetrics" or "json":
-- one string. names: family names to include (default: all).
-- The exposition in `format` ("text", "openmetrics", "json") of `names` as
-- one string (a `page` as in render()), or nil, err.
local function render_string(self, format, names, page)
    local f = FORMATS[format]
    if not f then
        return nil, "format must be \"text\", \"openmetrics\" or \"json\""
    end
    local parts = {}
    local ok, err = render(self, f, names, function(s) parts[#parts + 1] = s end, nil, page)
    if not ok then
        return nil, err
    end
    return concat(parts)
end

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

-- The ?name[]= filter of a scrape: nil (all), or an array of names; false
-- for a malformed query ("?name[]" without a value), a client error.
local function scrape_names()
    local names = ngx.req.get_uri_args()["name[]"]
    if names == nil or names == true then
        return nil
    end
    if type(names) == "table" then
        for i = 1, #names do
            if type(names[i]) ~= "string" then
                return false
            end
        end
    end
    return names
end

-- Phases that serve a scrape from the render thread: request phases, which
-- nginx runs only in workers (the thread must never start in the master,
-- which forks), and which can yield while the thread renders.
local THREADED = { content = true, rewrite = true, access = true }

-- Serves the exposition rendered on the library's render thread: polls for
-- each piece, sends it, and sleeps 1 ms between pieces (longer while none is
-- ready, or while other scrapes have sent a piece's worth in this
-- millisecond: wait_turn), so the worker only ever holds its event loop to
-- copy and send one piece. The thread keeps at most RENDER_DEPTH pieces ready; ngx.flush(true)
-- waits while the client is slower than that, so nginx never buffers more
-- than one piece either. Stops the job as soon as the client is gone.
-- Returns true, or nil, err.
local sent_ms, sent_bytes = 0, 0   -- this worker's scrape bytes in the current ms

-- Waits for a piece or for this scrape's turn: 1 ms per scrape in progress
-- in this worker (at most 10 ms), so that 50 waiting scrapes wake about
-- 5 times per millisecond in all, not 50 times.
local function wait_turn()
    local n = lib.shmetrics_render_jobs()
    if n > 10 then
        n = 10
    elseif n < 1 then
        n = 1
    end
    ngx.sleep(n * 0.001)
end

local function render_threaded(self, format, names)
    local n, ptrs, lens = fill_names(names)
    if not n then
        return nil, ptrs
    end
    local rc = lib.shmetrics_render_start(self.h, format, ptrs, lens, n, self.chunk_bytes,
                                          RENDER_DEPTH, job_out)
    if rc < 0 then
        return nil, last_error(rc), rc == E_INTERNAL
    end
    -- Stopped by the GC if the request is torn down while it sleeps;
    -- explicitly below otherwise.
    local job = ffi.gc(job_out[0], lib.shmetrics_render_stop)
    local sent, bytes = true, 0
    local limit = self.chunk_bytes
    if limit < 1 then
        limit = 1   -- chunk_bytes = 0: one piece (the smallest) at a time
    end
    while true do
        -- The worker's scrapes together send at most `limit` bytes in one
        -- millisecond of the event loop's clock (ngx.now() is cached per
        -- iteration): many scrapes waking at once take turns instead of each
        -- copying a piece in the same iteration.
        local now = ngx.now()
        if now ~= sent_ms then
            sent_ms, sent_bytes = now, 0
        end
        rc = RENDER_PENDING
        if sent_bytes < limit then
            rc = lib.shmetrics_render_poll(job, chunk_out, len_out)
            if rc == 1 then
                local len = tonumber(len_out[0])
                sent_bytes = sent_bytes + len
                -- Copied before any yield: the piece is valid until the next poll.
                local ok, err = ngx.print(ffi_string(chunk_out[0], len))
                if ok then
                    ok, err = ngx.flush(true)
                    if err == "buffering" then
                        -- An HTTP/1.0 client: ngx_lua holds the whole body
                        -- to send it with a Content-Length (lua_http10_buffering).
                        ok = true
                    end
                end
                if not ok then
                    -- The client is gone: nothing more to render or send.
                    log(ngx.INFO, "shmetrics: scrape stopped after ", bytes, " bytes: ", err)
                    sent = false
                    break
                end
                bytes = bytes + len
            elseif rc ~= RENDER_PENDING then
                break
            end
        end
        if rc == 1 then
            pause()
        else
            wait_turn()
        end
    end
    ffi.gc(job, nil)
    lib.shmetrics_render_stop(job)
    if sent and rc < 0 then
        return nil, last_error(rc)
    end
    log_corrupt(self)
    return true
end

-- Serves the registry in `format` for the scrape's ?name[]= filter.
local function serve(self, format)
    local names = scrape_names()
    if names == false then
        return ngx.exit(ngx.HTTP_BAD_REQUEST)
    end
    ngx.header.content_type = CONTENT_TYPE[format]
    local p = ngx.get_phase()
    local ok, err
    local unstarted
    if self.render_thread and THREADED[p] then
        ok, err, unstarted = render_threaded(self, format, names)
        if unstarted then
            -- The thread could not start: serve anyway.
            log(ngx.WARN, "shmetrics: rendering in the event loop: ", err)
        end
    end
    if unstarted or not (self.render_thread and THREADED[p]) then
        ok, err = render(self, format, names, ngx.print, YIELDABLE[p] and pause or nil)
    end
    if not ok then
        log(ngx.ERR, "shmetrics: rendering failed: ", err)
        return ngx.exit(ngx.HTTP_INTERNAL_SERVER_ERROR)
    end
end

-- The format of a scrape: the `format` option if it forces one; else what
-- the Accept header prefers, but text 0.0.4 instead of OpenMetrics when a
-- counter lacks `_total` (OpenMetrics would expose it as <name>_total: the
-- stored series would change name). Says so once per worker.
local function scrape_format(self)
    local forced = self.format
    if forced then
        return forced
    end
    local f = negotiate(ngx.var.http_accept)
    if f == FORMAT_OPENMETRICS and self.om_renames then
        if not self.om_said then
            self.om_said = true
            log(ngx.WARN, "shmetrics: serving text format 0.0.4 to a client that prefers ",
                "OpenMetrics: counter \"", self.om_renames, "\" lacks the _total suffix, and ",
                "OpenMetrics would expose it as \"", self.om_renames, "_total\" (a new series ",
                "name in Prometheus); set init's option format = \"openmetrics\" to serve it anyway")
        end
        return FORMAT_TEXT
    end
    return f
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

-- Counts one log_error call in the error counter (the caller's slot).
local function count_error(self)
    if self.cells == nil and phase() ~= "init" then
        attach_slot(self)
    end
    local cells = self.cells
    if cells ~= nil then
        cells[CELL_LOG_ERRORS] = cells[CELL_LOG_ERRORS] + 1
    end
end

--- prometheus:log_error(...)   (any phase of a worker)
-- Logs its arguments, concatenated, at level error and counts one error in
-- the error counter (error_metric_name), as nginx-lua-prometheus does.
function Registry:log_error(...)
    log(ngx and ngx.ERR, ...)
    count_error(self)
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
    load_library(opts.lib_path)
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
