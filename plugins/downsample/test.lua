function test_keeps_about_the_percentage_and_whole_persons()
    local kept = 0
    for i = 1, 2000 do
        local id = "user-" .. i
        local a = process_event({uuid = "u", team_id = 1, event = "e", distinct_id = id, properties = {}})
        local b = process_event({uuid = "v", team_id = 1, event = "e", distinct_id = id, properties = {}})
        assert((a == nil) == (b == nil), "a person's events are kept or dropped together")
        if a ~= nil then
            kept += 1
        end
    end
    -- ctx.config.percentage is 100 unless a run sets it; the fixtures cover other values.
    assert(kept == math.floor(2000 * ctx.config.percentage / 100 + 0.5) or math.abs(kept - 2000 * ctx.config.percentage / 100) < 100, tostring(kept))
end
