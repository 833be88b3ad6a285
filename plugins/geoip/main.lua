--!strict
local plugin = {}

-- lookup field -> property suffix
local FIELDS = {
    city_name = "city_name",
    country_name = "country_name",
    country_code = "country_code",
    continent_name = "continent_name",
    continent_code = "continent_code",
    postal_code = "postal_code",
    latitude = "latitude",
    longitude = "longitude",
    time_zone = "time_zone",
    accuracy_radius = "accuracy_radius",
    subdivision_1_code = "subdivision_1_code",
    subdivision_1_name = "subdivision_1_name",
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
    for field, suffix in FIELDS do
        local value = found[field]
        if value ~= nil then
            props["$geoip_" .. suffix] = value
            event["$set"]["$geoip_" .. suffix] = value
            event["$set_once"]["$initial_geoip_" .. suffix] = value
        end
    end
    return event
end

return plugin
