"""Writes the benchmark bodies: a posthog-js style single event (gzip) and a 50-event
/batch body like posthog-node's. Properties are the size and shape real SDKs send."""
import gzip
import json
import sys
import uuid

out = sys.argv[1]


def js_event(i):
    return {
        "event": "$pageview",
        "properties": {
            "$os": "Mac OS X", "$os_version": "14.5.0", "$browser": "Chrome", "$device_type": "Desktop",
            "$current_url": f"https://app.example.com/dashboard/{i}?utm_source=newsletter",
            "$host": "app.example.com", "$pathname": f"/dashboard/{i}", "$raw_user_agent":
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
            "$browser_version": 126, "$browser_language": "en-US", "$screen_height": 1117, "$screen_width": 1728,
            "$viewport_height": 980, "$viewport_width": 1728, "$lib": "web", "$lib_version": "1.150.0",
            "$insert_id": "4x1v0y2sd1pmgl9a", "$time": 1714557600.123, "distinct_id": f"018f3c9e-{i:04d}-7b2c-a7c4-5e1b2f0d9a61",
            "$device_id": "018f3c9e-7e0d-7b2c-a7c4-5e1b2f0d9a61", "$referrer": "https://www.google.com/",
            "$referring_domain": "www.google.com", "token": "phc_benchmarktoken0000000000000000000000000",
            "$session_id": "018f3c9e-7e0e-7d3a-8d1c-3a6a2c1b9f00", "$window_id": "018f3c9e-7e0e-7d3a-8d1c-3a6a2c1b9f01",
            "$pageview_id": "018f3c9e-7e0f-7c1d-b5e2-0f5a1b2c3d4e", "title": "Dashboard | Example",
            "$is_identified": False, "$process_person_profile": True,
        },
        "timestamp": "2024-05-01T10:00:00.123Z",
        "uuid": str(uuid.uuid4()),
    }


with open(f"{out}/single.json.gz", "wb") as f:
    f.write(gzip.compress(json.dumps([js_event(1)]).encode()))

batch = {"api_key": "phc_benchmarktoken0000000000000000000000000", "sent_at": "2024-05-01T10:00:01.000Z", "batch": []}
for i in range(50):
    e = js_event(i)
    e["distinct_id"] = e["properties"].pop("distinct_id")
    e["properties"]["$lib"] = "posthog-node"
    batch["batch"].append(e)
with open(f"{out}/batch50.json", "w") as f:
    json.dump(batch, f)
