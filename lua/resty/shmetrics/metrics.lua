-- resty.shmetrics.metrics: the metric objects (counter, gauge, histogram and
-- their children), label checks and the label cache, the value checks, the
-- hot-path updaters that write the cells of this process's slot, and the
-- counting and logging of hot-path errors. Requires only the binding
-- (docs/architecture.md); the registry (resty.shmetrics) makes the objects
-- with new() and hands the loaded library over with bind().

local ffi = require "ffi"
local binding = require "resty.shmetrics.binding"

local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local floor = math.floor
local concat = table.concat
local str_format = string.format
local ffi_new = ffi.new
local ngx = ngx

local INF = math.huge

local E_LABEL_COUNT = binding.E_LABEL_COUNT
local E_LABEL_TOO_LONG = binding.E_LABEL_TOO_LONG
local E_FULL = binding.E_FULL
local E_NO_SLOT = binding.E_NO_SLOT
local SERIES_OVERFLOW = binding.SERIES_OVERFLOW
local KIND_COUNTER = binding.KIND_COUNTER
local KIND_GAUGE = binding.KIND_GAUGE
local KIND_HISTOGRAM = binding.KIND_HISTOGRAM
local CELL_GAUGE_SEQ = binding.CELL_GAUGE_SEQ
local GAUGE_SET_VALUE = binding.GAUGE_SET_VALUE
local GAUGE_SET_STAMP = binding.GAUGE_SET_STAMP
local GAUGE_DELTA = binding.GAUGE_DELTA
local GAUGE_DELTA_STAMP = binding.GAUGE_DELTA_STAMP
local GAUGE_SHARED_STAMP = binding.GAUGE_SHARED_STAMP
local CELL_ERRORS = binding.CELL_ERRORS
local CELL_LOG_ERRORS = binding.CELL_LOG_ERRORS
local STAMP_SLOTS = binding.STAMP_SLOTS
local R = binding.R
local REASON_NAME = binding.REASON_NAME
local last_error = binding.last_error
local log_corrupt = binding.log_corrupt
local phase = binding.phase
local log = binding.log

local _M = {}

local WARN_INTERVAL = 60             -- seconds between warnings of one kind per metric
local MAX_LABELS = 10

local lib               -- the loaded library (namespace: call lib.fn, never cache fn); bind()
local warn_once         -- defined below

-- Scratch buffers, allocated once per VM and reused on every call.
local vals_buf = ffi_new("const char *[?]", MAX_LABELS)
local lens_buf = ffi_new("size_t[?]", MAX_LABELS)

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

-- Attaches this process's slot to the registry reg and every metric of it
-- (first write). When every slot is taken, tries again at most once a second:
-- claiming scans all slots, too slow to repeat on every update.
attach_slot = function(reg)
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
        local ok, err, reason = attach_slot(self.reg)
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
    cells[cell + GAUGE_SET_VALUE] = v
    cells[cell + GAUGE_SET_STAMP] = stamp
    -- Publishing the stamp last makes this set the one readers use.
    m.shared[cell + GAUGE_SHARED_STAMP] = stamp
end

local function add_delta(m, cells, cell, v)
    -- Deltas count only since the last set (whose stamp is shared).
    local stamp = m.shared[cell + GAUGE_SHARED_STAMP]
    if cells[cell + GAUGE_DELTA_STAMP] ~= stamp then
        cells[cell + GAUGE_DELTA] = 0
        cells[cell + GAUGE_DELTA_STAMP] = stamp
    end
    cells[cell + GAUGE_DELTA] = cells[cell + GAUGE_DELTA] + v
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

local PROTO = { [KIND_COUNTER] = Counter, [KIND_GAUGE] = Gauge, [KIND_HISTOGRAM] = Histogram }

--- metrics.new(reg, kind, fam, name, label_names, max_series, nbounds) -> metric
-- The object of family `fam` (which the registry defined in the library) with
-- its `kind`'s methods; nbounds: a histogram's finite bucket count. A metric
-- without labels gets its one series at once (exposed as 0 from the start).
function _M.new(reg, kind, fam, name, label_names, max_series, nbounds)
    local n = #label_names
    local genp = lib.shmetrics_family_gen(reg.h, fam)
    local m = setmetatable({
        reg = reg,
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
        cells = reg.cells,
        shared = reg.shared,
        slot = reg.slot,
    }, PROTO[kind])
    m.metric = m    -- the update methods serve metrics and children alike
    if kind == KIND_HISTOGRAM then
        m.bounds = lib.shmetrics_family_bounds(reg.h, fam)
        m.nbounds = nbounds
    end
    if n == 0 then
        local rc = lib.shmetrics_series(reg.h, fam, nil, nil, 0)
        if rc >= 0 then
            m.cache[1] = rc
        end
    end
    return m
end

-- Counts one log_error call in the error counter (the caller's slot).
function _M.count_log_error(self)
    if self.cells == nil and phase() ~= "init" then
        attach_slot(self)
    end
    local cells = self.cells
    if cells ~= nil then
        cells[CELL_LOG_ERRORS] = cells[CELL_LOG_ERRORS] + 1
    end
end

--- metrics.bind(lib): the library init() loaded (every update calls into it).
function _M.bind(l)
    lib = l
end

_M.MAX_LABELS = MAX_LABELS
_M.WARN_INTERVAL = WARN_INTERVAL

return _M
