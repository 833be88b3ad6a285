function test_posts_the_event_as_json()
    plugin.on_event({uuid = "u", team_id = 1, event = "purchase", properties = {amount = 3}}, ctx)
    local sent = http_requests()
    assert(#sent == 1, "one request")
    assert(sent[1].method == "POST" and sent[1].url == ctx.config.url)
    assert(ctx.json.decode(sent[1].body).properties.amount == 3)
end
