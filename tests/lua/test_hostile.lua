-- Hostile and wrong input to every public function, one check per row of the
-- table in docs/hostile-input.md (same order, same wording of the input).
--
-- Every row runs against a store holding reference values; after the call the
-- test asserts the outcome (a raise with the documented message, or nil and the
-- documented message), the error counters (exactly +1 for the documented reason,
-- +0 for every other), and that the store is intact: both formats still render,
-- every line of the text exposition parses, and the reference values are
-- unchanged. Phase-dependent rows (init_by_lua, log_by_lua, timers, ...) need
-- nginx: tests/nginx_hardening.rs.
local ffi = require "ffi"
local h = require "helpers"
local eq, sample, raises = h.eq, h.sample, h.raises
local sm = require "resty.shmetrics"

-- helpers.contains, but a failure shows at most 300 bytes of a (64 KiB) text.
local function contains(s, part, what)
    if not s:find(part, 1, true) then
        local shown = #s > 300 and (s:sub(1, 150) .. " ...[" .. #s .. " bytes]... " .. s:sub(-150)) or s
        error(string.format("%s: %q does not contain %q", what or "text", shown, part), 2)
    end
end

pcall(ffi.cdef, "int usleep(unsigned int usec);")

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

local REASONS = { "label_count", "label_type", "label_too_long", "value_type", "value_nan",
                  "value_negative", "value_infinite", "store_full", "no_slot",
                  "not_in_worker", "internal" }

local KIB64 = string.rep("x", 65536)
local NAN, INF = 0 / 0, math.huge

------------------------------------------------------------------------------
-- Checking an exposition

-- A label block {n="v",...}: names valid, values with only \\ \" \n escapes.
local function check_labels(block, line)
    local s = block:sub(2, -2)
    local i = 1
    while i <= #s do
        local name, j = s:match("^([%a_][%w_]*)=\"()", i)
        assert(name, "bad label name in: " .. line)
        i = j
        while true do
            local c = s:sub(i, i)
            assert(c ~= "", "unterminated label value in: " .. line)
            assert(c ~= "\n", "raw newline in a label value: " .. line)
            if c == "\\" then
                local e = s:sub(i + 1, i + 1)
                assert(e == "\\" or e == "\"" or e == "n", "bad escape \\" .. e .. " in: " .. line)
                i = i + 2
            elseif c == "\"" then
                i = i + 1
                break
            else
                i = i + 1
            end
        end
        local sep = s:sub(i, i)
        if sep == "," then
            i = i + 1
        else
            assert(sep == "", "garbage after a label value in: " .. line)
        end
    end
end

-- Every line of a 0.0.4 text body is a HELP, a TYPE or a sample with a number.
-- Returns the number of samples.
local function check_exposition(body, what)
    local n = 0
    assert(body == "" or body:sub(-1) == "\n", what .. ": body does not end with a newline")
    for line in body:gmatch("([^\n]*)\n") do
        if line:sub(1, 7) == "# HELP " then
            assert(line:match("^# HELP [%a_:][%w_:]* "), what .. ": bad HELP: " .. line)
        elseif line:sub(1, 7) == "# TYPE " then
            assert(line:match("^# TYPE [%a_:][%w_:]* %a+$"), what .. ": bad TYPE: " .. line)
        else
            local name, rest = line:match("^([%a_:][%w_:]*)(.*)$")
            assert(name, what .. ": bad sample line: " .. line:sub(1, 200))
            local block, value = rest:match("^(%b{}) (%S+)$")
            if block then
                -- %b{} stops at the first balanced }, which may sit inside a value:
                -- re-split at the last space instead.
                block, value = rest:match("^({.*}) (%S+)$")
                check_labels(block, line:sub(1, 200))
            else
                value = rest:match("^ (%S+)$")
            end
            assert(value, what .. ": no value in: " .. line:sub(1, 200))
            assert(tonumber(value) or value == "+Inf" or value == "-Inf" or value == "NaN",
                   what .. ": bad value in: " .. line:sub(1, 200))
            n = n + 1
        end
    end
    return n
end

local function errors(body)
    local t = {}
    for _, r in ipairs(REASONS) do
        t[r] = tonumber(sample(body, 'shmetrics_errors_total{reason="' .. r .. '"}'))
        assert(t[r], "no shmetrics_errors_total{reason=\"" .. r .. "\"} in the exposition")
    end
    return t
end

------------------------------------------------------------------------------
-- The store every row runs against

local L = { "GET", "200" }     -- the reference label values of req_total

local REF = {
    ['req_total{method="GET",code="200"}'] = "5",
    ["plain_total"] = "3",
    ['temp{room="ref"}'] = "21.5",
    ['lat_seconds_bucket{route="/ref",le="0.1"}'] = "0",
    ['lat_seconds_bucket{route="/ref",le="1"}'] = "1",
    ['lat_seconds_bucket{route="/ref",le="+Inf"}'] = "1",
    ['lat_seconds_count{route="/ref"}'] = "1",
    ['lat_seconds_sum{route="/ref"}'] = "0.5",
}

local function fixture(opts)
    local p = h.registry(opts)
    local m = {
        c = p:counter("req_total", "Requests", { "method", "code" }),
        c0 = p:counter("plain_total", "No labels"),
        g = p:gauge("temp", "Temperature", { "room" }),
        hg = p:histogram("lat_seconds", "Latency", { "route" }, { 0.1, 1 }),
        spare = p:counter("spare_total", "For del and reset rows", { "k" }),
        spare0 = p:counter("spare0_total", "No labels, for del"),
    }
    assert(m.c:inc(5, L))
    assert(m.c0:inc(3))
    assert(m.g:set(21.5, { "ref" }))
    assert(m.hg:observe(0.5, { "/ref" }))
    return p, m
end

-- The store is intact: both formats render, the text parses, references hold.
local function intact(p, what)
    local body = p:metric_data("text")
    assert(type(body) == "string", what .. ": metric_data failed")
    check_exposition(body, what)
    for k, v in pairs(REF) do
        eq(sample(body, k), v, what .. ": " .. k)
    end
    local om = p:metric_data("openmetrics")
    assert(type(om) == "string" and om:sub(-6) == "# EOF\n", what .. ": OpenMetrics does not render")
    return body
end

-- Runs rows { input, call, expect }. expect is one of
--   { raises = "part of the message" }
--   { err = "part of the message", reason = "counted reason" or nil (not counted) }
--   { ok = true | value, check = function(body) ... end }
local function run_rows(p, fname, rows)
    for _, row in ipairs(rows) do
        local what = fname .. " " .. row[1]
        local ex = row[3]
        local before = errors(p:metric_data("text"))
        local r = { pcall(row[2]) }
        if ex.raises then
            assert(not r[1], what .. ": did not raise (returned " .. tostring(r[2]) .. ", " .. tostring(r[3]) .. ")")
            contains(tostring(r[2]), ex.raises, what .. ": message")
        else
            assert(r[1], what .. ": raised " .. tostring(r[2]))
            if ex.err then
                eq(r[2], nil, what .. ": first result")
                assert(type(r[3]) == "string", what .. ": no message")
                contains(r[3], ex.err, what .. ": message")
            else
                local want = ex.ok
                if want == nil then want = true end
                eq(r[2], want, what .. ": result (" .. tostring(r[3]) .. ")")
            end
        end
        local body = intact(p, what)
        local after = errors(body)
        for _, reason in ipairs(REASONS) do
            local want = before[reason] + ((ex.reason == reason) and 1 or 0)
            eq(after[reason], want, what .. ": shmetrics_errors_total{reason=\"" .. reason .. "\"}")
        end
        if ex.check then
            ex.check(body, what)
        end
    end
end

local function has(series, value)
    return function(body, what)
        eq(sample(body, series), value, what .. ": " .. series)
    end
end

local function absent(series)
    return function(body, what)
        eq(sample(body, series), nil, what .. ": " .. series .. " must be absent")
    end
end

------------------------------------------------------------------------------
-- Before init, and calls that are Lua errors in the caller's code

test("before init: the module has only init; misuse of objects is a Lua error", function()
    local p, m = fixture()
    run_rows(p, "module", {
        { "shmetrics.counter(...) (no init)", function() return sm.counter("x_total") end,
          { raises = "attempt to call field 'counter'" } },
        { "a method on a nil registry", function() local reg; return reg:counter("x_total") end,
          { raises = "attempt to index" } },
        { "counter.inc(1, lv) (dot, not colon)", function() return m.c.inc(1, L) end,
          { raises = "attempt to index local 'self'" } },
        { "collect() outside nginx", function() return p:collect() end,
          { raises = "ngx" } },
    })
end)

------------------------------------------------------------------------------
-- init

local uniq = 0
local function name()
    uniq = uniq + 1
    return string.format("hostile%d_%d", uniq, math.random(1, 1e9))
end

local function shm(tag)
    local path = string.format("/dev/shm/shmetrics-hostile-%s-%d", tag, math.random(1, 1e9))
    h.paths[#h.paths + 1] = path
    os.remove(path)
    return path
end

test("init: wrong names and options raise and name the argument", function()
    local p = fixture()
    local dir_missing = "/nonexistent-shmetrics-dir/region"
    local rows = {
        -- (nil is nginx-lua-prometheus's default name, "prometheus_metrics": test_dropin.lua)
        { "name false", function() return sm.init(false) end, { raises = 'bad argument "name"' } },
        { "name 42", function() return sm.init(42) end, { raises = 'bad argument "name"' } },
        { "name \"\"", function() return sm.init("") end, { raises = 'bad argument "name"' } },
        { "name \"a b/c\"", function() return sm.init("a b/c") end, { raises = 'bad argument "name"' } },
        -- (a string is nginx-lua-prometheus's prefix form: test_dropin.lua)
        { "options 42", function() return sm.init(name(), 42) end, { raises = 'bad argument "options"' } },
        { "unknown option", function() return sm.init(name(), { nonsense = 1 }) end,
          { raises = 'bad option "nonsense": unknown' } },
        { "max_series = \"10\"", function() return sm.init(name(), { max_series = "10" }) end,
          { raises = 'bad option "max_series": want a number, got string' } },
        { "max_series = NaN", function() return sm.init(name(), { max_series = NAN }) end,
          { raises = 'bad option "max_series": want a non-negative integer' } },
        { "max_series = -1", function() return sm.init(name(), { max_series = -1 }) end,
          { raises = 'bad option "max_series": want a non-negative integer' } },
        { "max_series = 1.5", function() return sm.init(name(), { max_series = 1.5 }) end,
          { raises = 'bad option "max_series": want a non-negative integer' } },
        { "max_series = +Inf", function() return sm.init(name(), { max_series = INF }) end,
          { raises = 'bad option "max_series": want a non-negative integer' } },
        { "max_series = 2^32", function() return sm.init(name(), { max_series = 2 ^ 32 }) end,
          { raises = 'bad option "max_series": want a non-negative integer, got 4294967296' } },
        { "max_slots = 2^32 + 3", function() return sm.init(name(), { max_slots = 2 ^ 32 + 3 }) end,
          { raises = 'bad option "max_slots"' } },
        { "max_series = 2^28 + 1", function() return sm.init(name(), { path = shm("ms"), max_series = 2 ^ 28 + 1 }) end,
          { raises = 'bad option "max_series": 268435457 is not in 1..=268435456' } },
        { "max_slots = 1", function() return sm.init(name(), { path = shm("sl"), max_slots = 1 }) end,
          { raises = 'bad option "max_slots": 1 is not in 2..=4095' } },
        { "max_slots = 4096", function() return sm.init(name(), { path = shm("sl"), max_slots = 4096 }) end,
          { raises = 'bad option "max_slots": 4096 is not in 2..=4095' } },
        { "max_label_bytes = 2^20 + 1", function() return sm.init(name(), { path = shm("lb"), max_label_bytes = 2 ^ 20 + 1 }) end,
          { raises = 'bad option "max_label_bytes"' } },
        { "max_cells = 32", function() return sm.init(name(), { path = shm("mc"), max_cells = 32 }) end,
          { raises = 'bad option "max_cells": 32 is not in 33..=' } },
        { "arena_bytes = 100", function() return sm.init(name(), { path = shm("ab"), arena_bytes = 100 }) end,
          { raises = 'bad option "arena_bytes": 100 is not in 4096..=4294967295' } },
        { "arena_bytes = 2^33", function() return sm.init(name(), { path = shm("ab"), arena_bytes = 2 ^ 33 }) end,
          { raises = 'bad option "arena_bytes"' } },
        { "reset = \"yes\"", function() return sm.init(name(), { reset = "yes" }) end,
          { raises = 'bad option "reset": want a boolean, got string' } },
        { "path = 42", function() return sm.init(name(), { path = 42 }) end,
          { raises = 'bad option "path": want a string, got number' } },
        { "path = \"\"", function() return sm.init(name(), { path = "" }) end,
          { raises = 'bad option "path": empty' } },
        { "path with a NUL byte", function() return sm.init(name(), { path = "/dev/shm/a\0b" }) end,
          { raises = 'bad option "path": contains a NUL byte' } },
        { "path is a directory", function() return sm.init(name(), { path = "/dev/shm" }) end,
          { raises = "Is a directory" } },
        { "path in a missing directory", function() return sm.init(name(), { path = dir_missing }) end,
          { raises = "No such file or directory" } },
    }
    run_rows(p, "init", rows)
end)

test("init: 0 means the default; the same name returns the same registry whatever the options", function()
    local path = shm("zero")
    local p = sm.init(name(), { path = path, max_series = 0, max_label_bytes = 0 })
    eq(sample(p:metric_data("text"), "shmetrics_series_capacity"), "20000")
    local n = name()
    local a = sm.init(n, { path = shm("same") })
    local b = sm.init(n, { path = shm("other"), max_series = 5 })
    assert(a == b, "init with a known name returns the first registry")
    eq(sample(b:metric_data("text"), "shmetrics_series_capacity"), "20000")
end)

test("init: lib_path and package.cpath errors raise in a fresh VM", function()
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local function run(prog)
        local file = os.tmpname()
        local f = assert(io.open(file, "w"))
        f:write("package.path = '" .. root .. "/lua/?.lua;' .. package.path\n", prog)
        f:close()
        local pipe = io.popen("luajit " .. file .. " 2>&1")
        local out = pipe:read("*a")
        pipe:close()
        os.remove(file)
        return out
    end
    contains(run([[
        package.cpath = "/nonexistent/?.so"
        print(select(2, pcall(require("resty.shmetrics").init, "x")))
    ]]), "libshmetrics.so not found in package.cpath")
    contains(run([[
        print(select(2, pcall(require("resty.shmetrics").init, "x", { lib_path = "/nonexistent/libshmetrics.so" })))
    ]]), "cannot load /nonexistent/libshmetrics.so")
end)

------------------------------------------------------------------------------
-- The region file: a trust boundary

local SMALL = { max_series = 64, max_families = 16, max_slots = 4 }

local function small(path, extra)
    local o = { path = path }
    for k, v in pairs(SMALL) do o[k] = v end
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
end

local function read_file(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(path, s, mode)
    os.remove(path)
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
    assert(os.execute("chmod " .. (mode or "600") .. " " .. path) == 0)
end

local function le(n, bytes)
    local t = {}
    for i = 1, bytes do
        t[i] = string.char(n % 256)
        n = math.floor(n / 256)
    end
    return table.concat(t)
end

local function patch(s, off, bytes)
    return s:sub(1, off) .. bytes .. s:sub(off + #bytes + 1)
end

-- A valid small region holding c_total{k="a"} 7, as a string of bytes.
local valid_bytes
local function valid_region()
    if not valid_bytes then
        local path = shm("valid")
        local p = sm.init(name(), small(path))
        assert(p:counter("c_total", "C", { "k" }):inc(7, { "a" }))
        valid_bytes = read_file(path)
        -- No master recorded (header bytes 224..231), as in a file whose nginx
        -- has exited: this process made it and lives on, and the child
        -- processes below would be refused its copies (another live master).
        valid_bytes = valid_bytes:sub(1, 224) .. string.rep("\0", 8) .. valid_bytes:sub(233)
    end
    return valid_bytes
end

-- init on a file holding `bytes`; returns the registry's exposition.
local function open_with(bytes, extra)
    local path = shm("file")
    write_file(path, bytes)
    local p = sm.init(name(), small(path, extra))
    p:counter("c_total", "C", { "k" })
    local body = p:metric_data("text")
    check_exposition(body, "after open")
    return body, path
end

test("region file: a matching file is attached, one that does not match is replaced and says why", function()
    local v = valid_region()
    local total = #v
    eq(le(total, 8), v:sub(17, 24), "total_size in the header")
    local cases = {
        -- { what, bytes, extra options, replaced reason or nil (attached) }
        { "an exact copy", v, nil, nil },
        { "a newer minor version", patch(v, 10, le(7, 2)), nil, nil },
        { "wrong magic", patch(v, 0, "NOTMINE!"), nil, "bad_file" },
        { "layout major 2", patch(v, 8, le(2, 2)), nil, "layout" },
        { "layout major 0", patch(v, 8, le(0, 2)), nil, "layout" },
        { "wrong header_size", patch(v, 12, le(128, 4)), nil, "bad_file" },
        { "other sizes (max_series)", v, { max_series = 128 }, "sizes" },
        { "other sizes (max_label_bytes)", v, { max_label_bytes = 4096 }, "sizes" },
        { "wrong section offset", patch(v, 72, le(8192, 8)), nil, "bad_file" },
        { "truncated to half", v:sub(1, math.floor(total / 2)), nil, "bad_file" },
        { "truncated to 100 bytes", v:sub(1, 100), nil, "bad_file" },
        { "empty", "", nil, "bad_file" },
        { "4 KiB longer", v .. string.rep("\0", 4096), nil, "bad_file" },
        { "64 KiB of garbage", string.rep("garbage!", 8192), nil, "bad_file" },
    }
    for _, case in ipairs(cases) do
        local body, path = open_with(case[2], case[3])
        if case[4] then
            eq(sample(body, 'c_total{k="a"}'), nil, case[1] .. ": counts of a replaced file")
            eq(sample(body, 'shmetrics_region_replaced{reason="' .. case[4] .. '"}'), "1", case[1])
            eq(read_file(path):sub(1, 8), "SHMETRC\1", case[1] .. ": a region now")
        else
            eq(sample(body, 'c_total{k="a"}'), "7", case[1] .. ": counts carry on")
            eq(body:find("shmetrics_region_replaced", 1, true), nil, case[1])
        end
    end
end)

test("region file: counters beyond capacity refuse init; reset replaces the file", function()
    local bad = patch(valid_region(), 196, le(65, 4))   -- series_used > max_series (64)
    local path = shm("corrupt")
    write_file(path, bad)
    contains(raises(sm.init, name(), small(path)), "has allocation counters beyond its capacity (corrupt); remove it or use the reset option")
    eq(read_file(path), bad, "the refused file is left as it was")
    local p = sm.init(name(), small(path, { reset = true }))
    eq(sample(p:metric_data("text"), 'shmetrics_region_replaced{reason="reset"}'), "1")
end)

test("region file: symlink, FIFO, loose mode and another owner are refused", function()
    local p = fixture()
    local target = shm("target")
    write_file(target, valid_region())
    local link = shm("link")
    assert(os.execute("ln -s " .. target .. " " .. link) == 0)
    local dangling = shm("dangling")
    assert(os.execute("ln -s /nonexistent-shmetrics-target " .. dangling) == 0)
    local fifo = shm("fifo")
    assert(os.execute("mkfifo -m 600 " .. fifo) == 0)
    local loose = shm("loose")
    write_file(loose, valid_region(), "644")
    local group = shm("group")
    write_file(group, valid_region(), "620")
    local rows = {
        { "a symlink to a valid region", function() return sm.init(name(), small(link)) end,
          { raises = "is a symbolic link; refusing it" } },
        { "a dangling symlink", function() return sm.init(name(), small(dangling)) end,
          { raises = "is a symbolic link; refusing it" } },
        { "a FIFO", function() return sm.init(name(), small(fifo)) end,
          { raises = "is not a regular file; refusing it" } },
        { "mode 0644", function() return sm.init(name(), small(loose)) end,
          { raises = "has mode 644: group or others may access it; refusing it (want 0600)" } },
        { "mode 0620", function() return sm.init(name(), small(group)) end,
          { raises = "has mode 620" } },
    }
    local is_root = io.popen("id -u"):read("*l") == "0"
    if is_root then
        local other = shm("other")
        write_file(other, valid_region())
        assert(os.execute("chown 65534 " .. other) == 0)
        rows[#rows + 1] = { "owned by another user", function() return sm.init(name(), small(other)) end,
                            { raises = "is owned by uid 65534, not by uid 0; refusing it" } }
    end
    run_rows(p, "init", rows)
    eq(read_file(target), valid_region(), "a symlink's target is never written")
    eq(read_file(loose), valid_region(), "a refused file is left as it was")
end)

test("region file: reset replaces a symlink, never following it", function()
    local target = shm("rtarget")
    write_file(target, valid_region())
    local link = shm("rlink")
    assert(os.execute("ln -s " .. target .. " " .. link) == 0)
    local p = sm.init(name(), small(link, { reset = true }))
    eq(sample(p:metric_data("text"), 'shmetrics_region_replaced{reason="reset"}'), "1")
    eq(read_file(target), valid_region(), "the target is untouched")
    local mode = io.popen("stat -c %a:%F " .. link):read("*l")
    eq(mode, "600:regular file", "the link was replaced by a region file")
end)

test("region file: garbage after a valid header never crashes (child process)", function()
    -- Valid header and counters, every other byte of one section random: the
    -- process must not crash whatever it reads; it may refuse a definition.
    local v = valid_region()
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local off = {}
    for i, k in ipairs({ "slots", "families", "family_index", "series", "series_index", "arena", "cells" }) do
        local s = v:sub(73 + (i - 1) * 8, 80 + (i - 1) * 8)
        local n = 0
        for j = 8, 1, -1 do n = n * 256 + s:byte(j) end
        off[#off + 1] = { k, n }
    end
    off[#off + 1] = { "end", #v }
    math.randomseed(42)
    local prog = [[
        package.path = "%s/lua/?.lua;" .. package.path
        package.cpath = "%s/?.so;" .. package.cpath
        local p = require("resty.shmetrics").init("g", { path = "%s", max_series = 64, max_families = 16, max_slots = 4 })
        local ok, err = pcall(function()
            local c = p:counter("c_total", "C", { "k" })
            local g = p:gauge("g", "G", { "k" })
            local hg = p:histogram("h", "H", { "k" }, { 1, 2 })
            for i = 1, 40 do
                c:inc(i, { "v" .. i }); g:set(i, { "v" .. i }); g:inc(1, { "v" .. i })
                hg:observe(i / 10, { "v" .. i }); c:del({ "v" .. (i - 1) })
            end
        end)
        assert(p:metric_data("text")); assert(p:metric_data("openmetrics"))
        io.write("survived ", tostring(ok), " ", tostring(err))
    ]]
    for i = 1, #off - 1 do
        local from, to = off[i][2], math.min(off[i + 1][2], off[i][2] + 16384)
        local garbage = {}
        for j = 1, to - from do garbage[j] = string.char(math.random(0, 255)) end
        local path = shm("garbage")
        write_file(path, patch(v, from, table.concat(garbage)))
        local file = path .. ".lua"
        local f = assert(io.open(file, "w"))
        f:write(string.format(prog, root, libdir, path))
        f:close()
        local pipe = io.popen("luajit " .. file .. " 2>&1; echo \" exit=$?\"")
        local out = pipe:read("*a")
        pipe:close()
        os.remove(file)
        contains(out, "survived", "random " .. off[i][1])
        contains(out, " exit=0", "random " .. off[i][1])
    end
end)

test("region file: families follow the configuration across restarts", function()
    -- Two processes one after the other on one file, as two runs of nginx.
    local path = shm("families")
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local function run(body, reset)
        local file = path .. ".lua"
        local f = assert(io.open(file, "w"))
        f:write(string.format([[
            package.path = "%s/lua/?.lua;" .. package.path
            package.cpath = "%s/?.so;" .. package.cpath
            local p = require("resty.shmetrics").init("x", { path = "%s", reset = %s })
            local ok, err = pcall(function() %s end)
            io.write(tostring(ok), " ", tostring(err), "\n", p:metric_data("text"))
        ]], root, libdir, path, tostring(reset or false), body))
        f:close()
        local pipe = io.popen("luajit " .. file .. " 2>&1")
        local out = pipe:read("*a")
        pipe:close()
        os.remove(file)
        return out
    end
    local out = run([[ p:counter("c_total", "C", { "k" }):inc(3, { "a" }); p:gauge("gone", "G"):set(1) ]])
    contains(out, "true nil")
    -- The next run no longer defines "gone": it leaves the exposition.
    out = run([[ p:counter("c_total", "C", { "k" }):inc(1, { "a" }) ]])
    contains(out, 'c_total{k="a"} 4'); eq(out:find("gone", 1, true), nil)
    -- Defined again the same way, it is back with its value.
    out = run([[ p:gauge("gone", "G") ]])
    contains(out, "\ngone 1\n"); eq(out:find("c_total{", 1, true), nil)
    -- Other labels for the same name: the new definition takes effect, the old
    -- series leave.
    out = run([[ p:counter("c_total", "C", { "k", "j" }):inc(1, { "a", "b" }) ]])
    contains(out, "true nil"); contains(out, 'c_total{k="a",j="b"} 1')
    eq(out:find('c_total{k="a"}', 1, true), nil)
    -- Two different definitions in one configuration: the second raises.
    out = run([[ p:counter("d_total", "D", { "k" }); p:counter("d_total", "D", { "j" }) ]])
    contains(out, 'false metric "d_total" is already defined as counter {k}; this definition is counter {j}')
    -- reset = true starts from an empty registry.
    out = run([[ p:counter("c_total", "C", { "k", "j" }):inc(1, { "a", "b" }) ]], true)
    contains(out, "true nil"); contains(out, 'c_total{k="a",j="b"} 1')
    eq(out:find("gone", 1, true), nil)
end)

------------------------------------------------------------------------------
-- Definitions

test("counter, gauge, histogram: wrong definitions raise and name the argument", function()
    local p = fixture()
    local function def(kind, ...)
        local args = { ... }
        return function() return p[kind](p, unpack(args, 1, 5)) end
    end
    local eleven = { "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11" }
    local many = {}
    for i = 1, 129 do many[i] = i end
    run_rows(p, "definition", {
        { "name nil", def("counter", nil), { raises = 'bad argument "name": want a string, got nil' } },
        { "name 42", def("gauge", 42), { raises = 'bad argument "name": want a string, got number' } },
        { "name \"\"", def("counter", ""), { raises = 'bad argument "name": "" is not a valid metric name' } },
        { "name \"bad-name\"", def("counter", "bad-name"), { raises = "is not a valid metric name" } },
        { "name \"0abc\"", def("counter", "0abc"), { raises = "is not a valid metric name" } },
        { "name \"café\"", def("histogram", "caf\195\169"), { raises = "is not a valid metric name" } },
        { "name with a NUL byte", def("counter", "a\0b"), { raises = "is not a valid metric name" } },
        { "name of 257 bytes", def("counter", string.rep("a", 257)), { raises = "at most 256 bytes" } },
        { "name \"shmetrics_x\"", def("counter", "shmetrics_x"), { raises = "the prefix shmetrics_ is reserved" } },
        { "help 42", def("counter", "ok_total", 42), { raises = 'bad argument "help": want a string, got number' } },
        { "help of 64 KiB", def("counter", "ok_total", KIB64), { raises = 'bad argument "help": 65536 bytes; at most 4096' } },
        { "label_names \"method\"", def("counter", "ok_total", "h", "method"),
          { raises = 'bad argument "label_names": want a table of strings, got string' } },
        { "label_names {1}", def("counter", "ok_total", "h", { 1 }),
          { raises = 'bad argument "label_names": entry #1 is a number, not a string' } },
        { "label_names {a = \"b\"}", def("counter", "ok_total", "h", { a = "b" }),
          { raises = 'bad argument "label_names": want an array of strings' } },
        { "label_names {\"a\", nil, \"b\"}", def("counter", "ok_total", "h", { "a", nil, "b" }),
          { raises = 'bad argument "label_names": want an array of strings' } },
        { "label_names {\"a-b\"}", def("counter", "ok_total", "h", { "a-b" }), { raises = "is not a valid label name" } },
        { "label_names {\"\"}", def("counter", "ok_total", "h", { "" }), { raises = "is not a valid label name" } },
        { "label_names {\"__x\"}", def("counter", "ok_total", "h", { "__x" }), { raises = "not starting with __" } },
        { "label_names {\"a\", \"a\"}", def("counter", "ok_total", "h", { "a", "a" }), { raises = '"a" appears twice' } },
        { "11 label names", def("gauge", "ok", "h", eleven), { raises = "11 labels; at most 10" } },
        { "histogram label \"le\"", def("histogram", "ok_h", "h", { "le" }), { raises = '"le" is reserved' } },
        { "buckets \"1,2\"", def("histogram", "ok_h", "h", nil, "1,2"),
          { raises = 'bad argument "buckets": want an array of numbers, got string' } },
        { "buckets {}", def("histogram", "ok_h", "h", nil, {}), { raises = "at least one finite bucket" } },
        { "buckets {+Inf}", def("histogram", "ok_h", "h", nil, { INF }), { raises = "at least one finite bucket" } },
        { "buckets {\"a\"}", def("histogram", "ok_h", "h", nil, { "a" }), { raises = "entry #1 is a string, not a number" } },
        { "buckets {2, 1}", def("histogram", "ok_h", "h", nil, { 2, 1 }), { raises = "bucket #2 (1) is not greater" } },
        { "buckets {1, 1}", def("histogram", "ok_h", "h", nil, { 1, 1 }), { raises = "bucket #2 (1) is not greater" } },
        { "buckets {NaN}", def("histogram", "ok_h", "h", nil, { NAN }), { raises = "bounds must be finite" } },
        { "buckets {-Inf, 1}", def("histogram", "ok_h", "h", nil, { -INF, 1 }), { raises = "bounds must be finite" } },
        { "129 buckets", def("histogram", "ok_h", "h", nil, many), { raises = "129 buckets; at most 128" } },
        { "options 3600 (an exptime)", def("counter", "ok_total", "h", nil, 3600),
          { raises = "nginx-lua-prometheus's exptime is not supported" } },
        { "counter with buckets in the options slot", def("counter", "ok_total", "h", nil, { 1, 2 }),
          { raises = 'bad option "1": unknown' } },
        { "options {nonsense = 1}", def("counter", "ok_total", "h", nil, { nonsense = 1 }),
          { raises = 'bad option "nonsense": unknown (metrics take max_series)' } },
        { "max_series = 0", def("counter", "ok_total", "h", nil, { max_series = 0 }),
          { raises = 'bad option "max_series": want a positive integer, got 0' } },
        { "max_series = -1", def("counter", "ok_total", "h", nil, { max_series = -1 }), { raises = "want a positive integer" } },
        { "max_series = 1.5", def("counter", "ok_total", "h", nil, { max_series = 1.5 }), { raises = "want a positive integer" } },
        { "max_series = NaN", def("counter", "ok_total", "h", nil, { max_series = NAN }), { raises = "want a positive integer" } },
        { "max_series = 2^32", def("counter", "ok_total", "h", nil, { max_series = 2 ^ 32 }), { raises = "want a positive integer" } },
        { "max_series = \"5\"", def("histogram", "ok_h", "h", nil, nil, { max_series = "5" }), { raises = "want a positive integer" } },
        { "kind changed", def("gauge", "req_total", "Requests", { "method", "code" }),
          { raises = 'metric "req_total" is already defined as counter {method,code}; this definition is gauge {method,code}' } },
        { "labels changed", def("counter", "req_total", "Requests", { "method" }),
          { raises = "this definition is counter {method}" } },
        { "buckets changed", def("histogram", "lat_seconds", "Latency", { "route" }, { 0.1, 2 }),
          { raises = "buckets [0.1, 1.0]; this definition is histogram {route} buckets [0.1, 2.0]" } },
        { "name taken by a histogram's series", def("counter", "lat_seconds_count", "x"),
          { raises = 'collides with histogram "lat_seconds"' } },
        { "dot call p.counter(\"x\")", function() return p.counter("x_total") end,
          { raises = 'bad argument "name": want a string, got nil' } },
    })
end)

test("names of 64 KiB: the error says what is wrong", function()
    -- The message quotes at most 128 bytes of the name, so the reason fits in
    -- the Lua module's 1 KiB error buffer (docs/hostile-input.md, section 11).
    local p = fixture()
    run_rows(p, "names", {
        { "init name of 64 KiB", function() return sm.init(string.rep("a", 65536)) end,
          { raises = 'bad argument "name"' } },
        { "metric name of 64 KiB", function() return p:counter(string.rep("a", 65536)) end,
          { raises = "is not a valid metric name" } },
    })
end)

test("redefinition: same definition returns the same object; new help and max_series replace the old", function()
    local p, m = fixture()
    assert(p:counter("req_total", "Requests", { "method", "code" }) == m.c)
    assert(p:counter("req_total", "New help\nwith \\ a newline", { "method", "code" }) == m.c)
    local body = intact(p, "new help")
    assert(h.has_line(body, "# HELP req_total New help\\nwith \\\\ a newline"), body)
    -- max_series: the latest definition wins, also when it has none.
    local u = p:counter("u_total", "U", { "user" }, { max_series = 1 })
    assert(u:inc(1, { "a" })); assert(u:inc(1, { "b" }))
    eq(sample(p:metric_data("text"), 'u_total{user="__overflow__"}'), "1")
    assert(p:counter("u_total", "U", { "user" }) == u)
    assert(u:inc(1, { "c" }))
    eq(sample(p:metric_data("text"), 'u_total{user="c"}'), "1", "no limit after a redefinition without one")
end)

------------------------------------------------------------------------------
-- The hot path

local function value_rows(call)
    -- Wrong values, the same for every update function that takes one.
    return {
        -- ("1" is accepted as 1 since nginx-lua-prometheus users pass ngx.var strings)
        { "value \"one\"", function() return call("one") end, { err = "value must be a number, got string \"one\"", reason = "value_type" } },
        { "value true", function() return call(true) end, { err = "value must be a number, got boolean", reason = "value_type" } },
        { "value {}", function() return call({}) end, { err = "value must be a number, got table", reason = "value_type" } },
        { "value 1ULL (cdata)", function() return call(1ULL) end, { err = "value must be a number, got cdata", reason = "value_type" } },
        { "value NaN", function() return call(NAN) end, { err = "value is NaN", reason = "value_nan" } },
    }
end

-- Wrong label values for a metric with labels {"method", "code"} or {"room"}.
local function label_rows(call, n)
    local full = n == 2 and { "GET", "201" } or { "x" }
    local short = n == 2 and { "GET" } or {}
    local long = n == 2 and { "GET", "201", "x" } or { "x", "y" }
    local wrong = n == 2 and { "GET", true } or { true }
    local tbl = n == 2 and { "GET", {} } or { {} }
    local fn = n == 2 and { "GET", print } or { print }
    local too_long = n == 2 and { "GET", string.rep("v", 1025) } or { string.rep("v", 1025) }
    local huge = n == 2 and { "GET", KIB64 } or { KIB64 }
    local idx = n == 2 and "#2" or "#1"
    return {
        { "labels nil", function() return call(nil) end, { err = "needs a table of " .. n .. " label values, got nil", reason = "label_count" } },
        { "labels \"GET\"", function() return call("GET") end, { err = "got string", reason = "label_count" } },
        { "labels {}", function() return call({}) end, { err = "needs " .. n .. " label values, got 0", reason = "label_count" } },
        { "too few labels", function() return call(short) end, { err = "needs " .. n .. " label values, got " .. (n - 1), reason = "label_count" } },
        { "too many labels", function() return call(long) end, { err = "label values, got more", reason = "label_count" } },
        { "labels {nil, ...} (hole)", function() return call({ nil, "x" }) end, { err = "label values, got 0", reason = "label_count" } },
        { "labels by name {k = v}", function() return call({ method = "GET", code = "200", room = "x" }) end,
          { err = "label values, got 0", reason = "label_count" } },
        { "a boolean label value", function() return call(wrong) end, { err = "label value " .. idx .. " is a boolean; want a string or number", reason = "label_type" } },
        { "a table label value", function() return call(tbl) end, { err = "is a table", reason = "label_type" } },
        { "a function label value", function() return call(fn) end, { err = "is a function", reason = "label_type" } },
        { "a label value of 1025 bytes", function() return call(too_long) end,
          { err = "label value " .. idx .. " is 1025 bytes; the limit (max_label_bytes) is 1024", reason = "label_too_long" } },
        { "a label value of 64 KiB", function() return call(huge) end,
          { err = "is 65536 bytes; the limit (max_label_bytes) is 1024", reason = "label_too_long" } },
        { "valid labels (control row)", function() return call(full) end, { ok = true } },
    }
end

local function concat_rows(...)
    local all = {}
    for _, rows in ipairs({ ... }) do
        for _, r in ipairs(rows) do all[#all + 1] = r end
    end
    return all
end

test("counter:inc: wrong values and labels return nil, err and are counted", function()
    local p, m = fixture()
    local S = 'req_total{method="POST",code="500"}'
    local function inc(v) return function() return m.c:inc(v, { "POST", "500" }) end end
    run_rows(p, "counter:inc", concat_rows(
        value_rows(function(v) return m.c:inc(v, { "POST", "500" }) end),
        {
            { "value +Inf", inc(INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value -Inf", inc(-INF), { err = "counters cannot decrease (value -inf)", reason = "value_negative" } },
            { "value -1", inc(-1), { err = "counters cannot decrease (value -1)", reason = "value_negative" } },
            { "value -0.0", inc(-0.0), { ok = true, check = has(S, "0") } },
            { "value nil (adds 1)", inc(nil), { ok = true, check = has(S, "1") } },
            { "value 0.25", inc(0.25), { ok = true, check = has(S, "1.25") } },
            { "value 2^53", function() return m.c:inc(2 ^ 53, { "BIG", "1" }) end,
              { ok = true, check = has('req_total{method="BIG",code="1"}', "9.007199254740992e+15") } },
            { "value 1e308", function() return m.c:inc(1e308, { "HUGE", "1" }) end,
              { ok = true, check = has('req_total{method="HUGE",code="1"}', "1e+308") } },
            { "value 1e308 again (sum overflows)", function() return m.c:inc(1e308, { "HUGE", "1" }) end,
              { ok = true, check = has('req_total{method="HUGE",code="1"}', "+Inf") } },
        },
        label_rows(function(lv) return m.c:inc(1, lv) end, 2),
        {
            { "labels on a metric without labels", function() return m.c0:inc(1, { "x" }) end,
              { err = "plain_total has no labels; label_values must be nil or empty", reason = "label_count" } },
            { "a string on a metric without labels", function() return m.c0:inc(1, "x") end,
              { err = "has no labels", reason = "label_count" } },
            { "{} on a metric without labels", function() return m.spare0:inc(1, {}) end,
              { ok = true, check = has("spare0_total", "1") } },
        }))
end)

test("label values: numbers are written exactly; empty, nasty and invalid UTF-8 values are kept apart and escaped", function()
    local p, m = fixture()
    local function num(v) return function() return m.c:inc(1, { "NUM", v }) end end
    local function lbl(v) return function() return m.c:inc(1, { "STR", v }) end end
    local function s(code) return 'req_total{method="NUM",code="' .. code .. '"}' end
    local function t(code) return 'req_total{method="STR",code="' .. code .. '"}' end
    run_rows(p, "counter:inc", {
        { "label 200 (number)", num(200), { ok = true, check = has(s("200"), "1") } },
        { "label \"200\" (the same series)", num("200"), { ok = true, check = has(s("200"), "2") } },
        { "label 1.5", num(1.5), { ok = true, check = has(s("1.5"), "1") } },
        { "label 0.1 + 0.2", num(0.1 + 0.2), { ok = true, check = has(s("0.30000000000000004"), "1") } },
        { "label NaN", num(NAN), { ok = true, check = has(s("NaN"), "1") } },
        { "label +Inf", num(INF), { ok = true, check = has(s("+Inf"), "1") } },
        { "label -Inf", num(-INF), { ok = true, check = has(s("-Inf"), "1") } },
        { "label -0.0", num(-0.0), { ok = true, check = has(s("0"), "1") } },
        { "label 2^53", num(2 ^ 53), { ok = true, check = has(s("9007199254740992"), "1") } },
        { "label 1e300", num(1e300), { ok = true, check = has(s("1e+300"), "1") } },
        { "label \"\" (empty)", lbl(""), { ok = true, check = has(t(""), "1") } },
        { "label of 1024 bytes (the limit)", lbl(string.rep("v", 1024)), { ok = true, check = has(t(string.rep("v", 1024)), "1") } },
        { "label with a quote", lbl('a"b'), { ok = true, check = has(t('a\\"b'), "1") } },
        { "label with a backslash", lbl("a\\b"), { ok = true, check = has(t("a\\\\b"), "1") } },
        { "label with a newline", lbl("a\nb"), { ok = true, check = has(t("a\\nb"), "1") } },
        { "label \\n as two characters", lbl("a\\nb"), { ok = true, check = has(t("a\\\\nb"), "1") } },
        { "label with a NUL byte", lbl("a\0b"), { ok = true, check = has(t("a\0b"), "1") } },
        { "label \"a\" (apart from \"a\\0b\")", lbl("a"), { ok = true, check = has(t("a"), "1") } },
        { "label with a tab and CR", lbl("a\t\rb"), { ok = true, check = has(t("a\t\rb"), "1") } },
        { "label of invalid UTF-8 \\xff", lbl("bad\255"), { ok = true, check = has(t("bad\239\191\189"), "1") } },
        { "label \\xfe (renders like \\xff: the same series)", lbl("bad\254"), { ok = true, check = has(t("bad\239\191\189"), "2") } },
        { "label of a lone continuation byte", lbl("\128x"), { ok = true, check = has(t("\239\191\189x"), "1") } },
        { "label of a truncated 3-byte sequence", lbl("\226\130"), { ok = true, check = has(t("\239\191\189"), "1") } },
        { "label \"__overflow__\" (reserved look, no limit)", lbl("__overflow__"), { ok = true, check = has(t("__overflow__"), "1") } },
    })
end)

test("label values up to 64 KiB with max_label_bytes raised; one byte more is refused, never cut", function()
    local p, m = fixture({ max_label_bytes = 65536 })
    local big = string.rep("y", 65535) .. "z"
    run_rows(p, "counter:inc", {
        { "a label value of 64 KiB (limit 65536)", function() return m.c:inc(1, { "BIG", big }) end,
          { ok = true, check = has('req_total{method="BIG",code="' .. big .. '"}', "1") } },
        { "a label value of 64 KiB + 1", function() return m.c:inc(1, { "BIG", big .. "!" }) end,
          { err = "label value #2 is 65537 bytes; the limit (max_label_bytes) is 65536", reason = "label_too_long" } },
        { "its first 64 KiB (never merged with it)", function() return m.c:inc(1, { "BIG", big }) end,
          { ok = true, check = has('req_total{method="BIG",code="' .. big .. '"}', "2") } },
    })
end)

test("gauge:set, gauge:inc, gauge:dec: wrong values and labels", function()
    local p, m = fixture()
    local S = 'temp{room="x"}'
    local function set(v) return function() return m.g:set(v, { "x" }) end end
    local function ginc(v) return function() return m.g:inc(v, { "y" }) end end
    local function dec(v) return function() return m.g:dec(v, { "y" }) end end
    run_rows(p, "gauge:set", concat_rows(
        value_rows(function(v) return m.g:set(v, { "x" }) end),
        {
            { "value nil", set(nil), { err = "value must be a number, got nil", reason = "value_type" } },
            { "value +Inf", set(INF), { ok = true, check = has(S, "+Inf") } },
            { "value -Inf", set(-INF), { ok = true, check = has(S, "-Inf") } },
            { "value -1e308", set(-1e308), { ok = true, check = has(S, "-1e+308") } },
            { "value -0.5", set(-0.5), { ok = true, check = has(S, "-0.5") } },
        },
        label_rows(function(lv) return m.g:set(1, lv) end, 1)))
    run_rows(p, "gauge:inc", concat_rows(
        value_rows(function(v) return m.g:inc(v, { "y" }) end),
        {
            { "value +Inf", ginc(INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value -Inf", ginc(-INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value nil (adds 1)", ginc(nil), { ok = true, check = has('temp{room="y"}', "1") } },
            { "value -3", ginc(-3), { ok = true, check = has('temp{room="y"}', "-2") } },
        },
        label_rows(function(lv) return m.g:inc(1, lv) end, 1)))
    run_rows(p, "gauge:dec", concat_rows(
        value_rows(function(v) return m.g:dec(v, { "y" }) end),
        {
            { "value +Inf", dec(INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value nil (subtracts 1)", dec(nil), { ok = true, check = has('temp{room="y"}', "-3") } },
            { "value -5 (adds 5)", dec(-5), { ok = true, check = has('temp{room="y"}', "2") } },
        },
        label_rows(function(lv) return m.g:dec(1, lv) end, 1)))
end)

test("histogram:observe: wrong values and labels", function()
    local p, m = fixture()
    local function obs(v) return function() return m.hg:observe(v, { "/x" }) end end
    run_rows(p, "histogram:observe", concat_rows(
        value_rows(function(v) return m.hg:observe(v, { "/x" }) end),
        {
            { "value nil", obs(nil), { err = "value must be a number, got nil", reason = "value_type" } },
            { "value +Inf", obs(INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value -Inf", obs(-INF), { err = "value is infinite", reason = "value_infinite" } },
            { "value -1", obs(-1), { ok = true, check = function(body, what)
                has('lat_seconds_bucket{route="/x",le="0.1"}', "1")(body, what)
                has('lat_seconds_sum{route="/x"}', "-1")(body, what)
            end } },
            { "value 1e308", obs(1e308), { ok = true, check = function(body, what)
                has('lat_seconds_bucket{route="/x",le="1"}', "1")(body, what)
                has('lat_seconds_bucket{route="/x",le="+Inf"}', "2")(body, what)
                has('lat_seconds_count{route="/x"}', "2")(body, what)
                has('lat_seconds_sum{route="/x"}', "1e+308")(body, what)
            end } },
        },
        label_rows(function(lv) return m.hg:observe(1, lv) end, 1)))
end)

test("labels() and children: wrong labels at binding, wrong values on the child", function()
    local p, m = fixture()
    local S = 'req_total{method="CHILD",code="1"}'
    local child = assert(m.c:labels({ "CHILD", "1" }))
    local gchild = assert(m.g:labels({ "child" }))
    local hchild = assert(m.hg:labels({ "/child" }))
    run_rows(p, "labels", concat_rows(
        -- (a child counts as `true` for the control row)
        label_rows(function(lv)
            local c, err = m.c:labels(lv)
            if c then return type(c.inc) == "function", err end
            return c, err
        end, 2),
        {
            { "labels on a metric without labels", function() return m.c0:labels({ "x" }) end,
              { err = "plain_total has no labels", reason = "label_count" } },
        }))
    local mutable = { "MUT", "1" }
    local mchild = assert(m.c:labels(mutable))
    mutable[1] = "CHANGED"
    run_rows(p, "child", concat_rows(
        value_rows(function(v) return child:inc(v) end),
        {
            { "counter child:inc(-1)", function() return child:inc(-1) end,
              { err = "req_total: counters cannot decrease (value -1)", reason = "value_negative" } },
            { "counter child:inc() (adds 1)", function() return child:inc() end, { ok = true, check = has(S, "1") } },
            { "counter child:inc(1, {\"other\"}) (label values ignored)", function() return child:inc(1, { "other" }) end,
              { ok = true, check = has(S, "2") } },
            { "child of a table changed after labels()", function() return mchild:inc(1) end,
              { ok = true, check = has('req_total{method="MUT",code="1"}', "1") } },
            { "gauge child:set(\"x\")", function() return gchild:set("x") end,
              { err = "temp: value must be a number, got string", reason = "value_type" } },
            { "gauge child:set(+Inf)", function() return gchild:set(INF) end, { ok = true, check = has('temp{room="child"}', "+Inf") } },
            { "gauge child:dec(NaN)", function() return gchild:dec(NAN) end, { err = "temp: value is NaN", reason = "value_nan" } },
            { "gauge child:dec(\"one\")", function() return gchild:dec("one") end,
              { err = "temp: value must be a number, got string", reason = "value_type" } },
            { "histogram child:observe(nil)", function() return hchild:observe(nil) end,
              { err = "lat_seconds: value must be a number, got nil", reason = "value_type" } },
            { "histogram child:observe(-Inf)", function() return hchild:observe(-INF) end,
              { err = "lat_seconds: value is infinite", reason = "value_infinite" } },
            { "counter child after del of its series", function()
                assert(m.c:del({ "CHILD", "1" }))
                return child:inc(5)
              end, { ok = true, check = has(S, "5") } },
            { "counter child after reset of its family (reference restored after)", function()
                assert(m.c:reset())
                assert(child:inc(7))
                return m.c:inc(5, L)
              end, { ok = true, check = has(S, "7") } },
        }))
end)

test("del and reset: series that exist or not, arguments ignored", function()
    local p, m = fixture()
    assert(m.spare:inc(4, { "a" }))
    assert(m.spare:inc(6, { "b" }))
    run_rows(p, "del", {
        { "a series that does not exist", function() return m.spare:del({ "nope" }) end,
          { ok = true, check = has('spare_total{k="a"}', "4") } },
        { "an existing series", function() return m.spare:del({ "a" }) end,
          { ok = true, check = absent('spare_total{k="a"}') } },
        { "the same series again", function() return m.spare:del({ "a" }) end,
          { ok = true, check = has('spare_total{k="b"}', "6") } },
        { "nil on a metric without labels", function() return m.spare0:del() end,
          { ok = true, check = absent("spare0_total") } },
    })
    run_rows(p, "reset", {
        { "with an argument \"junk\" (ignored)", function() return m.spare:reset("junk") end,
          { ok = true, check = absent('spare_total{k="b"}') } },
        { "again, on an empty family", function() return m.spare:reset() end, { ok = true } },
    })
    -- Counting again after del/reset starts from zero.
    assert(m.spare:inc(1, { "b" }))
    eq(sample(p:metric_data("text"), 'spare_total{k="b"}'), "1")
end)

test("del: wrong labels return nil, err and are counted", function()
    local p, m = fixture()
    run_rows(p, "del", {
        { "labels nil", function() return m.spare:del(nil) end,
          { err = "spare_total needs a table of 1 label values, got nil", reason = "label_count" } },
        { "labels \"a\"", function() return m.spare:del("a") end, { err = "got string", reason = "label_count" } },
        { "too many labels", function() return m.spare:del({ "a", "b" }) end, { err = "got more", reason = "label_count" } },
        { "a boolean label value", function() return m.spare:del({ true }) end, { err = "is a boolean", reason = "label_type" } },
        { "a label value of 64 KiB", function() return m.spare:del({ KIB64 }) end,
          { err = "is 65536 bytes; the limit (max_label_bytes) is 1024", reason = "label_too_long" } },
    })
end)

test("metric_data: wrong format and names return nil, err, not counted", function()
    local p = fixture()
    local many = {}
    for i = 1, 1025 do many[i] = "req_total" end
    run_rows(p, "metric_data", {
        { "format 42", function() return p:metric_data(42) end, { err = 'format must be "text"' } },
        { "format \"xml\"", function() return p:metric_data("xml") end, { err = 'format must be "text"' } },
        { "names 5", function() return p:metric_data("text", 5) end, { err = "names must be a string or an array of strings" } },
        { "names true", function() return p:metric_data("text", true) end, { err = "names must be a string or an array of strings" } },
        { "names {1}", function() return p:metric_data("text", { 1 }) end, { err = "names[1] is not a string" } },
        { "1025 names", function() return p:metric_data("text", many) end, { err = "at most 1024 names" } },
        { "names {\"\"}", function() return p:metric_data("text", { "" }) end, { ok = "" } },
        { "a name of 64 KiB", function() return p:metric_data("text", { KIB64 }) end, { ok = "" } },
        { "names {} (every family)", function() return #p:metric_data("text", {}) == #p:metric_data("text") end, { ok = true } },
    })
end)

------------------------------------------------------------------------------
-- Capacity

test("store full: nil, err, store_full counted, dropped per family; existing series keep counting", function()
    local p = h.registry({ max_series = 3 })
    local a = p:counter("a_total", "A", { "k" })
    local b = p:counter("b_total", "B", { "k" })
    assert(a:inc(1, { "1" })); assert(a:inc(1, { "2" })); assert(b:inc(1, { "1" }))
    local function row(m, k, expect) return { m .. "{" .. k .. "}", function() return (m == "a" and a or b):inc(1, { k }) end, expect } end
    for i, r in ipairs({
        row("a", "3", { err = "a_total: all 3 series are used; raise max_series", reason = "store_full" }),
        row("b", "2", { err = "b_total: all 3 series are used; raise max_series", reason = "store_full" }),
        row("a", "4", { err = "all 3 series are used", reason = "store_full" }),
        row("a", "1", { ok = true }),
    }) do
        local before = errors(p:metric_data("text"))
        local ok, err = r[2]()
        local body = p:metric_data("text")
        check_exposition(body, r[1])
        if r[3].err then
            eq(ok, nil, r[1]); contains(err, r[3].err, r[1])
        else
            eq(ok, true, r[1])
        end
        eq(errors(body).store_full, before.store_full + (r[3].reason and 1 or 0), r[1] .. ": store_full")
    end
    -- labels() needs the series too: refused the same way.
    local child, err = a:labels({ "5" })
    eq(child, nil); contains(err, "a_total: all 3 series are used; raise max_series")
    local body = p:metric_data("text")
    eq(sample(body, 'shmetrics_errors_total{reason="store_full"}'), "4")
    eq(sample(body, 'a_total{k="1"}'), "2")
    eq(sample(body, 'a_total{k="2"}'), "1")
    eq(sample(body, 'b_total{k="1"}'), "1")
    eq(sample(body, 'shmetrics_series_dropped_total{family="a_total"}'), "3")
    eq(sample(body, 'shmetrics_series_dropped_total{family="b_total"}'), "1")
    eq(sample(body, "shmetrics_series_used"), "3")
end)

test("max_series per metric: the overflow series keeps the family's total right", function()
    local p = h.registry()
    local c = p:counter("user_total", "U", { "user", "route" }, { max_series = 2 })
    local total = 0
    for i = 1, 10 do
        local v = (i % 4) + 1      -- users u1..u4, u2 and u3 first
        assert(c:inc(i, { "u" .. v, "/r" }))
        total = total + i
    end
    local body = p:metric_data("text")
    check_exposition(body, "overflow")
    local sum = 0
    for k, v in body:gmatch('(user_total{[^\n]*}) (%S+)\n') do sum = sum + tonumber(v) end
    eq(sum, total, "the family's total")
    -- i = 1 (u2), 2 (u3) created; u4 (i = 3, 7) and u1 (i = 4, 8) overflow: 4 updates.
    eq(sample(body, 'user_total{user="__overflow__",route="__overflow__"}'), tostring(3 + 7 + 4 + 8))
    eq(sample(body, 'shmetrics_series_overflow_total{family="user_total"}'), "4")
    eq(sample(body, 'user_total{user="u4",route="/r"}'), nil)
    eq(errors(body).store_full, 0)
end)

test("store full before a family's overflow series exists: refused, not counted as overflow", function()
    local p = h.registry({ max_series = 3 })
    local c = p:counter("c_total", "C", { "k" }, { max_series = 1 })
    local o = p:counter("o_total", "O", { "k" })
    assert(c:inc(1, { "a" })); assert(o:inc(1, { "x" })); assert(o:inc(1, { "y" }))
    local ok, err = c:inc(1, { "b" })
    eq(ok, nil); contains(err, "c_total: all 3 series are used; raise max_series")
    local body = p:metric_data("text")
    check_exposition(body, "overflow refused")
    eq(sample(body, 'shmetrics_errors_total{reason="store_full"}'), "1")
    eq(sample(body, 'shmetrics_series_dropped_total{family="c_total"}'), "1")
    eq(sample(body, 'c_total{k="__overflow__"}'), nil)
    -- The update was refused: it is in no series, so not in the overflow count.
    eq(sample(body, 'shmetrics_series_overflow_total{family="c_total"}'), nil, "overflow count of a refused update")
end)

test("no free worker slot: nil, err, no_slot counted; the claim is retried at most once a second", function()
    -- A child process takes the only writer slot (max_slots = 2) and holds it
    -- until told to exit; this process then has none.
    local path = shm("slots")
    local go = path .. ".go"
    os.remove(go)
    local p = sm.init(name(), { path = path, max_slots = 2 })
    local c = p:counter("s_total", "S", { "who" })
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local prog = path .. ".lua"
    local f = assert(io.open(prog, "w"))
    f:write(string.format([[
        package.path = "%s/lua/?.lua;" .. package.path
        package.cpath = "%s/?.so;" .. package.cpath
        local ffi = require "ffi"
        ffi.cdef "int usleep(unsigned int usec);"
        local p = require("resty.shmetrics").init("x", { path = "%s", max_slots = 2 })
        assert(p:counter("s_total", "S", { "who" }):inc(7, { "child" }))
        io.write("ready\n"); io.flush()
        for _ = 1, 1000 do
            local g = io.open("%s")
            if g then g:close() break end
            ffi.C.usleep(10000)
        end
    ]], root, libdir, path, go))
    f:close()
    -- exec: the child is this process's own child (as a binary upgrade's new
    -- master is the old one's); another process would be refused the region.
    local child = io.popen("exec luajit " .. prog)
    eq(child:read("*l"), "ready", "the child holds the slot")
    local ok, err = c:inc(1, { "parent" })
    eq(ok, nil)
    contains(err, "all 1 worker slots belong to live processes; raise max_slots")
    local ok2, err2 = c:inc(1, { "parent" })   -- within the second: not retried, counted
    eq(ok2, nil); eq(err2, err)
    local body = p:metric_data("text")
    check_exposition(body, "no slot")
    eq(sample(body, 'shmetrics_errors_total{reason="no_slot"}'), "2")
    eq(sample(body, 's_total{who="child"}'), "7")
    eq(sample(body, 'shmetrics_worker_slots{state="live"}'), "1")
    -- The child exits; the next claim adopts its slot (within a second).
    io.open(go, "w"):close()
    child:close()
    local failed, t0 = 0, os.time()
    while true do
        local ok3 = c:inc(1, { "parent" })
        if ok3 then break end
        failed = failed + 1
        assert(os.time() - t0 <= 2, "no slot claimed 2 s after the child exited")
        ffi.C.usleep(20000)
    end
    body = p:metric_data("text")
    eq(sample(body, 'shmetrics_errors_total{reason="no_slot"}'), tostring(2 + failed))
    eq(sample(body, 's_total{who="parent"}'), "1")
    eq(sample(body, 's_total{who="child"}'), "7")
    eq(sample(body, 'shmetrics_worker_slots{state="live"}'), "1")
    eq(sample(body, 'shmetrics_worker_slots{state="dead"}'), "0")
    os.remove(prog); os.remove(go)
end)

test("a dead owner not yet reaped (zombie) gives up its slot", function()
    -- The child claims the only writer slot and exits; until this process reaps
    -- it (closing the pipe) it is a zombie: dead, its slot free to adopt.
    local path = shm("zombie")
    local p = sm.init(name(), { path = path, max_slots = 2 })
    local c = p:counter("z_total", "Z", { "who" })
    local root = package.path:match("^(.-)/lua/%?%.lua;")
    local libdir = package.cpath:match("^(.-)/%?%.so;")
    local prog = path .. ".lua"
    local f = assert(io.open(prog, "w"))
    f:write(string.format([[
        package.path = "%s/lua/?.lua;" .. package.path
        package.cpath = "%s/?.so;" .. package.cpath
        local p = require("resty.shmetrics").init("x", { path = "%s", max_slots = 2 })
        assert(p:counter("z_total", "Z", { "who" }):inc(5, { "child" }))
        local ffi = require "ffi"
        ffi.cdef "int getpid(void);"
        io.write(ffi.C.getpid(), "\n")
    ]], root, libdir, path))
    f:close()
    local child = io.popen("exec luajit " .. prog)   -- exec: the child is luajit itself
    local pid = tonumber(child:read("*l"))
    assert(pid, "the child ran")
    local state
    for _ = 1, 500 do   -- until it has exited (a zombie: state Z)
        local st = io.open("/proc/" .. pid .. "/stat")
        state = st and st:read("*a"):match("%) (%a)")
        if st then st:close() end
        if state == "Z" then break end
        ffi.C.usleep(10000)
    end
    eq(state, "Z", "the child is a zombie")
    local ok, err = c:inc(1, { "parent" })
    child:close()
    os.remove(prog)
    eq(err, nil, "the zombie's slot is adopted")
    eq(sample(p:metric_data("text"), 'z_total{who="child"}'), "5")
end)

return T
