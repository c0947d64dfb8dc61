-- Shared helpers for the Lua tests.
local _M = {}

local counter = 0
_M.paths = {}

-- Removes every region file the tests made.
function _M.cleanup()
    for _, path in ipairs(_M.paths) do os.remove(path) end
end

-- A fresh registry on its own region file (removed first).
function _M.registry(opts)
    counter = counter + 1
    local name = string.format("lt%d_%d", counter, math.random(1, 1e9))
    opts = opts or {}
    opts.path = opts.path or ("/dev/shm/shmetrics-" .. name)
    os.remove(opts.path)
    _M.paths[#_M.paths + 1] = opts.path
    local sm = require "resty.shmetrics"
    return sm.init(name, opts), opts.path
end

function _M.eq(got, want, what)
    if got ~= want then
        error(string.format("%s: got %s, want %s", what or "value", tostring(got), tostring(want)), 2)
    end
end

-- The value of the sample line `series` (exact text before the space), or nil.
function _M.sample(body, series)
    for line in body:gmatch("[^\n]+") do
        local k, v = line:match("^(.-) ([^ ]+)$")
        if k == series then
            return v
        end
    end
    return nil
end

function _M.has_line(body, line)
    for l in body:gmatch("[^\n]+") do
        if l == line then return true end
    end
    return false
end

-- Calls f and returns the error message it raised (failing if it did not).
function _M.raises(f, ...)
    local ok, err = pcall(f, ...)
    if ok then
        error("expected an error", 2)
    end
    return tostring(err)
end

function _M.contains(s, part, what)
    if not s:find(part, 1, true) then
        error(string.format("%s: %q does not contain %q", what or "text", s, part), 2)
    end
end

return _M
