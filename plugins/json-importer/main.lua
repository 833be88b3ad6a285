--!strict
-- Imports a JSON endpoint's events in a chain of jobs: every minute, unless a chain is
-- already paging, a `page` job starts; each imports one page after the stored cursor,
-- moves the cursor, and starts the next page's job while the endpoint says there is
-- more. A page that fails (the endpoint down, a limit) is retried by the job runner
-- with back-off; the cursor only moves after a page's events were captured, so a page is
-- imported twice only if a run dies between the two: keep pages small.
local plugin = {jobs = {}}

-- How long a chain holds off the next one: longer than a page can take.
local CHAIN_MS = 5 * 60 * 1000

function plugin.setup(ctx)
    if not ctx.config.url:match("^https?://") then
        error("url must start with http:// or https://")
    end
end

local function page_url(base: string, cursor: string): string
    local sep = if base:find("?", 1, true) then "&" else "?"
    return base .. sep .. "cursor=" .. cursor:gsub("[^%w%-_%.~]", function(c)
        return string.format("%%%02X", string.byte(c))
    end)
end

function plugin.every_minute(ctx, info)
    local busy = ctx.storage.get("chain_until")
    if busy and busy > ctx.time.now_ms() then
        return
    end
    ctx.storage.set("chain_until", ctx.time.now_ms() + CHAIN_MS)
    ctx.jobs.page({}):run_now()
end

function plugin.jobs.page(payload, ctx)
    local cursor = ctx.storage.get("cursor") or ""
    local headers = {}
    if ctx.config.authorization ~= "" then
        headers["Authorization"] = ctx.config.authorization
    end
    local sent, response = pcall(ctx.http.fetch, page_url(ctx.config.url, cursor), {headers = headers})
    if not sent then
        error("endpoint unreachable: " .. tostring(response))
    elseif response.status ~= 200 then
        error("endpoint answered " .. response.status)
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
    if page.more == true then
        ctx.storage.set("chain_until", ctx.time.now_ms() + CHAIN_MS)
        ctx.jobs.page({}):run_now()
    else
        ctx.storage.del("chain_until")
    end
end

return plugin
