--!strict
local plugin = {}

-- ctx.geoip.lookup fields, each kept as `$geoip_<field>` (and `$initial_geoip_<field>`)
local FIELDS = {
    "city_name",
    "country_name",
    "country_code",
    "continent_name",
    "continent_code",
    "postal_code",
    "latitude",
    "longitude",
    "time_zone",
    "accuracy_radius",
    "subdivision_1_code",
    "subdivision_1_name",
}

function plugin.process_event(event, ctx)
    local props = event.properties
    if props["$geoip_disable"] then
        return event
    end
    local ip = props["$ip"] or event.ip
    if type(ip) ~= "string" or ip == "" then
        return event
    end
    local found = ctx.geoip.lookup(ip)
    if found == nil then
        return event
    end
    event["$set"] = event["$set"] or {}
    event["$set_once"] = event["$set_once"] or {}
    for _, field in FIELDS do
        local value = found[field]
        if value ~= nil then
            props["$geoip_" .. field] = value
            event["$set"]["$geoip_" .. field] = value
            event["$set_once"]["$initial_geoip_" .. field] = value
        end
    end
    return event
end

return plugin
