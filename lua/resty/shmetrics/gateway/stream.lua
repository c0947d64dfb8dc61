-- resty.shmetrics.gateway.stream: the response feeders. A model response is
-- read in place, chunk by chunk, as nginx's body filter passes it (chunks are
-- only read, never changed): json_feed for a JSON body, sse_feed for a
-- text/event-stream one, line by line with the SSE framing. `st` is the
-- request's state; the feeders set its usage counts, TTFT stamp and problem
-- flags. Requires only the gateway's JSON scanner (docs/architecture.md).

local json = require "resty.shmetrics.gateway.json"

local byte = string.byte
local sub = string.sub
local find = string.find
local concat = table.concat
local is_ws = json.is_ws
local skip_ws = json.skip_ws
local has_at = json.has_at
local parse_usage = json.parse_usage
local MORE = json.MORE
local BAD = json.BAD
local USAGE_OK = json.USAGE_OK

local _M = {}

-- Longest usage object read (OpenAI's, with its *_details, is about 300 bytes).
local USAGE_MAX = 4096
-- Longest SSE line kept while it arrives in pieces; longer lines are skipped.
local SSE_LINE_MAX = 1048576

-- Response modes (decided at the first body chunk): which feeder reads it.
local MODE_NONE = 0         -- not read
local MODE_JSON = 1
local MODE_SSE = 2
local MODE_UNSUPPORTED = 3  -- a 2xx model response we cannot read (type, encoding)

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

_M.json_feed = json_feed
_M.sse_feed = sse_feed
_M.USAGE_MAX = USAGE_MAX
_M.MODE_NONE = MODE_NONE
_M.MODE_JSON = MODE_JSON
_M.MODE_SSE = MODE_SSE
_M.MODE_UNSUPPORTED = MODE_UNSUPPORTED

return _M
