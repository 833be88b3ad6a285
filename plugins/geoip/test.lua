function test_a_known_address_gets_its_city()
    local out = process_event({uuid = "u", team_id = 1, event = "e", ip = "81.2.69.160", properties = {}})
    assert(out.properties["$geoip_city_name"] == "London", tostring(out.properties["$geoip_city_name"]))
    assert(out.properties["$geoip_country_code"] == "GB")
    assert(out["$set"]["$geoip_city_name"] == "London")
    assert(out["$set_once"]["$initial_geoip_country_code"] == "GB")
end

function test_unknown_and_private_addresses_change_nothing()
    for _, ip in {"10.0.0.1", "8.8.8.8", "not an ip"} do
        local out = process_event({uuid = "u", team_id = 1, event = "e", ip = ip, properties = {}})
        assert(out.properties["$geoip_city_name"] == nil, ip)
        assert(out["$set"] == nil, ip)
    end
end

function test_geoip_can_be_turned_off_per_event()
    local out = process_event({uuid = "u", team_id = 1, event = "e", ip = "81.2.69.160", properties = {["$geoip_disable"] = true}})
    assert(out.properties["$geoip_city_name"] == nil)
end
