--!strict
local plugin = {}

-- First match wins: Edge and Opera carry "Chrome", Chrome carries "Safari".
local BROWSERS = {
    {"Edg[eA]?/([%d%.]+)", "Microsoft Edge"},
    {"OPR/([%d%.]+)", "Opera"},
    {"SamsungBrowser/([%d%.]+)", "Samsung Internet"},
    {"CriOS/([%d%.]+)", "Chrome iOS"},
    {"FxiOS/([%d%.]+)", "Firefox iOS"},
    {"Chrome/([%d%.]+)", "Chrome"},
    {"Firefox/([%d%.]+)", "Firefox"},
    {"Version/([%d%.]+).*Safari/", "Safari"},
}

local function os_of(ua: string): (string?, string?)
    local v = ua:match("Windows NT ([%d%.]+)")
    if v then
        return "Windows", v
    end
    v = ua:match("iPhone OS ([%d_]+)") or ua:match("CPU OS ([%d_]+)")
    if v then
        return "iOS", (v:gsub("_", "."))
    end
    v = ua:match("Android ([%d%.]+)")
    if v then
        return "Android", v
    end
    v = ua:match("Mac OS X ([%d_%.]+)")
    if v then
        return "Mac OS X", (v:gsub("_", "."))
    end
    if ua:find("CrOS", 1, true) then
        return "Chrome OS", nil
    end
    if ua:find("Linux", 1, true) then
        return "Linux", nil
    end
    return nil, nil
end

local function device_of(ua: string): string
    if ua:find("iPad", 1, true) or ua:find("Tablet", 1, true) or (ua:find("Android", 1, true) and not ua:find("Mobile", 1, true)) then
        return "Tablet"
    end
    if ua:find("Mobi", 1, true) or ua:find("iPhone", 1, true) then
        return "Mobile"
    end
    return "Desktop"
end

function plugin.process_event(event, ctx)
    local props = event.properties
    local ua = props["$raw_user_agent"] or props["$useragent"] or props["$user_agent"]
    if type(ua) ~= "string" or ua == "" then
        return event
    end
    local found = {}
    for _, b in BROWSERS do
        local version = ua:match(b[1])
        if version then
            found["$browser"] = b[2]
            found["$browser_version"] = tonumber(version:match("^(%d+)")) or version
            break
        end
    end
    local os, os_version = os_of(ua)
    found["$os"] = os
    found["$os_version"] = os_version
    found["$device_type"] = device_of(ua)
    for key, value in found do
        if ctx.config.override_existing or props[key] == nil then
            props[key] = value
        end
    end
    return event
end

return plugin
