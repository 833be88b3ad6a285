"""Sends events with the real posthog-python client.

Usage: send.py HOST TOKEN RUN_ID GZIP(0|1) [STEP]
SLUICE_CAPTURE_MODE=v1 sends with capture_mode="v1" (POST /i/v1/analytics/events), its
body compressed as SLUICE_CAPTURE_COMPRESSION says (none, gzip, deflate, zstd).
Without STEP: a fixed sequence (an event, identify, alias, group identify, a grouped
event) as anon-RUN / user-RUN. With STEP: one step of the person story of
tests/tests/ingest_persons.rs (see STEPS). Prints nothing; the tests read what arrived.
"""
import os
import sys

from posthog import Posthog

host, token, run, gzip = sys.argv[1:5]
step = sys.argv[5] if len(sys.argv) > 5 else None
anon, user = f"anon-{run}", f"user-{run}"
a2, u2, a3, u3 = f"a2-{run}", f"u2-{run}", f"a3-{run}", f"u3-{run}"
errors = []
client = Posthog(
    token,
    host=host,
    gzip=gzip == "1",
    sync_mode=True,
    max_retries=0,
    disable_geoip=True,
    enable_local_evaluation=False,
    on_error=lambda e, batch: errors.append(str(e)),
    capture_mode=os.environ.get("SLUICE_CAPTURE_MODE", "v0"),
    capture_compression=os.environ.get("SLUICE_CAPTURE_COMPRESSION") or None,
)

STEPS = {
    "set": lambda: client.capture(
        "settings", distinct_id=a2, properties={"$set": {"plan": "free", "color": "red"}, "$set_once": {"source": "ads"}}
    ),
    "update": lambda: client.capture(
        "settings",
        distinct_id=a2,
        properties={"$set": {"plan": "pro"}, "$set_once": {"source": "other"}, "$unset": ["color"]},
    ),
    "identify": lambda: client.capture("$identify", distinct_id=u2, properties={"$anon_distinct_id": a2}),
    "later": lambda: client.capture("later", distinct_id=a2),
    "other": lambda: client.capture(
        "$identify", distinct_id=u3, properties={"$anon_distinct_id": a3, "$set": {"name": "other"}}
    ),
    # posthog-python: $create_alias from previous_id (u3) with alias u2.
    "alias": lambda: client.alias(previous_id=u3, distinct_id=u2),
    "dangerous": lambda: client.capture("$merge_dangerously", distinct_id=u3, properties={"alias": u2}),
    "personless": lambda: client.capture(
        "ghost", distinct_id=f"ghost-{run}", properties={"$process_person_profile": False, "$set": {"x": 1}}
    ),
}

if step is None:
    client.capture(
        "sdk test event", distinct_id=anon, properties={"run": run, "n": 1, "$set_once": {"first_seen_run": run}}
    )
    client.capture("$identify", distinct_id=user, properties={"$anon_distinct_id": anon, "$set": {"plan": "pro"}})
    client.alias(previous_id=anon, distinct_id=user)
    client.group_identify("company", f"acme-{run}", {"name": "Acme"}, distinct_id=user)
    client.capture("grouped", distinct_id=user, groups={"company": f"acme-{run}"}, properties={"run": run})
else:
    STEPS[step]()
client.flush()
client.shutdown()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
