"""Applies Sluice's modern ClickHouse DDL to an embedded modern ClickHouse (chdb),
inserts rows as ingest writes them (RowBinary), and prints what a query reads back,
as JSON.

Usage: check.py DDL_FILE ROWS_DIR
       check.py --parse DDL_FILE   (prints, as JSON, the statements the modern parser
                                    refuses, with why)
       check.py --create CONFIG DATA_DIR DDL_FILE
                                   (runs cluster DDL with the engine's config, which names
                                    a ZooKeeper, its macros and the cluster; chdb runs no
                                    distributed DDL, so ON CLUSTER is taken out; prints each
                                    table's engine and columns, as JSON)
  ROWS_DIR holds, per table, TABLE.sql (the insert's head, as ingest sends it) and
  TABLE.bin (the rows' bytes). Then changes a column's type and inserts again, to show
  what the server answers to a header that no longer matches.
"""
import json
import os
import sys

from chdb import session

if sys.argv[1] == "--create":
    import re
    config, data, ddl = sys.argv[2:5]
    s = session.Session(f"file:{data}?config-file={config}")
    databases = set()
    for statement in open(ddl).read().split(";\n"):
        if statement.strip():
            statement = re.sub(r" ON CLUSTER \w+", "", statement)
            s.query(statement)
            databases.update(re.findall(r"CREATE DATABASE IF NOT EXISTS (\w+)", statement))
    out = {}
    for db in databases:
        tables = s.query(f"SELECT name, engine_full FROM system.tables WHERE database = '{db}'", "JSONEachRow")
        for t in map(json.loads, tables.bytes().decode().splitlines()):
            columns = s.query(
                f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{t['name']}'", "JSONEachRow"
            )
            out[t["name"]] = {
                "engine": t["engine_full"],
                "columns": [[c["name"], c["type"]] for c in map(json.loads, columns.bytes().decode().splitlines())],
            }
    print(json.dumps(out), flush=True)
    # The embedded engine's teardown waits on its replicated tables' ZooKeeper session
    # and then aborts; what was asked is printed, so leave without it.
    os._exit(0)
s = session.Session()
if sys.argv[1] == "--parse":
    refused = []
    for statement in open(sys.argv[2]).read().split(";\n"):
        if statement.strip():
            try:
                s.query(f"EXPLAIN AST {statement}")
            except Exception as e:
                refused.append({"statement": statement, "error": str(e)})
    print(json.dumps(refused))
    sys.exit(0)
ddl_file, rows_dir = sys.argv[1:3]
for statement in open(ddl_file).read().split(";\n"):
    if statement.strip():
        s.query(statement)
out = {"version": s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')}
for name in sorted(os.listdir(rows_dir)):
    if not name.endswith(".sql"):
        continue
    table = name.removesuffix(".sql")
    head, fmt = open(os.path.join(rows_dir, name)).read().strip().rsplit(" FORMAT ", 1)
    s.query(f"{head} FROM INFILE '{os.path.join(rows_dir, table + '.bin')}' FORMAT {fmt}")
    engine = s.query(f"SELECT engine FROM system.tables WHERE database || '.' || name = '{table}'", "CSV").bytes().decode()
    final = "FINAL" if "Replacing" in engine else ""
    result = s.query(
        f"SELECT * FROM {table} {final} SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
    ).bytes().decode()
    types = s.query(f"SELECT name, type FROM system.columns WHERE database || '.' || table = '{table}' FORMAT JSONEachRow").bytes().decode()
    out[table] = {"rows": [json.loads(l) for l in result.splitlines() if l], "types": {c["name"]: c["type"] for c in map(json.loads, types.splitlines()) if c}}
# A column changed under ingest: the binary header's types no longer match the table's.
drift = "sluice_modern.person_distinct_ids"
s.query(f"ALTER TABLE {drift} MODIFY COLUMN is_deleted UInt64")
head, fmt = open(os.path.join(rows_dir, drift + ".sql")).read().strip().rsplit(" FORMAT ", 1)
try:
    s.query(f"{head} FROM INFILE '{os.path.join(rows_dir, drift + '.bin')}' FORMAT {fmt}")
    out["drift_error"] = None
except Exception as e:
    out["drift_error"] = str(e)
print(json.dumps(out))
