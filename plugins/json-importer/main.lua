--!strict
-- Every minute: fetch the pages after the stored cursor, capture their events, and move
-- the cursor after each page, so a run cut short (a limit, a crash, the endpoint down)
-- resumes where it stopped. A page is imported twice only if a run dies between sending
-- its events and storing the cursor after it: keep pages small.
local plugin = {}

function plugin.setup(ctx)
    if not ctx.config.url:match("^https?://") then
        error("url must start with http:// or https://")
    end
    if not tonumber(ctx.config.pages_per_run) then
        error("pages_per_run must be a number")
    end
end

local function page_url(base: string, cursor: string): string
    local sep = if base:find("?", 1, true) then "&" else "?"
    return base .. sep .. "cursor=" .. cursor:gsub("[^%w%-_%.~]", function(c)
        return string.format("%%%02X", string.byte(c))
    end)
end

-- Imports one page; answers whether another follows.
function plugin.import_page(ctx): boolean
    local cursor = ctx.storage.get("cursor") or ""
    local headers = {}
    if ctx.config.authorization ~= "" then
        headers["Authorization"] = ctx.config.authorization
    end
    local sent, response = pcall(ctx.http.fetch, page_url(ctx.config.url, cursor), {headers = headers})
    if not sent then
        error("endpoint unreachable (the next run tries again): " .. tostring(response))
    elseif response.status ~= 200 then
        error("endpoint answered " .. response.status .. " (the next run tries again)")
    end
    local page = ctx.json.decode(response.body)
    for _, e in page.events or {} do
        local properties = e.properties or {}
        properties.timestamp = e.timestamp
        ctx.capture(e.event, properties, e.distinct_id)
    end
    if page.cursor ~= nil and page.cursor ~= cursor then
        ctx.storage.set("cursor", page.cursor)
    end
    return page.more == true
end

function plugin.every_minute(ctx, info)
    for _ = 1, tonumber(ctx.config.pages_per_run) do
        if not plugin.import_page(ctx) then
            return
        end
    end
end

return plugin
