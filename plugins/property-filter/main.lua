--!strict
local plugin = {}

-- Each path as its segments, read once per VM.
local paths: {{string}} = {}

function plugin.setup(ctx)
    for _, raw in string.split(ctx.config.properties, ",") do
        local path = raw:match("^%s*(.-)%s*$")
        if path ~= "" then
            table.insert(paths, string.split(path, "."))
        end
    end
end

local function remove(tbl: any, segments: {string}, i: number)
    if type(tbl) ~= "table" then
        return
    end
    local key = segments[i]
    if i == #segments then
        tbl[key] = nil
    else
        remove(tbl[key], segments, i + 1)
    end
end

function plugin.process_event(event, ctx)
    for _, segments in paths do
        remove(event.properties, segments, 1)
        remove(event["$set"], segments, 1)
        remove(event["$set_once"], segments, 1)
    end
    return event
end

return plugin
