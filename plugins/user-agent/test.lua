local function parsed(ua)
    return process_event({uuid = "u", team_id = 1, event = "e", properties = {["$raw_user_agent"] = ua}}).properties
end

function test_desktop_chrome_on_windows()
    local p = parsed("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
    assert(p["$browser"] == "Chrome" and p["$browser_version"] == 120, p["$browser"])
    assert(p["$os"] == "Windows" and p["$device_type"] == "Desktop")
end

function test_safari_on_iphone()
    local p = parsed("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1")
    assert(p["$browser"] == "Safari", p["$browser"])
    assert(p["$os"] == "iOS" and p["$os_version"] == "17.2", p["$os_version"])
    assert(p["$device_type"] == "Mobile")
end

function test_edge_is_not_chrome_and_android_tablets()
    assert(parsed("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0.2210")["$browser"] == "Microsoft Edge")
    local tab = parsed("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 Chrome/119.0 Safari/537.36")
    assert(tab["$os"] == "Android" and tab["$device_type"] == "Tablet", tab["$device_type"])
end

function test_values_the_sdk_set_are_kept()
    local out = process_event({uuid = "u", team_id = 1, event = "e", properties = {
        ["$raw_user_agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ["$browser"] = "Custom",
    }}).properties
    assert(out["$browser"] == "Custom" and out["$os"] == "Linux")
end
