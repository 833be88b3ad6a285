local function renamed(name)
    return process_event({uuid = "u", team_id = 1, event = name, properties = {}}).event
end

function test_snake_case_by_default()
    assert(renamed("Signed Up") == "signed_up", renamed("Signed Up"))
    assert(renamed("checkoutCompleted") == "checkout_completed")
    assert(renamed("add-to-cart") == "add_to_cart")
    assert(renamed("Step2Done") == "step2_done", renamed("Step2Done"))
end

function test_posthog_events_are_left_alone()
    assert(renamed("$pageview") == "$pageview")
end
