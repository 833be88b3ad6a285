function test_removes_top_level_and_nested_properties()
    local out = process_event({
        uuid = "u", team_id = 1, event = "e",
        properties = {email = "a@b.c", keep = 1, address = {street = "x", city = "y"}},
    })
    assert(out.properties.email == nil, "email removed")
    assert(out.properties.keep == 1, "others kept")
    assert(out.properties.address.street == nil and out.properties.address.city == "y", "nested path")
end

function test_a_missing_path_is_fine()
    local out = process_event({uuid = "u", team_id = 1, event = "e", properties = {address = "not a table"}})
    assert(out.properties.address == "not a table")
end
