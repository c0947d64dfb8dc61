-- resty.shmetrics.gateway.json: JSON scanning for the gateway. Plain `find` and
-- byte loops only (both compile in LuaJIT); no string is built except the few
-- values kept. Two readers over shared primitives: lenient helpers (whitespace,
-- string ends, skipping a value) for the request scanner, and a strict parser
-- (one member loop) for the usage objects of responses. Requires nothing of
-- resty.shmetrics (docs/architecture.md).

local tonumber = tonumber
local byte = string.byte
local sub = string.sub
local find = string.find
local floor = math.floor

local _M = {}

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

-- The digits at q of a fraction or an exponent (at least one): the index
-- after them, MORE or BAD.
local function strict_digits(s, q, n)
    if q > n then
        return MORE
    end
    if not is_digit(byte(s, q)) then
        return BAD
    end
    repeat q = q + 1 until not is_digit(byte(s, q)) or q > n
    return q
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
        q = strict_digits(s, q + 1, n)
        if q < 0 then
            return q
        end
    end
    if q <= n and (byte(s, q) == 101 or byte(s, q) == 69) then
        q = q + 1
        if q <= n and (byte(s, q) == 43 or byte(s, q) == 45) then
            q = q + 1
        end
        q = strict_digits(s, q, n)
        if q < 0 then
            return q
        end
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

-- The one member (and element) loop of the strict parser: the object or array
-- at p, closed by `close` (125 "}" or 93 "]"). For an object, `member` (when
-- given) reads each member's value: member(acc, s, k, ke, p, n) with the key's
-- quote at k, the index after its closing quote ke, and the value at p,
-- returning the index after the value (or MORE, BAD); without it each value is
-- only checked. Returns the index after the container, MORE or BAD.
local function strict_container(s, p, n, depth, close, member, acc)
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
        local k, ke = p, nil
        if close == 125 then
            if byte(s, p) ~= 34 then
                return BAD
            end
            ke = strict_string(s, p, n)
            if ke < 0 then
                return ke
            end
            p = skip_ws(s, ke, n)
            if p > n then
                return MORE
            end
            if byte(s, p) ~= 58 then
                return BAD
            end
            p = skip_ws(s, p + 1, n)
        end
        if member ~= nil then
            p = member(acc, s, k, ke, p, n)
        else
            p = strict_value(s, p, n, depth + 1)
        end
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

-- The counts of the usage object being read (parse_usage is never re-entered).
local usage = { tin = nil, tout = nil }

-- Reads one member of a usage object (see strict_container): a token count
-- (the first of each kind wins), or any other value, checked.
local function usage_member(acc, s, k, ke, p, n)
    local key = ke - k <= 19 and sub(s, k + 1, ke - 2) or nil
    local isin, isout = INPUT_KEYS[key], OUTPUT_KEYS[key]
    if not (isin or isout) then
        return strict_value(s, p, n, 1)
    end
    local e = strict_number(s, p, n)
    if e < 0 then
        return e
    end
    local v = tonumber(sub(s, p, e - 1))
    if not v or v < 0 or v ~= floor(v) or v >= 2^53 then
        return BAD
    end
    if isin then
        if acc.tin == nil then acc.tin = v end
    elseif acc.tout == nil then
        acc.tout = v
    end
    return e
end

-- Reads the usage member whose key starts at k (s[k..k+6] == '"usage"'), within
-- s[..n]. Returns USAGE_OK, input, output, index after the object; USAGE_NULL
-- or NOT_KEY; MORE (input ended first); or BAD (also: an object without counts).
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
    usage.tin, usage.tout = nil, nil
    local e = strict_container(s, p, n, 0, 125, usage_member, usage)
    if e < 0 then
        return e
    end
    local tin, tout = usage.tin, usage.tout
    if tin == nil and tout == nil then
        return BAD
    end
    return USAGE_OK, tin or 0, tout or 0, e
end

_M.is_ws = is_ws
_M.skip_ws = skip_ws
_M.string_close = string_close
_M.skip_value = skip_value
_M.has_at = has_at
_M.key_is = key_is
_M.parse_usage = parse_usage
_M.MORE = MORE
_M.BAD = BAD
_M.USAGE_OK = USAGE_OK
_M.USAGE_NULL = USAGE_NULL
_M.NOT_KEY = NOT_KEY

return _M
