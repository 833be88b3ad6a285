--!strict
local plugin = {}

local only: {[string]: boolean} = {}
local limited = false

function plugin.setup(ctx)
    if not ctx.config.url:match("^https?://") then
        error("url must start with http:// or https://")
    end
    for _, raw in string.split(ctx.config.events, ",") do
        local name = raw:match("^%s*(.-)%s*$")
        if name ~= "" then
            only[name] = true
            limited = true
        end
    end
end

function plugin.on_event(event, ctx)
    if limited and not only[event.event] then
        return
    end
    local body = ctx.json.encode(event)
    local headers = {["Content-Type"] = "application/json"}
    if ctx.config.secret ~= "" then
        headers["X-Sluice-Signature"] = "sha256=" .. ctx.crypto.hmac_sha256(ctx.config.secret, body)
    end
    local sent, response = pcall(ctx.http.fetch, ctx.config.url, {method = "POST", headers = headers, body = body, timeout_ms = 5000})
    if not sent then
        -- Refused, reset or timed out: the receiver may be back later.
        ctx.retry("request failed: " .. tostring(response))
    end
    if response.status >= 500 or response.status == 429 then
        ctx.retry("webhook answered " .. response.status)
    elseif response.status >= 400 then
        -- Given up: the event waits in the exports dead-letter topic with this error.
        error("webhook refused the event: " .. response.status)
    end
end

return plugin
