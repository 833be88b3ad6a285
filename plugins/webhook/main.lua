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
    local response = ctx.http.fetch(ctx.config.url, {method = "POST", headers = headers, body = body, timeout_ms = 5000})
    if response.status >= 500 or response.status == 429 then
        ctx.retry("webhook answered " .. response.status)
    elseif response.status >= 400 then
        ctx.log.warn("webhook refused the event: " .. response.status)
    end
end

return plugin
