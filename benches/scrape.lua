-- The scrape benchmark's setup and in-worker render timing
-- (nginx-test-conf/bench_scrape.conf).
--
-- Series are 3-label counters (method, path, namespace) spread over 10 families,
-- so one registry entry is one exposition line: "N series" means N sample lines
-- (plus the self-metrics). Family 9 counts fractional amounts (shortest
-- round-trip floats), the others integers.

local ffi = require "ffi"
local ops = require "ops"

local floor = math.floor
local concat = table.concat

local M = {}

local FAMILIES = 10
local METHODS = { "GET", "POST", "PUT", "DELETE" }
local fams = {}
local made = 0

function M.define(prometheus)
    M.prometheus = prometheus
    for f = 0, FAMILIES - 1 do
        fams[f] = prometheus:counter("bench_scrape_" .. f .. "_total",
                                     "Scrape benchmark family " .. f,
                                     { "method", "path", "namespace" })
    end
end

-- Creates series made+1 .. n (each written once from this worker). Returns
-- "<created> <ns per creation>".
function M.setup(n)
    local t0 = ops.now_ns()
    local first = made
    for i = made, n - 1 do
        local f = i % FAMILIES
        local j = floor(i / FAMILIES)
        local lv = { METHODS[j % 4 + 1], "/v1/api/" .. floor(j / 100), "ns" .. (floor(j / 4) % 25) }
        local ok, err = fams[f]:inc(f == 9 and (j % 1000) * 0.0042 + 0.0042 or j % 100000 + 1, lv)
        if not ok then
            return nil, err
        end
    end
    made = math.max(made, n)
    local dt = ops.now_ns() - t0
    local created = made - first
    return created, created > 0 and dt / created or 0
end

-- clock_gettime and its timespec are declared by ops.lua.
local CLOCK_THREAD_CPUTIME_ID = 3
local cts = ffi.new("shmetrics_bench_timespec")
local function cpu_ns()
    ffi.C.clock_gettime(CLOCK_THREAD_CPUTIME_ID, cts)
    return tonumber(cts.tv_sec) * 1e9 + tonumber(cts.tv_nsec)
end

-- The renderer alone, through the C ABI (include/shmetrics.h): open, every
-- piece, close, without copying the pieces into Lua strings.
local lib
local render_out, chunk_out, len_out
local function load_lib()
    if not lib then
        lib = ffi.load(assert(package.searchpath("libshmetrics", package.cpath)))
        render_out = ffi.new("shmetrics_render *[1]")
        chunk_out = ffi.new("const char *[1]")
        len_out = ffi.new("size_t[1]")
    end
end

local function raw_render()
    load_lib()
    assert(lib.shmetrics_render_open(M.prometheus.h, 0, nil, nil, 0, render_out) >= 0)
    local it, bytes = render_out[0], 0
    while lib.shmetrics_render_next(it, 65536, chunk_out, len_out) > 0 do
        bytes = bytes + tonumber(len_out[0])
    end
    lib.shmetrics_render_close(it)
    return bytes
end

-- The percentiles of a list of ms figures: "n p50 p99 max over" as JSON, with
-- `over` the count above 0.5 ms. Sorts the list.
local function spread(ms)
    table.sort(ms)
    local n, over = #ms, 0
    for i = 1, n do
        if ms[i] > 0.5 then
            over = over + 1
        end
    end
    if n == 0 then
        return '{"n": 0}'
    end
    return string.format('{"n": %d, "p50": %.4f, "p99": %.4f, "max": %.4f, "over": %d}', n,
                         ms[math.ceil(n * 0.5)], ms[math.ceil(n * 0.99)], ms[n], over)
end

-- The library's part of each piece of a threaded scrape, as collect() takes
-- it in the event loop: shmetrics_render_poll and the copy of the piece into a
-- Lua string (thread CPU ms per piece; nothing is sent). Sleeps 1 ms while no
-- piece is ready, as collect() does. Returns spread() of the pieces.
local function piece_times(chunk)
    local binding = require "resty.shmetrics.binding"
    local job_out = ffi.new("shmetrics_render_job *[1]")
    local rc = lib.shmetrics_render_start(M.prometheus.h, 0, nil, nil, 0, chunk, 2, job_out)
    if rc < 0 then
        error("shmetrics_render_start: " .. rc)
    end
    local job = ffi.gc(job_out[0], lib.shmetrics_render_stop)
    local ms = {}
    while true do
        local c0 = cpu_ns()
        rc = lib.shmetrics_render_poll(job, chunk_out, len_out)
        if rc == 1 then
            local piece = ffi.string(chunk_out[0], len_out[0])
            ms[#ms + 1] = (cpu_ns() - c0) / 1e6
            assert(#piece > 0)
        elseif rc == binding.RENDER_PENDING then
            ngx.sleep(0.001)
        else
            break
        end
    end
    ffi.gc(job, nil)
    lib.shmetrics_render_stop(job)
    if rc < 0 then
        error("shmetrics_render_poll: " .. rc)
    end
    return spread(ms)
end

-- Times f() `runs` times after one first run; returns the first run's wall ms,
-- and lists of wall and thread-CPU ms.
local function timed(f, runs)
    local t0 = ops.now_ns()
    f()
    local first = (ops.now_ns() - t0) / 1e6
    collectgarbage()
    local wall, cpu = {}, {}
    for r = 1, runs do
        local w0, c0 = ops.now_ns(), cpu_ns()
        f()
        wall[r] = string.format("%.3f", (ops.now_ns() - w0) / 1e6)
        cpu[r] = string.format("%.3f", (cpu_ns() - c0) / 1e6)
        collectgarbage()
    end
    return first, wall, cpu
end

-- /render?what=raw|md&runs=R: a JSON object with, for the renderer alone (raw)
-- or metric_data() (md), the body size, the first run and R more runs (wall and
-- CPU ms).
function M.render(what, runs)
    if what == "pieces" then
        -- /render?what=pieces&chunk=C: the library's part of each piece (piece_times).
        load_lib()
        local ok, out = pcall(piece_times, tonumber(ngx.var.arg_chunk) or 65536)
        if not ok then
            return string.format('{"error": "%s"}', (tostring(out):gsub('[%c"\\]', " ")))
        end
        return out
    end
    local size, f
    if what == "raw" then
        f = function() size = raw_render() end
    else
        f = function() size = #M.prometheus:metric_data("text") end
    end
    local ok, first, wall, cpu = pcall(timed, f, runs)
    if not ok then
        return string.format('{"error": "%s"}', (tostring(first):gsub('[%c"\\]', " ")))
    end
    return string.format('{"size": %d, "first": %.3f, "wall": [%s], "cpu": [%s]}',
                         size, first, concat(wall, ","), concat(cpu, ","))
end

-- The same-run baseline of a threaded scrape's sending: `bytes` of body in
-- pieces of `piece` bytes, each sent as collect() sends a piece (ngx.print of a
-- Lua string, ngx.flush(true)), then a 1 ms sleep; no rendering. The thread CPU
-- ms of each piece's print and flush are kept for /monitor?op=sends.
local sends = {}
local pieces = {}
function M.paced(bytes, piece)
    if not (bytes and piece and piece > 0) then
        return ngx.exit(ngx.HTTP_BAD_REQUEST)
    end
    local s = pieces[piece]
    if not s then
        s = string.rep("x", piece - 1) .. "\n"
        pieces[piece] = s
    end
    ngx.header.content_type = "text/plain; version=0.0.4; charset=utf-8"
    local left = bytes
    while left > 0 do
        local p = s
        if left < piece then
            p = s:sub(piece - left + 1)
        end
        local c0 = cpu_ns()
        local ok = ngx.print(p)
        if ok then
            ok = ngx.flush(true)
        end
        sends[#sends + 1] = (cpu_ns() - c0) / 1e6
        if not ok then
            return
        end
        left = left - #p
        ngx.sleep(0.001)
    end
end

-- The stall monitor: a 1 ms timer chain in the worker that records the longest
-- gap between two of its ticks while armed. A tick is late by as long as the
-- worker was busy elsewhere (a scrape piece not yielding, say): the longest gap
-- minus 1 ms is the longest time the worker served nothing else.
--
-- Beside the wall-clock gap, the CPU time the worker's event-loop thread used
-- between two ticks (its CLOCK_THREAD_CPUTIME_ID): what the loop itself did
-- while the tick waited, without the time other processes of the machine held
-- the CPU (a render thread's work is on its own clock, not on this one).
local armed, last, maxgap = false, 0, 0
local lastcpu, maxcpu = 0, 0
local ticks, over = 0, 0   -- ticks counted, and those after more than 0.5 ms of loop CPU

local function tick(premature)
    if premature or not armed then
        return
    end
    local now, cpu = ops.now_ns(), cpu_ns()
    if last > 0 and now - last > maxgap then
        maxgap = now - last
    end
    if last > 0 and cpu - lastcpu > maxcpu then
        maxcpu = cpu - lastcpu
    end
    if last > 0 then
        ticks = ticks + 1
        if cpu - lastcpu > 5e5 then
            over = over + 1
        end
    end
    last, lastcpu = now, cpu
    local ok, err = ngx.timer.at(0.001, tick)
    if not ok then
        ngx.log(ngx.ERR, "stall monitor: ", err)
        armed = false
    end
end

-- /monitor?op=arm starts a measurement, /monitor?op=read ends it and returns
-- the longest gap in ms; /monitor?op=cpu (before read) returns the most CPU
-- time in ms the loop used between two ticks.
function M.monitor(op)
    if op == "cpu" then
        return maxcpu / 1e6
    end
    if op == "sends" then
        -- spread() of the paced baseline's piece sends since the last call.
        local out = spread(sends)
        sends = {}
        return out
    end
    if op == "over" then
        -- Ticks after more than 0.5 ms of the loop's CPU, per thousand ticks.
        return ticks > 0 and over * 1000 / ticks or 0
    end
    if op == "arm" then
        if not armed then
            armed, last, maxgap, maxcpu, ticks, over = true, 0, 0, 0, 0, 0
            local ok, err = ngx.timer.at(0, tick)
            if not ok then
                return nil, err
            end
        end
        return 0
    end
    armed = false
    return maxgap / 1e6
end

return M
