function test_posts_the_chosen_events_as_one_json_array()
    plugin.export_events({
        {uuid = "a", team_id = 1, event = "purchase", properties = {amount = 3}},
        {uuid = "b", team_id = 1, event = "$pageview", properties = {}},
        {uuid = "c", team_id = 1, event = "signup", properties = {}},
    }, ctx)
    local sent = http_requests()
    assert(#sent == 1, "one request for the buffer, got " .. #sent)
    assert(sent[1].method == "POST" and sent[1].url == ctx.config.url)
    assert(sent[1].headers["Authorization"] == "Bearer t0ken")
    local body = ctx.json.decode(sent[1].body)
    assert(#body == 2, "only purchase and signup")
    assert(body[1].uuid == "a" and body[1].properties.amount == 3 and body[2].uuid == "c")
end

function test_nothing_is_sent_when_no_event_is_chosen()
    plugin.export_events({{uuid = "x", team_id = 1, event = "$pageview", properties = {}}}, ctx)
    assert(#http_requests() == 0)
end

function test_answers_are_retried_or_refused_as_a_warehouse_means_them()
    assert(plugin.outcome(200) == "ok" and plugin.outcome(204) == "ok")
    for _, status in {500, 502, 503, 504, 429, 408} do
        assert(plugin.outcome(status) == "retry", tostring(status))
    end
    for _, status in {400, 401, 403, 404, 413, 422} do
        assert(plugin.outcome(status) == "refused", tostring(status))
    end
end
