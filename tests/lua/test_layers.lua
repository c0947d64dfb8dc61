-- The Lua modules' imports run one way: every file under lua/resty/ requires
-- only modules of a lower layer, in the order docs/architecture.md gives
-- (its "Layers" block, one layer a line, top first). Also: every module is in
-- that order and in the rockspec's install list.
local h = require "helpers"

local T = {}
local function test(name, fn) T[#T + 1] = { name, fn } end

local root = arg[0]:match("^(.*)/tests/lua/run%.lua$") or "."

local function read(path)
    local f = assert(io.open(root .. "/" .. path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

-- The files under lua/ as {module name = path}.
local function modules()
    local out = {}
    local p = io.popen("cd " .. root .. " && find lua -name '*.lua' | sort")
    for path in p:lines() do
        out[path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", ".")] = path
    end
    p:close()
    return out
end

-- {module name = layer number, bottom = 1} from the doc's Layers block.
local function layers(doc)
    local block = doc:match("\n### Layers[^\n]*\n.-```\n(.-)```")
    assert(block, "docs/architecture.md has no \"### Layers\" section with a ``` block")
    local lines = {}
    for line in block:gmatch("[^\n]+") do
        lines[#lines + 1] = line
    end
    local rank = {}
    for i, line in ipairs(lines) do
        for name in line:gmatch("[%w_%.]+") do
            assert(rank[name] == nil, name .. " is in two layers")
            rank[name] = #lines - i + 1
        end
    end
    return rank
end

-- The resty.shmetrics* modules that source `src` requires (outside comments).
local function requires(src)
    src = src:gsub("%-%-%[(=*)%[.-%]%1%]", ""):gsub("%-%-[^\n]*", "")
    local out = {}
    for name in src:gmatch("require%s*%(?%s*[\"']([%w_%.]+)[\"']") do
        if name:find("^resty%.shmetrics") then
            out[#out + 1] = name
        end
    end
    return out
end

-- The imports that break the order, one line each (empty: none).
local function problems(rank, sources)
    local out = {}
    for name, src in pairs(sources) do
        local r = rank[name]
        if r == nil then
            out[#out + 1] = name .. " is in no layer"
        else
            for _, dep in ipairs(requires(src)) do
                if rank[dep] == nil then
                    out[#out + 1] = name .. " requires " .. dep .. ", which is in no layer"
                elseif rank[dep] >= r then
                    out[#out + 1] = name .. " (layer " .. r .. ") requires " .. dep
                                    .. " (layer " .. rank[dep] .. "), not below it"
                end
            end
        end
    end
    table.sort(out)
    return out
end

test("every module requires only modules of a lower layer", function()
    local rank = layers(read("docs/architecture.md"))
    local sources, n = {}, 0
    for name, path in pairs(modules()) do
        sources[name] = read(path)
        n = n + 1
    end
    assert(n >= 10, "found only " .. n .. " Lua modules under lua/")
    local found = problems(rank, sources)
    assert(#found == 0, table.concat(found, "\n"))
    for name in pairs(rank) do
        assert(sources[name], "the Layers block names " .. name .. ", which is not under lua/")
    end
    -- The check sees the imports: the entry point requires binding, metrics,
    -- serve and (when a status page is asked for) status.
    h.eq(#requires(sources["resty.shmetrics"]), 4, "resty.shmetrics's requires")
end)

test("the check fails on an import upwards, sideways, or of a module in no layer", function()
    local rank = { ["resty.shmetrics.a"] = 1, ["resty.shmetrics.b"] = 2, ["resty.shmetrics.c"] = 2 }
    local found = problems(rank, {
        ["resty.shmetrics.a"] = 'local x = require "resty.shmetrics.b"',
        ["resty.shmetrics.b"] = "-- require 'resty.shmetrics.a' in a comment\nlocal y = require('resty.shmetrics.c')",
        ["resty.shmetrics.c"] = 'local z = require "resty.shmetrics.a"\nlocal w = require "resty.shmetrics.w"',
        ["resty.shmetrics.d"] = "",
    })
    h.eq(table.concat(found, "\n"),
         "resty.shmetrics.a (layer 1) requires resty.shmetrics.b (layer 2), not below it\n"
         .. "resty.shmetrics.b (layer 2) requires resty.shmetrics.c (layer 2), not below it\n"
         .. "resty.shmetrics.c requires resty.shmetrics.w, which is in no layer\n"
         .. "resty.shmetrics.d is in no layer")
end)

test("the rockspec installs every module under lua/", function()
    local spec = io.popen("cd " .. root .. " && ls *.rockspec"):read("*l")
    local text = read(spec)
    local listed = {}
    for name, path in text:gmatch('%["(resty[%w_%.]*)"%]%s*=%s*"([^"]+)"') do
        listed[name] = path
    end
    local n = 0
    for name, path in pairs(modules()) do
        h.eq(listed[name], path, spec .. ": module " .. name)
        n = n + 1
    end
    for _ in pairs(listed) do
        n = n - 1
    end
    h.eq(n, 0, spec .. ": modules listed but not under lua/")
end)

return T
