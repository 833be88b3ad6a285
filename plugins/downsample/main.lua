--!strict
local plugin = {}

local only: {[string]: boolean} = {}
local limited = false

function plugin.setup(ctx)
    local pct = ctx.config.percentage
    if pct < 0 or pct > 100 then
        error("percentage must be between 0 and 100, got " .. tostring(pct))
    end
    for _, raw in string.split(ctx.config.events, ",") do
        local name = raw:match("^%s*(.-)%s*$")
        if name ~= "" then
            only[name] = true
            limited = true
        end
    end
end

-- A stable number in [0, 10000) for a distinct id.
local function bucket(distinct_id: string, ctx): number
    return tonumber(ctx.crypto.sha256(distinct_id):sub(1, 8), 16) % 10000
end

function plugin.process_event(event, ctx)
    if limited and not only[event.event] then
        return event
    end
    if bucket(tostring(event.distinct_id), ctx) < ctx.config.percentage * 100 then
        return event
    end
    return nil
end

return plugin
