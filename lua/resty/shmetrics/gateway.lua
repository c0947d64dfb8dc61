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

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local error = error
local setmetatable = setmetatable
local byte = string.byte
local sub = string.sub
local find = string.find
local lower = string.lower
local gsub = string.gsub
local concat = table.concat
local floor = math.floor
local ngx = ngx

local ok_new_tab, new_tab = pcall(require, "table.new")
if not ok_new_tab then
    new_tab = function() return {} end
end

local _M = { _VERSION = "0.1.0" }

local OTHER = "other"
local NONE = "none"

-- Durations of LLM calls reach minutes: the request-duration histograms go to 300 s.
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                          30, 60, 120, 300 }
local DEFAULT_TTFT_BUCKETS = { 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30 }

-- Longest usage object read (OpenAI's, with its *_details, is about 300 bytes).
local USAGE_MAX = 4096
-- Longest SSE line kept while it arrives in pieces; longer lines are skipped.
local SSE_LINE_MAX = 1048576
-- Longest namespace label value; longer values become "other".
local NAMESPACE_MAX = 64

local CTX_KEY = "shmetrics_gateway"

local METHODS = { GET = "GET", POST = "POST", PUT = "PUT", DELETE = "DELETE",
                  PATCH = "PATCH", HEAD = "HEAD", OPTIONS = "OPTIONS" }
-- Methods whose requests are read for a JSON body.
local BODY_METHODS = { POST = true, PUT = true, PATCH = true }

-- Response modes (decided at the first body chunk).
local MODE_NONE = 0         -- not read
local MODE_JSON = 1
local MODE_SSE = 2
local MODE_UNSUPPORTED = 3  -- a 2xx model response we cannot read (type, encoding)

-- gateway_instrumentation_errors_total{reason}
local REASONS = {
    "request_unreadable",   -- body spooled to a file or unreadable: model "other"
    "request_malformed",    -- body starts like a JSON object but does not parse
    "response_unsupported", -- 2xx model response neither JSON nor SSE, or compressed
    "response_malformed",   -- JSON not framed as an object; SSE line not SSE
    "usage_malformed",      -- a usage object that does not parse, or holds no counts
    "usage_missing",        -- complete 2xx model response without usage
    "usage_not_requested",  -- SSE stream without usage; the request lacked
                            -- stream_options.include_usage
    "namespace_overflow",   -- more distinct namespaces than max_namespaces
    "callback_error",       -- a namespace/route/upstream function raised: see error.log
    "internal",             -- a Lua error in this module (a bug): see error.log
}

------------------------------------------------------------------------------
-- JSON scanning. Plain `find` and byte loops only (both compile in LuaJIT);
-- no string is built except the few values we keep.

local function is_ws(b)
    return b == 32 or b == 10 or b == 13 or b == 9
end

local function skip_ws_loop(s, p, n)
    while p <= n do
        local b = byte(s, p)
        if b ~= 32 and b ~= 10 and b ~= 13 and b ~= 9 then
            return p
        end
        p = p + 1
    end
    return p
end

-- The first non-blank index at or after p (> n if none). Loop-free when there is
-- no blank, as in most machine-written JSON: a loop here would split the trace of
-- every caller.
local function skip_ws(s, p, n)
    local b = byte(s, p)
    if b == 32 or b == 10 or b == 13 or b == 9 then
        return skip_ws_loop(s, p + 1, n)
    end
    return p
end

-- Index of the quote closing the string that opens at p, or nil (not in s[..n]).
-- Lenient (the request's own server validates it): escapes are only skipped.
local function string_close(s, p, n)
    local q = p
    while true do
        q = find(s, '"', q + 1, true)
        if q == nil or q > n then
            return nil
        end
        local k = q - 1
        while byte(s, k) == 92 do
            k = k - 1
        end
        if (q - 1 - k) % 2 == 0 then
            return q
        end
    end
end

-- Index after the value at p, or nil when it is truncated or malformed. Lenient
-- inside containers: counts brackets, skips strings.
local function skip_value(s, p, n)
    if p > n then
        return nil
    end
    local b = byte(s, p)
    if b == 34 then
        local e = string_close(s, p, n)
        return e and e + 1
    elseif b == 123 or b == 91 then
        local depth = 0
        while p <= n do
            b = byte(s, p)
            if b == 34 then
                local e = string_close(s, p, n)
                if e == nil then
                    return nil
                end
                p = e
            elseif b == 123 or b == 91 then
                depth = depth + 1
            elseif b == 125 or b == 93 then
                depth = depth - 1
                if depth == 0 then
                    return p + 1
                end
            end
            p = p + 1
        end
        return nil
    end
    local q = p
    while q <= n do
        b = byte(s, q)
        if b == 44 or b == 125 or b == 93 or is_ws(b) then
            break
        end
        q = q + 1
    end
    if q == p then
        return nil
    end
    return q
end

-- s[p..] starts with lit. (`find` would search on past p; LuaJIT compiles a
-- `sub` compared with a string to a compare, without making the string.)
local function has_at(s, p, lit)
    return sub(s, p, p + #lit - 1) == lit
end

-- The string whose quotes are at p and e is key.
local function key_is(s, p, e, key)
    return e - p - 1 == #key and has_at(s, p + 1, key)
end

-- Scans the JSON object at p (s[p] == "{") member by member, setting into `out`
-- the top-level "model" (string) and stream_options.include_usage (true/false). Returns the index after the object, or nil.
local function scan_object(s, p, n, out, top)
    p = skip_ws(s, p + 1, n)
    if byte(s, p) == 125 then
        return p + 1
    end
    while p <= n do
        if byte(s, p) ~= 34 then
            return nil
        end
        local ke = string_close(s, p, n)
        if ke == nil then
            return nil
        end
        local v = skip_ws(s, ke + 1, n)
        if byte(s, v) ~= 58 then
            return nil
        end
        v = skip_ws(s, v + 1, n)
        if v > n then
            return nil
        end
        local b = byte(s, v)
        local e
        if top and b == 34 and key_is(s, p, ke, "model") then
            e = string_close(s, v, n)
            if e == nil then
                return nil
            end
            out.req_model = sub(s, v + 1, e - 1)
            e = e + 1
        elseif top and b == 123 and key_is(s, p, ke, "stream_options") then
            e = scan_object(s, v, n, out, false)
        else
            e = skip_value(s, v, n)
            if e and (b == 116 or b == 102) and not top
                    and key_is(s, p, ke, "include_usage") then
                out.req_include_usage = b == 116
            end
        end
        if e == nil then
            return nil
        end
        p = skip_ws(s, e, n)
        b = byte(s, p)
        if b == 125 then
            return p + 1
        elseif b ~= 44 then
            return nil
        end
        p = skip_ws(s, p + 1, n)
    end
    return nil
end

-- Reads a request body. Returns true (a JSON object; out.req_model etc. set when
-- present), false (not a JSON object: not a model request) or nil (malformed).
local function scan_request(body, out)
    local n = #body
    local p = skip_ws(body, 1, n)
    if p > n or byte(body, p) ~= 123 then
        return false
    end
    local e = scan_object(body, p, n, out, true)
    if e == nil or skip_ws(body, e, n) <= n then
        return nil
    end
    return true
end

-- Strict JSON for the usage object: results of the parsers below are an index
-- (after the value) or one of these codes.
local MORE = -1     -- the input ended inside the value
local BAD = -2      -- not JSON

local ESCAPES = { [34] = true, [92] = true, [47] = true, [98] = true, [102] = true,
                  [110] = true, [114] = true, [116] = true }

local function is_hex(b)
    return b and ((b >= 48 and b <= 57) or (b >= 97 and b <= 102) or (b >= 65 and b <= 70))
end

local function strict_string(s, p, n)
    local q = p + 1
    while q <= n do
        local b = byte(s, q)
        if b == 34 then
            return q + 1
        elseif b == 92 then
            local c = byte(s, q + 1)
            if q + 1 > n then
                return MORE
            elseif c == 117 then
                if q + 5 > n then
                    return MORE
                end
                for k = q + 2, q + 5 do
                    if not is_hex(byte(s, k)) then
                        return BAD
                    end
                end
                q = q + 6
            elseif ESCAPES[c] then
                q = q + 2
            else
                return BAD
            end
        elseif b < 32 then
            return BAD
        else
            q = q + 1
        end
    end
    return MORE
end

local function is_digit(b)
    return b ~= nil and b >= 48 and b <= 57
end

-- JSON number at p. A number that reaches the end of the input may go on: MORE.
local function strict_number(s, p, n)
    local q = p
    if byte(s, q) == 45 then
        q = q + 1
    end
    if q > n then
        return MORE
    end
    local b = byte(s, q)
    if b == 48 then
        q = q + 1
    elseif is_digit(b) then
        repeat q = q + 1 until not is_digit(byte(s, q)) or q > n
    else
        return BAD
    end
    if q <= n and byte(s, q) == 46 then
        q = q + 1
        if q > n then
            return MORE
        end
        if not is_digit(byte(s, q)) then
            return BAD
        end
        repeat q = q + 1 until not is_digit(byte(s, q)) or q > n
    end
    if q <= n and (byte(s, q) == 101 or byte(s, q) == 69) then
        q = q + 1
        if q <= n and (byte(s, q) == 43 or byte(s, q) == 45) then
            q = q + 1
        end
        if q > n then
            return MORE
        end
        if not is_digit(byte(s, q)) then
            return BAD
        end
        repeat q = q + 1 until not is_digit(byte(s, q)) or q > n
    end
    if q > n then
        return MORE
    end
    return q
end

local function strict_literal(s, p, n, lit)
    local e = p + #lit
    if e - 1 <= n then
        if sub(s, p, e - 1) == lit then
            return e
        end
        return BAD
    end
    if sub(s, p, n) == sub(lit, 1, n - p + 1) then
        return MORE
    end
    return BAD
end

local strict_value

local function strict_container(s, p, n, depth, close)
    if depth > 16 then
        return BAD
    end
    p = skip_ws(s, p + 1, n)
    if p > n then
        return MORE
    end
    if byte(s, p) == close then
        return p + 1
    end
    while true do
        if close == 125 then
            if byte(s, p) ~= 34 then
                return BAD
            end
            p = strict_string(s, p, n)
            if p < 0 then
                return p
            end
            p = skip_ws(s, p, n)
            if p > n then
                return MORE
            end
            if byte(s, p) ~= 58 then
                return BAD
            end
            p = skip_ws(s, p + 1, n)
        end
        p = strict_value(s, p, n, depth + 1)
        if p < 0 then
            return p
        end
        p = skip_ws(s, p, n)
        if p > n then
            return MORE
        end
        local b = byte(s, p)
        if b == close then
            return p + 1
        elseif b ~= 44 then
            return BAD
        end
        p = skip_ws(s, p + 1, n)
        if p > n then
            return MORE
        end
    end
end

strict_value = function(s, p, n, depth)
    if p > n then
        return MORE
    end
    local b = byte(s, p)
    if b == 34 then
        return strict_string(s, p, n)
    elseif b == 123 then
        return strict_container(s, p, n, depth, 125)
    elseif b == 91 then
        return strict_container(s, p, n, depth, 93)
    elseif b == 116 then
        return strict_literal(s, p, n, "true")
    elseif b == 102 then
        return strict_literal(s, p, n, "false")
    elseif b == 110 then
        return strict_literal(s, p, n, "null")
    end
    return strict_number(s, p, n)
end

-- parse_usage's results
local USAGE_OK = 1
local USAGE_NULL = 2    -- "usage": null (OpenAI's streamed chunks before the last)
local NOT_KEY = 3       -- the text "usage" was a string value, not a key

-- Token counts: OpenAI's chat/completions names, and the Responses API's.
local INPUT_KEYS = { prompt_tokens = true, input_tokens = true }
local OUTPUT_KEYS = { completion_tokens = true, output_tokens = true }

-- Reads the usage member whose key starts at k (s[k..k+6] == '"usage"'), within
-- s[..n]. Returns USAGE_OK, input, output, index after the object; USAGE_NULL
-- or NOT_KEY; MORE (input ended first); or BAD.
local function parse_usage(s, k, n)
    local p = skip_ws(s, k + 7, n)
    if p > n then
        return MORE
    end
    if byte(s, p) ~= 58 then
        return NOT_KEY
    end
    p = skip_ws(s, p + 1, n)
    if p > n then
        return MORE
    end
    local b = byte(s, p)
    if b == 110 then
        local e = strict_literal(s, p, n, "null")
        if e < 0 then
            return e
        end
        return USAGE_NULL
    elseif b ~= 123 then
        return BAD
    end
    local tin, tout
    p = skip_ws(s, p + 1, n)
    if p > n then
        return MORE
    end
    if byte(s, p) == 125 then
        return BAD
    end
    while true do
        if byte(s, p) ~= 34 then
            return BAD
        end
        local ke = strict_string(s, p, n)
        if ke < 0 then
            return ke
        end
        local key = ke - p <= 19 and sub(s, p + 1, ke - 2) or nil
        p = skip_ws(s, ke, n)
        if p > n then
            return MORE
        end
        if byte(s, p) ~= 58 then
            return BAD
        end
        p = skip_ws(s, p + 1, n)
        local isin, isout = INPUT_KEYS[key], OUTPUT_KEYS[key]
        if isin or isout then
            local e = strict_number(s, p, n)
            if e < 0 then
                return e
            end
            local v = tonumber(sub(s, p, e - 1))
            if not v or v < 0 or v ~= floor(v) or v >= 2^53 then
                return BAD
            end
            if isin then
                if tin == nil then tin = v end
            elseif tout == nil then
                tout = v
            end
            p = e
        else
            p = strict_value(s, p, n, 1)
            if p < 0 then
                return p
            end
        end
        p = skip_ws(s, p, n)
        if p > n then
            return MORE
        end
        b = byte(s, p)
        if b == 125 then
            if tin == nil and tout == nil then
                return BAD
            end
            return USAGE_OK, tin or 0, tout or 0, p + 1
        elseif b ~= 44 then
            return BAD
        end
        p = skip_ws(s, p + 1, n)
        if p > n then
            return MORE
        end
    end
end

------------------------------------------------------------------------------
-- Response scanners. `st` is the request's state; chunks are only read.

-- Reads the `"usage"` found at k in chunk[..n]. Returns where to search on, or
-- nil when the chunk ends inside the object (carried to the next chunk, or bad
-- at the end of the body).
local function json_usage_at(st, chunk, k, n, eof)
    local code, tin, tout, e = parse_usage(chunk, k, n)
    if code == USAGE_OK then
        st.tokens_in, st.tokens_out = tin, tout
        return e
    elseif code == MORE then
        if n - k + 1 < USAGE_MAX and not eof then
            st.carry = sub(chunk, k)
            st.pending = true
        else
            st.usage_bad = true
        end
        return nil
    elseif code == BAD then
        st.usage_bad = true
    end
    return k + 1
end

-- A non-streamed JSON body: the first and last non-blank bytes frame an object;
-- every `"usage"` key is read (the last one that parses wins). Between chunks
-- only a small carry is kept: a usage object in progress (<= USAGE_MAX bytes)
-- or the last bytes that could start the key.
local function json_feed(st, chunk, eof)
    local n = #chunk
    if n > 0 then
        if not st.opened then
            local p = skip_ws(chunk, 1, n)
            if p <= n then
                st.opened = true
                if byte(chunk, p) ~= 123 then
                    st.malformed = true
                end
            end
        end
        local q = n
        if is_ws(byte(chunk, q)) then
            q = q - 1
            while q >= 1 and is_ws(byte(chunk, q)) do
                q = q - 1
            end
        end
        if q >= 1 then
            st.last_byte = byte(chunk, q)
        end
    end
    if st.malformed then
        st.carry = nil
        return
    end
    local from = 1
    local carry = st.carry
    local pending
    if carry ~= nil and n > 0 then
        st.carry = nil
        pending = st.pending
        local c = #carry
        local k = 1                 -- a pending carry starts with the key
        if not pending then
            -- a tail of at most 6 bytes: does the key start in it?
            k = find(carry .. sub(chunk, 1, 6), '"usage"', 1, true)
        end
        st.pending = nil
        if k ~= nil and k <= c then
            local whole = n <= USAGE_MAX
            local s = carry .. (whole and chunk or sub(chunk, 1, USAGE_MAX))
            local m = #s
            while k ~= nil and k <= c do
                local code, tin, tout, e = parse_usage(s, k, m)
                if code == USAGE_OK then
                    st.tokens_in, st.tokens_out = tin, tout
                    if e - c > from then
                        from = e - c
                    end
                    k = find(s, '"usage"', e, true)
                elseif code == MORE then
                    if whole and m - k + 1 < USAGE_MAX and not eof then
                        st.carry = sub(s, k)
                        st.pending = true
                    else
                        st.usage_bad = true
                    end
                    return
                else
                    if code == BAD then
                        st.usage_bad = true
                    end
                    k = find(s, '"usage"', k + 1, true)
                end
            end
        end
    end
    local k = find(chunk, '"usage"', from, true)
    if k ~= nil then
        -- usually one match: `if`, and a loop only for more (see skip_ws)
        from = json_usage_at(st, chunk, k, n, eof)
        if from == nil then
            return
        end
        k = find(chunk, '"usage"', from, true)
        while k ~= nil do
            from = json_usage_at(st, chunk, k, n, eof)
            if from == nil then
                return
            end
            k = find(chunk, '"usage"', from, true)
        end
    end
    if not eof and n > 0 then
        -- The key may be split across chunks: keep the last (at most 6) bytes
        -- from a quote on, with the previous tail when this chunk is shorter.
        local s, base = chunk, 0
        if n < 6 and carry ~= nil and not pending then
            s = carry .. chunk
            base = #carry
        end
        local m = #s
        local t = m - 5
        local lo = from > 1 and from + base or 1   -- not into a usage already read
        if t < lo then
            t = lo
        end
        local qp = find(s, '"', t, true)
        if qp ~= nil then
            st.carry = sub(s, qp)
        end
    end
end

-- Reads the `"usage"` found at u in the line ending at j; returns the next one
-- in s (or #s + 1).
local function sse_usage_at(st, s, u, j)
    local code, tin, tout, e = parse_usage(s, u, j)
    if code == USAGE_OK then
        st.tokens_in, st.tokens_out = tin, tout
        return find(s, '"usage"', e, true) or #s + 1
    elseif code == BAD or code == MORE then
        st.usage_bad = true     -- the line ended inside the object: MORE is bad too
    end
    return find(s, '"usage"', u + 1, true) or #s + 1
end

-- One complete SSE line s[i..j] (without its "\n"). `u` is the index of the next
-- `"usage"` in s at or after i (or > j if none). Returns the next such index
-- after this line.
local function sse_line(st, s, i, j, now, u)
    if j >= i and byte(s, j) == 13 then
        j = j - 1
    end
    if j < i then
        return u        -- blank line: end of an event
    end
    local b = byte(s, i)
    if b == 100 and byte(s, i + 1) == 97 and byte(s, i + 2) == 116 and byte(s, i + 3) == 97
            and byte(s, i + 4) == 58 and i + 4 <= j then
        local p = i + 5
        if byte(s, p) == 32 then
            p = p + 1
        end
        if p > j then
            return u    -- empty data
        end
        b = byte(s, p)
        if b == 123 then
            if st.ttft_at == nil then
                st.ttft_at = now
            end
            if u <= j then
                u = sse_usage_at(st, s, u, j)
                while u <= j do     -- a second key in one line: rare
                    u = sse_usage_at(st, s, u, j)
                end
            end
        elseif b == 91 and j - p == 5 and has_at(s, p, "[DONE]") then
            st.done = true
        else
            st.malformed = true
        end
    elseif b == 58 then
        -- a comment (keep-alive)
    else
        local c = find(s, ":", i, true)
        local name = (c ~= nil and c <= j and c - i <= 5) and sub(s, i, c - 1) or nil
        if name ~= "event" and name ~= "id" and name ~= "retry" then
            st.malformed = true
        end
    end
    while u <= j do
        u = find(s, '"usage"', u + 1, true) or #s + 1
    end
    return u
end

-- A streamed (text/event-stream) body, line by line; only an incomplete last
-- line is kept between chunks. `now` stamps the first data event (TTFT).
local function sse_feed(st, chunk, eof, now)
    local n = #chunk
    local pos = 1
    if st.skip_line then
        local nl = find(chunk, "\n", 1, true)
        if nl == nil then
            return
        end
        st.skip_line = nil
        pos = nl + 1
    elseif st.parts ~= nil then
        local parts = st.parts
        local nl = find(chunk, "\n", 1, true)
        if nl == nil and not eof then
            st.plen = st.plen + n
            if st.plen > SSE_LINE_MAX then
                st.parts = nil
                st.skip_line = true
                st.malformed = true
                return
            end
            parts[#parts + 1] = chunk
            return
        end
        local last = nl and nl - 1 or n
        parts[#parts + 1] = sub(chunk, 1, last)
        local line = concat(parts)
        st.parts = nil
        local m = #line
        sse_line(st, line, 1, m, now, find(line, '"usage"', 1, true) or m + 1)
        pos = last + 2
    end
    if pos > n then
        return
    end
    local u = find(chunk, '"usage"', pos, true) or n + 1
    while pos <= n do
        local nl = find(chunk, "\n", pos, true)
        if nl == nil then
            if eof then
                sse_line(st, chunk, pos, n, now, u)
            else
                if st.ttft_at == nil and byte(chunk, pos) == 100 then
                    st.ttft_at = now    -- a data line arriving in pieces
                end
                st.parts = { sub(chunk, pos) }
                st.plen = n - pos + 1
            end
            return
        end
        u = sse_line(st, chunk, pos, nl - 1, now, u)
        pos = nl + 1
    end
end

------------------------------------------------------------------------------
-- Outcome of a request (log phase).

-- The last entry of an upstream variable ("502, 504" after retries, "502 : 504"
-- after an internal redirect).
local function last_entry(s)
    if s == nil then
        return nil
    end
    local i = #s
    while i > 0 do
        local b = byte(s, i)
        if b == 32 or b == 44 or b == 58 then
            break
        end
        i = i - 1
    end
    return sub(s, i + 1)
end

local function proxied(var)
    local addr = var.upstream_addr
    return addr ~= nil and addr ~= ""
end

-- The error_type of a finished request, or nil when it succeeded, and whether
-- an upstream was involved. `var` is ngx.var (or a table in tests); it is read
-- only on the error paths.
local function classify(status, started, eof, var)
    if status == 499 then
        return "client_abort", proxied(var)
    end
    if status >= 500 then
        if not proxied(var) then
            return "internal_error", false
        end
        local connect = last_entry(var.upstream_connect_time)
        if connect == nil or connect == "-" or connect == "" then
            return "upstream_connect_failed", true
        end
        local header = last_entry(var.upstream_header_time)
        if (header == nil or header == "-") and last_entry(var.upstream_status) == "504" then
            return "upstream_timeout", true
        end
        return "upstream_5xx", true
    end
    if status >= 400 then
        return "client_error", proxied(var)
    end
    if not eof then
        -- The response began (or was due) but its last byte never left:
        -- nginx logs the status it sent. $request_completion tells who stopped.
        if var.request_completion ~= "OK" then
            return "client_abort", proxied(var)
        elseif started then
            return "upstream_incomplete", true
        end
    end
    return nil, false
end

------------------------------------------------------------------------------
-- The gateway

local Gateway = {}
Gateway.__index = Gateway

local function check_buckets(v, what)
    if v == nil then
        return nil
    end
    if type(v) ~= "table" or #v == 0 then
        error("bad option \"" .. what .. "\": want an array of increasing numbers", 3)
    end
    for i, b in ipairs(v) do
        if type(b) ~= "number" or (i > 1 and b <= v[i - 1]) then
            error("bad option \"" .. what .. "\": want an array of increasing numbers", 3)
        end
    end
    return v
end

-- Setup checks raise at the caller of new(): level 3 from a check new() calls.
local function check_string(v, what, level)
    if type(v) ~= "string" or v == "" then
        error("bad option \"" .. what .. "\": want a non-empty string, got " .. type(v), level or 3)
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
        error("bad option \"" .. what .. "\": want an array of strings", 3)
    end
    local set = {}
    for _, v in ipairs(list) do
        set[check_string(v, what, 4)] = v
    end
    return set
end

local OPTIONS = { namespace = true, route = true, models = true, prices = true,
                  upstream = true, buckets = true, ttft_buckets = true,
                  max_namespaces = true }

--- gateway.new(prometheus, options) -> gw      (init_by_lua)
function _M.new(prometheus, opts)
    if type(prometheus) ~= "table" or type(prometheus.counter) ~= "function" then
        error("bad argument #1: want the registry returned by resty.shmetrics.init", 2)
    end
    if type(opts) ~= "table" then
        error("bad argument #2: want an options table", 2)
    end
    for k in pairs(opts) do
        if not OPTIONS[k] then
            error("bad option \"" .. tostring(k) .. "\": unknown", 2)
        end
    end
    local self = setmetatable({}, Gateway)

    -- namespace: {header=, var=, default=, known=} or function() -> string|nil
    local ns = opts.namespace
    if type(ns) == "function" then
        self.ns_fn = ns
        self.ns_default = "default"
    elseif type(ns) == "table" or ns == nil then
        ns = ns or {}
        for k in pairs(ns) do
            if k ~= "header" and k ~= "var" and k ~= "default" and k ~= "known" then
                error("bad option \"namespace." .. tostring(k) .. "\": want header, var, default or known", 2)
            end
        end
        if ns.header ~= nil and ns.var ~= nil then
            error("bad option \"namespace\": give header or var, not both", 2)
        end
        if ns.header ~= nil then
            self.ns_var = header_var(check_string(ns.header, "namespace.header"))
        elseif ns.var ~= nil then
            self.ns_var = check_string(ns.var, "namespace.var")
        end
        self.ns_default = ns.default == nil and "default" or check_string(ns.default, "namespace.default")
        self.ns_known = set_of(ns.known, "namespace.known")
    else
        error("bad option \"namespace\": want a table or a function", 2)
    end
    local max_ns = opts.max_namespaces or 100
    if type(max_ns) ~= "number" or max_ns < 1 or max_ns ~= floor(max_ns) then
        error("bad option \"max_namespaces\": want a positive integer", 2)
    end
    self.max_namespaces = max_ns
    self.ns_seen = {}
    self.ns_count = 0

    -- route: {[uri] = template} or function(uri) -> template|nil
    local route = opts.route
    if type(route) == "function" then
        self.route_fn = route
    elseif type(route) == "table" then
        for k, v in pairs(route) do
            check_string(k, "route (a key)")
            check_string(v, "route[\"" .. k .. "\"]")
        end
        self.routes = route
    else
        error("bad option \"route\": want a table {[uri] = template} or a function(uri)", 2)
    end

    -- models: {"gpt-4o", ..., ["alias"] = "gpt-4o"}: request model -> label
    local models = opts.models
    if type(models) ~= "table" then
        error("bad option \"models\": want an array of model names", 2)
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
            error("bad option \"models\": alias \"" .. alias .. "\" names \"" .. label
                  .. "\", which is not a model", 2)
        end
    end
    self.model_labels = labels

    -- prices: {[model] = {input = USD per 1M tokens, output = USD per 1M tokens}}
    local prices = {}
    if opts.prices ~= nil then
        if type(opts.prices) ~= "table" then
            error("bad option \"prices\": want a table {[model] = {input = n, output = n}}", 2)
        end
        for model, p in pairs(opts.prices) do
            if type(model) ~= "string" or (labels[model] ~= model and model ~= OTHER) then
                error("bad option \"prices\": \"" .. tostring(model) .. "\" is not in models", 2)
            end
            if type(p) ~= "table" or type(p.input) ~= "number" or type(p.output) ~= "number"
                    or not (p.input >= 0 and p.output >= 0 and p.input < math.huge and p.output < math.huge) then
                error("bad option \"prices[\"" .. model .. "\"]\": want {input = n, output = n}, "
                      .. "USD per million tokens", 2)
            end
            prices[model] = { p.input / 1e6, p.output / 1e6 }
        end
    end
    self.prices = prices

    -- upstream: "openai" | {var = "name"} | function() -> string
    local up = opts.upstream
    if up == nil then
        self.upstream = "default"
    elseif type(up) == "string" then
        self.upstream = check_string(up, "upstream")
    elseif type(up) == "function" then
        self.upstream_fn = up
    elseif type(up) == "table" and type(up.var) == "string" then
        self.upstream_var = up.var
    else
        error("bad option \"upstream\": want a string, {var = name} or a function", 2)
    end

    local buckets = check_buckets(opts.buckets, "buckets") or DEFAULT_BUCKETS
    local ttft_buckets = check_buckets(opts.ttft_buckets, "ttft_buckets") or DEFAULT_TTFT_BUCKETS

    local p = prometheus
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

-- What was wrong with a complete 2xx model response, or nil: a body that is
-- not what it claims (even if usage was read from it), else no token counts.
local function usage_problem(st)
    local mode = st.mode
    if mode == MODE_UNSUPPORTED then
        return "response_unsupported"
    elseif mode == MODE_JSON then
        if st.malformed or st.last_byte ~= 125 then
            return "response_malformed"
        end
    elseif mode == MODE_SSE then
        if st.malformed then
            return "response_malformed"
        end
    else
        return nil
    end
    if st.tokens_in ~= nil then
        return nil
    elseif st.usage_bad or st.pending then
        return "usage_malformed"
    elseif mode == MODE_SSE and not st.req_include_usage then
        return "usage_not_requested"
    end
    return "usage_missing"
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

-- For the unit tests (tests/lua/test_gateway*.lua).
_M._internal = {
    scan_request = scan_request, parse_usage = parse_usage, json_feed = json_feed,
    sse_feed = sse_feed, classify = classify, usage_problem = usage_problem,
    last_entry = last_entry, header_var = header_var,
    USAGE_OK = USAGE_OK, USAGE_NULL = USAGE_NULL, NOT_KEY = NOT_KEY, MORE = MORE, BAD = BAD,
    MODE_JSON = MODE_JSON, MODE_SSE = MODE_SSE, MODE_UNSUPPORTED = MODE_UNSUPPORTED,
    USAGE_MAX = USAGE_MAX, REASONS = REASONS,
}

return _M
