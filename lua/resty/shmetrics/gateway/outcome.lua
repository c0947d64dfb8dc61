-- resty.shmetrics.gateway.outcome: what became of a request, for the log
-- phase: its error_type from the status and nginx's upstream variables
-- (classify), and what was wrong with a complete 2xx model response
-- (usage_problem). Requires only the response feeders' modes
-- (docs/architecture.md).

local stream = require "resty.shmetrics.gateway.stream"

local byte = string.byte
local sub = string.sub
local MODE_JSON = stream.MODE_JSON
local MODE_SSE = stream.MODE_SSE
local MODE_UNSUPPORTED = stream.MODE_UNSUPPORTED

local _M = {}

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

_M.last_entry = last_entry
_M.classify = classify
_M.usage_problem = usage_problem

return _M
