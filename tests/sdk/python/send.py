"""Sends a fixed sequence of events with the real posthog-python client.

Usage: send.py HOST TOKEN RUN_ID GZIP(0|1)
Prints nothing; the test reads what arrived from Kafka.
"""
import sys

from posthog import Posthog

host, token, run, gzip = sys.argv[1:5]
anon, user = f"anon-{run}", f"user-{run}"
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
)
client.capture("sdk test event", distinct_id=anon, properties={"run": run, "n": 1, "$set_once": {"first_seen_run": run}})
client.capture("$identify", distinct_id=user, properties={"$anon_distinct_id": anon, "$set": {"plan": "pro"}})
client.alias(previous_id=anon, distinct_id=user)
client.group_identify("company", f"acme-{run}", {"name": "Acme"}, distinct_id=user)
client.capture("grouped", distinct_id=user, groups={"company": f"acme-{run}"}, properties={"run": run})
client.flush()
client.shutdown()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
