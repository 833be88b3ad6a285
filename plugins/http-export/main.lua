--!strict
-- export_events gets a buffer of stored events (cut by EXPORT_BUFFER_MAX_EVENTS,
-- _MAX_BYTES and _MAX_AGE_MS) and sends it in one request. ctx.retry asks the exports
-- lane to call again with the same events after a back-off; any other error gives the
-- buffer up, and its events go to the exports dead-letter topic with the error.
local plugin = {}

local only: {[string]: boolean} = {}
local limited = false

function plugin.setup(ctx)
    if not ctx.config.url:match("^https?://") then
        error("url must start with http:// or https://")
    end
    if not tonumber(ctx.config.timeout_ms) then
        error("timeout_ms must be a number")
    end
    for _, raw in string.split(ctx.config.events, ",") do
        local name = raw:match("^%s*(.-)%s*$")
        if name ~= "" then
            only[name] = true
            limited = true
        end
    end
end

-- What an answer means: "ok", "retry" (the destination may take it later) or "refused".
function plugin.outcome(status: number): string
    if status >= 200 and status < 300 then
        return "ok"
    elseif status >= 500 or status == 429 or status == 408 then
        return "retry"
    end
    return "refused"
end

function plugin.export_events(events, ctx)
    local batch = {}
    for _, event in events do
        if not limited or only[event.event] then
            table.insert(batch, event)
        end
    end
    if #batch == 0 then
        return
    end
    local headers = {["Content-Type"] = "application/json"}
    if ctx.config.authorization ~= "" then
        headers["Authorization"] = ctx.config.authorization
    end
    local body = ctx.json.encode(batch)
    local options = {method = "POST", headers = headers, body = body, timeout_ms = tonumber(ctx.config.timeout_ms)}
    local sent, response = pcall(ctx.http.fetch, ctx.config.url, options)
    if not sent then
        -- Connection refused, reset or timed out: the destination may be back later.
        ctx.retry("request failed: " .. tostring(response))
    end
    local outcome = plugin.outcome(response.status)
    if outcome == "retry" then
        ctx.retry("destination answered " .. response.status)
    elseif outcome == "refused" then
        error("destination refused " .. #batch .. " events with " .. response.status)
    end
end

return plugin
