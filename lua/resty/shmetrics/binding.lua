-- resty.shmetrics.binding: the C interface of libshmetrics.so: the ffi.cdef of
-- include/shmetrics.h, the Lua mirrors of its constants and of the layout's cell
-- numbers (tests/abi.rs and tests/header.rs check they agree), loading the
-- library through package.cpath, and the library's error text. The bottom layer:
-- it requires nothing of resty.shmetrics (docs/architecture.md).

local ffi = require "ffi"

local error = error
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local str_format = string.format
local ffi_new = ffi.new
local ffi_string = ffi.string
local ngx = ngx

local _M = {
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
local FLAG_RESET = 1
local FLAG_FOLLOW_CONFIG = 2
local FAMILY_REPLACE = 256

local KIND_COUNTER = 0
local KIND_GAUGE = 1
local KIND_HISTOGRAM = 2

local CELL_GAUGE_SEQ = 0
-- The gauge cell protocol (layout.rs, GAUGE_*): offsets from a gauge series'
-- first cell, in the writer's slot and (GAUGE_SHARED_STAMP) in the shared slot.
local GAUGE_SET_VALUE = 0
local GAUGE_SET_STAMP = 1
local GAUGE_DELTA = 2
local GAUGE_DELTA_STAMP = 3
local GAUGE_SHARED_STAMP = 0
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

local lib               -- the loaded library (namespace: call lib.fn, never cache fn)

-- The library's message buffer, allocated once per VM and reused.
local errbuf_len = 1024
local errbuf = ffi_new("char[?]", errbuf_len)

-- The library's message for the failure `code` of the last call in this thread.
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

-- nginx's phase (ngx.get_phase()), or "standalone" outside nginx.
local function phase()
    if ngx and ngx.get_phase then
        return ngx.get_phase()
    end
    return "standalone"
end

-- ngx.log where there is one; nothing outside nginx.
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

_M.E_LABEL_COUNT = E_LABEL_COUNT
_M.E_LABEL_TOO_LONG = E_LABEL_TOO_LONG
_M.E_FULL = E_FULL
_M.E_NO_SLOT = E_NO_SLOT
_M.E_INTERNAL = E_INTERNAL
_M.OPEN_RECREATED = OPEN_RECREATED
_M.FORMAT_TEXT = FORMAT_TEXT
_M.FORMAT_OPENMETRICS = FORMAT_OPENMETRICS
_M.FORMAT_JSON = FORMAT_JSON
_M.MAX_FILTER_NAMES = MAX_FILTER_NAMES
_M.SERIES_OVERFLOW = SERIES_OVERFLOW
_M.RENDER_PENDING = RENDER_PENDING
_M.FLAG_RESET = FLAG_RESET
_M.FLAG_FOLLOW_CONFIG = FLAG_FOLLOW_CONFIG
_M.FAMILY_REPLACE = FAMILY_REPLACE
_M.KIND_COUNTER = KIND_COUNTER
_M.KIND_GAUGE = KIND_GAUGE
_M.KIND_HISTOGRAM = KIND_HISTOGRAM
_M.CELL_GAUGE_SEQ = CELL_GAUGE_SEQ
_M.GAUGE_SET_VALUE = GAUGE_SET_VALUE
_M.GAUGE_SET_STAMP = GAUGE_SET_STAMP
_M.GAUGE_DELTA = GAUGE_DELTA
_M.GAUGE_DELTA_STAMP = GAUGE_DELTA_STAMP
_M.GAUGE_SHARED_STAMP = GAUGE_SHARED_STAMP
_M.DEFAULT_MAX_SLOTS = DEFAULT_MAX_SLOTS
_M.CELL_ERRORS = CELL_ERRORS
_M.CELL_LOG_ERRORS = CELL_LOG_ERRORS
_M.STAMP_SLOTS = STAMP_SLOTS
_M.R = R
_M.REASON_NAME = REASON_NAME

_M.last_error = last_error
_M.load_library = load_library
_M.phase = phase
_M.log = log
_M.log_corrupt = log_corrupt

--- binding.library() -> the loaded library, or nil before load_library()
function _M.library()
    return lib
end

return _M
