--!strict
local plugin = {}

function plugin.setup(ctx)
    if type(ctx.config.rates) ~= "table" then
        error("rates must be a JSON object of currency code to rate")
    end
end

function plugin.process_event(event, ctx)
    local props = event.properties
    local amount = tonumber(props[ctx.config.amount_property])
    local currency = props[ctx.config.currency_property]
    if amount == nil or type(currency) ~= "string" then
        return event
    end
    local base = ctx.config.base_currency:upper()
    local code = currency:upper()
    local rate = if code == base then 1 else ctx.config.rates[code]
    if type(rate) ~= "number" then
        ctx.log.warn("no rate for currency " .. code)
        return event
    end
    -- Rounded to the cent-of-a-cent, so float noise does not show in reports.
    props.normalized_amount = math.round(amount * rate * 10000) / 10000
    props.normalized_currency = base
    return event
end

return plugin
