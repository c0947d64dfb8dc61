-- Runs the Lua test files in real LuaJIT:  luajit tests/lua/run.lua [file...]
-- Each tests/lua/test_*.lua returns a list of {name, function}. Prints one line
-- per test and a closing "N passed, N failed"; exits non-zero on any failure.

local root = arg[0]:match("^(.*)/tests/lua/run%.lua$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/tests/lua/?.lua;" .. package.path
local libdir = os.getenv("SHMETRICS_LIB_DIR")
if not libdir then
    local f = io.open(root .. "/target/release/libshmetrics.so", "rb")
    libdir = f and (root .. "/target/release") or (root .. "/target/debug")
    if f then f:close() end
end
package.cpath = libdir .. "/?.so;" .. package.cpath

local files = {}
if #arg > 0 then
    files = arg
else
    local p = io.popen("ls " .. root .. "/tests/lua/test_*.lua")
    for line in p:lines() do files[#files + 1] = line end
    p:close()
end

local passed, failed = 0, 0
for _, file in ipairs(files) do
    local cases = dofile(file)
    for _, case in ipairs(cases) do
        local name, fn = case[1], case[2]
        local ok, err = xpcall(fn, debug.traceback)
        if ok then
            passed = passed + 1
            print("ok     " .. file:match("[^/]+$") .. ": " .. name)
        else
            failed = failed + 1
            print("FAILED " .. file:match("[^/]+$") .. ": " .. name .. "\n" .. tostring(err))
        end
    end
end
require("helpers").cleanup()
print(string.format("lua: %d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
