"""Applies Sluice's modern ClickHouse DDL to an embedded modern ClickHouse (chdb),
inserts rows as ingest formats them, and prints what a query reads back, as JSON.

Usage: check.py DDL_FILE ROWS_DIR   (ROWS_DIR holds TABLE.jsonl files)
"""
import json
import os
import sys

from chdb import session

ddl_file, rows_dir = sys.argv[1:3]
s = session.Session()
for statement in open(ddl_file).read().split(";\n"):
    if statement.strip():
        s.query(statement)
out = {"version": s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')}
for name in sorted(os.listdir(rows_dir)):
    table = name.removesuffix(".jsonl")
    rows = open(os.path.join(rows_dir, name)).read()
    s.query(f"INSERT INTO {table} FORMAT JSONEachRow {rows}")
    result = s.query(f"SELECT * FROM {table} FINAL FORMAT JSONEachRow").bytes().decode()
    types = s.query(f"SELECT name, type FROM system.columns WHERE database || '.' || table = '{table}' FORMAT JSONEachRow").bytes().decode()
    out[table] = {"rows": [json.loads(l) for l in result.splitlines() if l], "types": {c["name"]: c["type"] for c in map(json.loads, types.splitlines()) if c}}
print(json.dumps(out))
