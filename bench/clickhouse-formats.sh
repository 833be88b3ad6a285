#!/usr/bin/env bash
# ClickHouse's side of the insert format: the same event rows (posthog-js sized
# properties) inserted as JSONEachRow and as RowBinary, and the server's CPU per row
# for each, from /proc of the local server (18.16) and from an embedded modern engine
# (chdb, in a process of its own). Into a Null table (parsing alone) and into the
# events table itself (parsing and writing parts). Prints figures; never fails on them.
#
#   bench/clickhouse-formats.sh   (BENCH_ROWS=20000 rows, BENCH_REPEATS=5 inserts each)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS="${BENCH_ROWS:-20000}"
REPEATS="${BENCH_REPEATS:-5}"

scripts/services.sh up >/dev/null
build_release
own_databases "formats$(date +%s)"
[ -x .venv/bin/python ] || { log "no .venv: run ./dev test once for the test tooling (chdb)"; exit 1; }

.venv/bin/python - "$CLICKHOUSE_URL" "$RUN" "$OUT" "$ROWS" "$REPEATS" \
  "${SLUICE_STATE_DIR:-$ROOT/.sluice}/clickhouse.pid" <<'PY'
import json, os, re, subprocess, sys, urllib.parse, urllib.request, uuid

url, db, out, rows, repeats, pidfile = sys.argv[1:7]
rows, repeats = int(rows), int(repeats)
tick = os.sysconf("SC_CLK_TCK")

def q(sql, body=b"", **settings):
    params = urllib.parse.urlencode({"query": sql, **settings})
    with urllib.request.urlopen(urllib.request.Request(f"{url}/?{params}", data=body)) as r:
        return r.read()

def server_ticks():
    pid = open(pidfile).read().split()[0]
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15])  # utime stime cutime cstime

def props(i):
    return {
        "$os": "Mac OS X", "$os_version": "14.5.0", "$browser": "Chrome", "$device_type": "Desktop",
        "$current_url": f"https://app.example.com/dashboard/{i}?utm_source=newsletter", "$host": "app.example.com",
        "$pathname": f"/dashboard/{i}", "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) "
        "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36", "$browser_version": 126,
        "$browser_language": "en-US", "$screen_height": 1117, "$screen_width": 1728, "$viewport_height": 980,
        "$viewport_width": 1728, "$lib": "web", "$lib_version": "1.150.0", "$insert_id": f"{i:016x}",
        "$device_id": str(uuid.uuid4()), "$referrer": "https://www.google.com/", "$referring_domain": "www.google.com",
        "$session_id": str(uuid.uuid4()), "$window_id": str(uuid.uuid4()), "$pageview_id": str(uuid.uuid4()),
        "title": "Dashboard | \"Example\"", "$is_identified": False, "$ip": "203.0.113.7",
    }

def event_rows(legacy):
  t = "2024-05-01 10:00:00" if legacy else "2024-05-01 10:00:00.123456"
  lines = []
  for i in range(rows):
    lines.append(json.dumps({
        "uuid": str(uuid.uuid4()), "event": "$pageview", "properties": json.dumps(props(i)), "timestamp": t,
        "team_id": 1, "distinct_id": f"user-{i % 1000}", "elements_chain": "", "created_at": t, "captured_at": t,
        "person_id": str(uuid.uuid4()), "person_properties": json.dumps({"email": f"u{i % 1000}@example.com", "plan": "pro"}),
        "person_created_at": t, "person_mode": "full",
        "$group_0": "", "$group_1": "", "$group_2": "", "$group_3": "", "$group_4": "",
    }))
  return ("\n".join(lines) + "\n").encode()

version = q("SELECT version()").decode().strip()
q(f"INSERT INTO {db}.events FORMAT JSONEachRow", event_rows(int(version.split(".")[0]) < 20))
# Both bodies from the server itself, so they hold exactly the same rows.
bodies = {
    "JSONEachRow": q(f"SELECT * FROM {db}.events FORMAT JSONEachRow", output_format_json_quote_64bit_integers=0),
    "RowBinary": q(f"SELECT * FROM {db}.events FORMAT RowBinary"),
}
columns = q(f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'events' FORMAT TSV").decode().split()
names = ", ".join(f"`{c}`" for c in columns)
q(f"CREATE TABLE {db}.sink AS {db}.events ENGINE = Null")
for fmt, body in bodies.items():
    open(f"{out}/formats-{fmt}.bin", "wb").write(body)

print(f"ClickHouse {version}: {rows} event rows, body {len(bodies['JSONEachRow']) / rows:.0f} B/row as JSONEachRow, "
      f"{len(bodies['RowBinary']) / rows:.0f} B/row as RowBinary")
for table in ("sink", "events"):
    for fmt, body in bodies.items():
        best = None
        for _ in range(repeats):
            before = server_ticks()
            q(f"INSERT INTO {db}.{table} ({names}) FORMAT {fmt}", body)
            used = (server_ticks() - before) / tick
            best = used if best is None else min(best, used)
        print(f"  local server, into {'a Null table' if table == 'sink' else 'events (MergeTree)'}: {fmt:<11} "
              f"{best * 1e6 / rows:6.2f} µs CPU per row (least of {repeats})")

# The modern engine: chdb in a child process, its own CPU time around each insert, on
# the same table (its time columns DateTime64(6, 'UTC'), as the modern DDL has them).
ddl = q(f"SHOW CREATE TABLE {db}.events FORMAT TSVRaw").decode().replace(f"{db}.events", "m.events")
ddl = re.sub(r"\bDateTime\b(?!64)", "DateTime64(6, 'UTC')", ddl)
open(f"{out}/formats-ddl.sql", "w").write(ddl)
open(f"{out}/formats-modern.jsonl", "wb").write(event_rows(False))
probe = r'''
import os, sys, time
from chdb import session
out, names, repeats, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = session.Session()
s.query("CREATE DATABASE m")
s.query(open(f"{out}/formats-ddl.sql").read())
s.query("CREATE TABLE m.sink AS m.events ENGINE = Null")
s.query(f"INSERT INTO m.events FROM INFILE '{out}/formats-modern.jsonl' FORMAT JSONEachRow")
for fmt in ("JSONEachRow", "RowBinary"):
    settings = " SETTINGS output_format_json_quote_64bit_integers = 0" if fmt == "JSONEachRow" else ""
    body = s.query(f"SELECT * FROM m.events{settings}", fmt).bytes()
    open(f"{out}/formats-{fmt}.bin", "wb").write(body)
s.query("TRUNCATE TABLE m.events")
print("modern engine " + s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"') + " (chdb)")
for table in ("sink", "events"):
    for fmt in ("JSONEachRow", "RowBinary"):
        best = None
        for _ in range(repeats):
            before = time.process_time()
            s.query(f"INSERT INTO m.{table} ({names}) FROM INFILE '{out}/formats-{fmt}.bin' FORMAT {fmt}")
            used = time.process_time() - before
            best = used if best is None else min(best, used)
        where = "a Null table" if table == "sink" else "events (MergeTree)"
        print(f"  modern engine, into {where}: {fmt:<11} {best * 1e6 / rows:6.2f} µs CPU per row (least of {repeats})")
'''
sys.stdout.flush()
subprocess.run([sys.executable, "-c", probe, out, names, str(repeats), str(rows)], check=True)
PY
