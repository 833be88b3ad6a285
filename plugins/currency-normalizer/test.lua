function test_unknown_currency_is_left_alone_and_logged()
    local out = process_event({uuid = "u", team_id = 1, event = "purchase", properties = {amount = 5, currency = "XYZ"}})
    assert(out.properties.normalized_amount == nil)
end

function test_base_currency_converts_at_one()
    local out = process_event({uuid = "u", team_id = 1, event = "purchase", properties = {amount = 5, currency = "usd"}})
    assert(out.properties.normalized_amount == 5 and out.properties.normalized_currency == "USD")
end
