function test_a_minute_starts_one_chain_of_page_jobs()
    plugin.every_minute(ctx, {period_start_ms = 0})
    plugin.every_minute(ctx, {period_start_ms = 60000})
    local jobs = started_jobs()
    assert(#jobs == 1, "one chain at a time, got " .. #jobs)
    assert(jobs[1].name == "page")
end

function test_a_page_is_fetched_after_the_stored_cursor()
    ctx.storage.set("cursor", "abc 1")
    pcall(plugin.jobs.page, {}, ctx)
    local sent = http_requests()
    assert(#sent == 1, "one request")
    assert(sent[1].url == "https://api.example.com/events?cursor=abc%201", sent[1].url)
end

function test_captured_events_keep_their_names_people_and_times()
    ctx.capture("Invoice Paid", {amount = 5, timestamp = "2026-01-02T03:04:05Z"}, "customer-1")
    local got = captured_events()
    assert(#got == 1)
    assert(got[1].event == "Invoice Paid" and got[1].distinct_id == "customer-1")
    assert(got[1].timestamp == "2026-01-02T03:04:05Z")
    assert(got[1].properties.amount == 5 and got[1].properties["$lib"] == "sluice-plugin")
end
