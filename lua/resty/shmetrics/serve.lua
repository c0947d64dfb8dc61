-- resty.shmetrics.serve: the serving of a registry's exposition: the
-- ?name[]= scrape filter, the format an Accept header asks for, the render loop
-- in the event loop (with pauses between pieces) and the one on the library's
-- render thread (render_threaded, wait_turn), and render_string for
-- metric_data() and the status page. Requires only the binding
-- (docs/architecture.md); the registry hands the loaded library over with bind().

local ffi = require "ffi"
local binding = require "resty.shmetrics.binding"

local type = type
local tonumber = tonumber
local concat = table.concat
local ffi_new = ffi.new
local ffi_string = ffi.string
local ngx = ngx

local E_INTERNAL = binding.E_INTERNAL
local FORMAT_TEXT = binding.FORMAT_TEXT
local FORMAT_OPENMETRICS = binding.FORMAT_OPENMETRICS
local FORMAT_JSON = binding.FORMAT_JSON
local MAX_FILTER_NAMES = binding.MAX_FILTER_NAMES
local RENDER_PENDING = binding.RENDER_PENDING
local last_error = binding.last_error
local log_corrupt = binding.log_corrupt
local log = binding.log

local _M = {}

local RENDER_DEPTH = 2               -- pieces a scrape's queue holds on the render thread

local CONTENT_TYPE = {
    [FORMAT_TEXT] = "text/plain; version=0.0.4; charset=utf-8",
    [FORMAT_OPENMETRICS] = "application/openmetrics-text; version=1.0.0; charset=utf-8",
    [FORMAT_JSON] = "application/json; charset=utf-8",
}
local FORMATS = { text = FORMAT_TEXT, openmetrics = FORMAT_OPENMETRICS, json = FORMAT_JSON }

local lib               -- the loaded library (namespace: call lib.fn, never cache fn); bind()

-- Out-parameters, allocated once per VM and reused on every call.
local render_out = ffi_new("shmetrics_render *[1]")
local job_out = ffi_new("shmetrics_render_job *[1]")
local chunk_out = ffi_new("const char *[1]")
local len_out = ffi_new("size_t[1]")

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

-- A 1 ms sleep: the shortest pause that logs nothing on nginx builds without
-- OpenResty's patches (ngx.sleep(0) warns there on every call).
local function pause()
    ngx.sleep(0.001)
end

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

--- serve.bind(lib): the library init() loaded.
function _M.bind(l)
    lib = l
end

_M.render_string = render_string
_M.serve = serve
_M.scrape_format = scrape_format
_M.negotiate = negotiate

return _M
