--!strict
local plugin = {}

local function words(name: string): {string}
    local spaced = name:gsub("([%l%d])(%u)", "%1 %2"):gsub("[_%-%.%s]+", " ")
    local out = {}
    for word in spaced:gmatch("%S+") do
        table.insert(out, word:lower())
    end
    return out
end

local function capitalized(word: string): string
    return word:sub(1, 1):upper() .. word:sub(2)
end

local function join(list: {string}, convention: string): string
    if convention == "snake_case" then
        return table.concat(list, "_")
    elseif convention == "kebab-case" then
        return table.concat(list, "-")
    elseif convention == "spaces" then
        return table.concat(list, " ")
    end
    local parts = {}
    for i, word in list do
        parts[i] = if i == 1 and convention == "camelCase" then word else capitalized(word)
    end
    return table.concat(parts)
end

function plugin.process_event(event, ctx)
    if event.event:sub(1, 1) ~= "$" then
        local renamed = join(words(event.event), ctx.config.convention)
        if renamed ~= "" then
            event.event = renamed
        end
    end
    return event
end

return plugin
