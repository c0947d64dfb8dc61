-- resty.shmetrics.gateway.request: the lenient scanner of a request body: the
-- top-level "model" and stream_options.include_usage of a JSON object, every
-- other value skipped (the request's own server validates it). Requires only
-- the gateway's JSON helpers (docs/architecture.md).

local json = require "resty.shmetrics.gateway.json"

local byte = string.byte
local sub = string.sub
local skip_ws = json.skip_ws
local string_close = json.string_close
local skip_value = json.skip_value
local key_is = json.key_is

local _M = {}

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

_M.scan_request = scan_request

return _M
