"""The chaos run: many capture and ingest processes, real SDK traffic, faults on a seeded
schedule, then a reconciliation of every event sent.

Run it through `./dev chaos [SECONDS]` (which builds, starts the shared servers and the
tooling first). It starts a broker of its own (Tansu on its durable sqlite engine, so a
broker restart keeps every topic), 2 sluice-capture and 3 sluice-ingest per lane (main,
overflow, historical) over 8 partitions, drives posthog-python and posthog-node traffic
(identify and $set mixed in, one thread of historical imports, some hot keys that capture
moves to the overflow lane) and raw messages that must be dead-lettered, while it
injects, in a seeded order with every kind at least once:
  ingest kill -9, ingest SIGTERM, capture kill -9, broker restart (kill -9 of Tansu),
  Postgres restart, ClickHouse restart, Redis restart (through scripts/services.sh,
  only for servers that script started), and a proxy cutting ClickHouse for 20 s.
At the end it waits for every lane to catch up and prints a table: sent, acknowledged,
found exactly once in ClickHouse (FINAL), dead-lettered, LOST (acknowledged, in
neither), duplicates under FINAL, duplicate rows before merge, persons check (every
distinct id on one person, every identify merged, and the same persons as one ingest
process per lane makes when it replays the same topics from the start into a database of
its own), max lag, peak RSS per process kind. It exits non-zero when anything was lost or
duplicated under FINAL, or a person check failed.

Settings (environment): CHAOS_SECONDS (traffic duration, 120), CHAOS_RATE (events/s over
all SDK clients, 400), CHAOS_SEED, CHAOS_BIN (binaries), CHAOS_OUT (work dir),
CHAOS_COMPARE_SINGLE (0 skips the single-process replay).
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid as uuidlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CHAOS_BIN", os.path.expanduser("~/.cache/sluice/target/release"))
SECONDS = int(os.environ.get("CHAOS_SECONDS", "120"))
RATE = int(os.environ.get("CHAOS_RATE", "400"))
SEED = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
OUT = os.environ.get("CHAOS_OUT", f"/tmp/sluice-chaos-{os.getpid()}")
CLICKHOUSE = os.environ.get("CLICKHOUSE_URL", "http://127.0.0.1:8123")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sluice")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
PARTITIONS = 8
LANES = {"main": "events_plugin_ingestion", "overflow": "events_plugin_ingestion_overflow",
         "historical": "events_plugin_ingestion_historical"}
TOPICS = list(LANES.values()) + ["session_recording_snapshot_item_events",
                                 "session_recording_snapshot_item_overflow", "events_dead_letter_queue"]
DLQ = "events_dead_letter_queue"
BROKER_STORAGE = os.environ.get("CHAOS_BROKER_STORAGE", "sqlite")
# How long the single-process replay may take to catch up before the comparison is
# reported as not made.
REPLAY_SECONDS = int(os.environ.get("CHAOS_REPLAY_SECONDS", "600"))

rng = random.Random(SEED)
started_at = time.time()


def say(msg):
    print(f"[chaos {time.time() - started_at:7.1f}s] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port, seconds, what):
    deadline = time.time() + seconds
    while not answers(port):
        if time.time() > deadline:
            raise SystemExit(f"{what} did not answer on {port} within {seconds} s")
        time.sleep(0.1)


def clickhouse(sql):
    req = urllib.request.Request(CLICKHOUSE, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- processes -------------------------------------------------------------------------
class Proc:
    """One process this run started; stopped only by its own pid."""

    peaks = {}

    def __init__(self, kind, name, argv, env, port=None, cwd=None):
        self.kind, self.name, self.argv, self.env, self.port, self.cwd = kind, name, argv, env, port, cwd
        self.log = open(os.path.join(OUT, f"{name}.log"), "ab")
        self.p = None
        self.start()

    def start(self):
        self.p = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                  cwd=self.cwd, preexec_fn=die_with_parent)

    def sample(self):
        if self.p and self.p.poll() is None:
            Proc.peaks[self.kind] = max(Proc.peaks.get(self.kind, 0), peak_rss_kib(self.p.pid))

    def stop(self, sig, wait=30):
        self.sample()
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(wait)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None

    def restart(self, sig=signal.SIGKILL):
        code = self.stop(sig)
        self.start()
        return code


PROCS = []
NODES = []


def die_with_parent():
    """In the child: SIGKILL when the harness dies, however it dies, so a crashed run
    leaves no processes behind (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def stop_all():
    for n in NODES:
        if n.poll() is None:
            n.kill()
    for proc in PROCS:
        if proc.p and proc.p.poll() is None:
            proc.sample()
            proc.p.terminate()
    for proc in PROCS:
        try:
            proc.p.wait(30)
        except Exception:
            proc.p.kill()


# --- a TCP proxy that can be cut --------------------------------------------------------
class Proxy:
    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.cut_until = 0.0
        self.conns = []
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(256)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.server.accept()
            if time.time() < self.cut_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, seconds):
        self.cut_until = time.time() + seconds
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


# --- setup ------------------------------------------------------------------------------
def tansu_path():
    return shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")


def start_broker():
    port = free_port()
    # Tansu opens a sqlite database relative to its working directory. The memory engine
    # (CHAOS_BROKER_STORAGE=memory) is for load: it loses everything on a restart, so
    # broker restarts are then left out of the schedule.
    engine = "memory://tansu/" if BROKER_STORAGE == "memory" else "sqlite://tansu.db"
    argv = [tansu_path(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", engine]
    broker = Proc("broker", "tansu", argv, dict(os.environ), cwd=OUT)
    PROCS.append(broker)
    wait_port(port, 30, "tansu")
    for t in TOPICS:
        subprocess.run([tansu_path(), "topic", "create", t, "--broker", f"tcp://127.0.0.1:{port}",
                        "--partitions", str(PARTITIONS)], check=False, capture_output=True)
    return broker, port


def base_env(kafka_port, database):
    env = dict(os.environ)
    env.update({
        "KAFKA_HOSTS": f"127.0.0.1:{kafka_port}",
        "CLICKHOUSE_DATABASE": database,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"chaos-{SEED}/",
        "LOG_FORMAT": "json",
        "RUST_LOG": "info",
    })
    return env


def services(*args):
    return subprocess.run([os.path.join(ROOT, "scripts", "services.sh"), *args], capture_output=True, text=True)


# --- traffic ----------------------------------------------------------------------------
def record_python_acks():
    """Every posthog-python client of this process records the uuids of the requests
    that got their 200 (the SDK retries the others)."""
    import posthog.consumer

    original = posthog.consumer.batch_post

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        with ACKED_LOCK:
            for e in kwargs.get("batch", []):
                ACKED.add(str(e.get("uuid")))
        return result

    posthog.consumer.batch_post = recording


ACKED, ACKED_LOCK, SENT = set(), threading.Lock(), []


def python_traffic(host, token, prefix, count, rate, historical):
    """posthog-python in its normal (queued, retrying) mode."""
    from posthog import Posthog

    client = Posthog(token, host=host, gzip=True, max_retries=10, flush_at=50, flush_interval=0.2,
                     disable_geoip=True, historical_migration=historical, max_queue_size=100000, timeout=10)
    begin = time.time()
    for i in range(count):
        k = i % 100
        anon, user = f"{prefix}-anon-{k}", f"{prefix}-user-{k}"
        u = str(uuidlib.uuid4())
        SENT.append(u)
        if k % 10 == 5 and 100 <= i < 200:
            client.capture("$identify", distinct_id=user, uuid=u, properties={"$anon_distinct_id": anon})
        elif k < 3 and not historical:
            # hot keys: far above capture's per-key rate, so they go to the overflow lane
            client.capture("chaos hot", distinct_id=f"{prefix}-hot-{k}", uuid=u, properties={"i": i})
        else:
            client.capture("chaos python", distinct_id=anon, uuid=u, properties={"i": i, "$set": {"last": i}})
        wait = begin + (i + 1) / rate - time.time()
        if wait > 0:
            time.sleep(wait)
    client.flush()
    client.shutdown()


def merges_of(prefix, count, python):
    """The (anon, user) pairs the traffic of one client identified."""
    ks = sorted({i % 100 for i in range(100, min(count, 200)) if (i % 100) % 10 == (5 if python else 0)})
    return [(f"{prefix}-anon-{k}", f"{prefix}-user-{k}") for k in ks]


def inject_dead_letters(kafka_port, token, n):
    """Messages capture would never produce, straight into the main topic: they must end
    in the dead-letter topic. Their uuids are returned."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{kafka_port}", "enable.idempotence": True,
                         "log_level": 2})
    uuids = []
    for i in range(n):
        u = str(uuidlib.uuid4())
        uuids.append(u)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        value = json.dumps({"uuid": u, "distinct_id": f"bad-{i}", "ip": "127.0.0.1", "data": "{not json",
                            "now": now, "token": token, "event": "bad"})
        producer.produce(LANES["main"], value=value.encode(), key=f"{token}:bad-{i}".encode())
    producer.flush(30)
    return uuids


def dead_lettered(kafka_port):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": f"127.0.0.1:{kafka_port}", "group.id": f"chaos-reader-{SEED}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 2})
    found = set()
    meta = c.list_topics(DLQ, timeout=10).topics[DLQ]
    parts = [TopicPartition(DLQ, p, 0) for p in meta.partitions]
    ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
    c.assign(parts)
    done = {p: ends[p] == 0 for p in ends}
    deadline = time.time() + 60
    while not all(done.values()) and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        found.update(re.findall(r'"uuid"\s*:\s*"([0-9a-f-]{36})"', (m.value() or b"").decode(errors="replace")))
        if m.offset() + 1 >= ends[m.partition()]:
            done[m.partition()] = True
    c.close()
    return found


def lag(kafka_port, group_prefix="sluice-ingest-"):
    """Messages not yet committed by each lane's group, summed over partitions.

    Read through the admin API (OffsetFetch only): a consumer carrying the lanes' group id,
    even one that never subscribes, kept those groups rebalancing on Tansu, so the lanes
    never caught up while the harness watched them. Each probe runs in a process of its
    own: librdkafka's admin client aborted the whole harness twice
    (`rd_kafka_enq_once_del_source_return: Assertion eonce->refcnt > 0`), and a client
    kept across broker restarts went stale."""
    probe = subprocess.run([sys.executable, os.path.abspath(__file__), "--lag", str(kafka_port), group_prefix],
                           capture_output=True, text=True, timeout=90)
    if probe.returncode != 0:
        raise RuntimeError(f"lag probe failed ({probe.returncode}): {probe.stderr.strip()[-300:]}")
    return json.loads(probe.stdout)


def lag_of(kafka_port, group_prefix):
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka_port}", "log_level": 2})
    reader = watermark_reader(kafka_port)
    total = {}
    for lane, topic in LANES.items():
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        request = ConsumerGroupTopicPartitions(f"{group_prefix}{lane}", parts)
        answer = admin.list_consumer_group_offsets([request], request_timeout=10)
        committed = list(answer.values())[0].result(timeout=15).topic_partitions
        n = 0
        for p in committed:
            high = reader.get_watermark_offsets(TopicPartition(topic, p.partition), timeout=10)[1]
            # Tansu 0.6's memory engine can report the high watermark below the log end,
            # so a group can be past it; the tail is waited for below, by ClickHouse
            # settling.
            n += max(0, high - max(p.offset, 0))
        total[lane] = n
    return total


def watermark_reader(kafka_port):
    """Watermarks are read through a consumer; it carries a group id no lane uses and never joins it."""
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": f"127.0.0.1:{kafka_port}", "group.id": f"chaos-watermarks-{SEED}",
                     "enable.auto.commit": False, "log_level": 2})


class BrokerWatch:
    """Tansu 0.6's sqlite engine panics in its storage task when an idempotent producer
    presents an epoch it never stored (librdkafka bumps epochs after timeouts, which a
    broker restart causes); the broker then answers nothing until it is restarted. The
    run restarts it when that happens and reports how often: a broker bug, not a fault
    the schedule chose."""

    def __init__(self, broker):
        self.broker = broker
        self.seen = 0
        self.recoveries = 0

    def check(self, done_log):
        path = os.path.join(OUT, "tansu.log")
        try:
            with open(path, "rb") as f:
                f.seek(self.seen)
                new = f.read()
        except OSError:
            return
        self.seen += len(new)
        if b"panicked at" in new:
            self.broker.stop(signal.SIGKILL)
            time.sleep(1)
            self.broker.start()
            self.recoveries += 1
            with open(path, "rb") as f:
                f.seek(0, 2)
                self.seen = f.tell()
            done_log.append((round(time.time() - started_at, 1), "broker_recovered", "Tansu storage panicked; restarted"))
            say("broker storage panicked (Tansu bug); restarted it")


# --- faults -----------------------------------------------------------------------------
def plan_faults(duration):
    kinds = os.environ.get("CHAOS_FAULTS", "ingest_kill,ingest_term,capture_kill,broker_restart,postgres_restart,"
                           "clickhouse_restart,redis_restart,clickhouse_cut").split(",")
    if BROKER_STORAGE == "memory":
        kinds = [k for k in kinds if k != "broker_restart"]
    rng.shuffle(kinds)
    # every kind once, then more of the cheap ones while time is left
    n = max(len(kinds), duration // 6)
    cheap = [k for k in ["ingest_kill", "ingest_kill", "ingest_term", "capture_kill", "broker_restart"] if k in kinds]
    extra = [rng.choice(cheap or kinds) for _ in range(n - len(kinds))]
    faults = kinds + extra
    step = duration / (len(faults) + 1)
    return [(step * (i + 1) + rng.uniform(-step / 4, step / 4), kind) for i, kind in enumerate(faults)]


def inject(kind, ingests, captures, broker, ch_proxy, done_log):
    if kind == "ingest_kill":
        victim = rng.choice(ingests)
        victim.restart(signal.SIGKILL)
        detail = victim.name
    elif kind == "ingest_term":
        victim = rng.choice(ingests)
        t = time.time()
        code = victim.restart(signal.SIGTERM)
        detail = f"{victim.name} exited {code} after {time.time() - t:.1f}s"
    elif kind == "capture_kill":
        victim = rng.choice(captures)
        victim.stop(signal.SIGKILL)
        time.sleep(rng.uniform(0.5, 2))
        victim.start()
        detail = victim.name
    elif kind == "broker_restart":
        how = os.environ.get("CHAOS_BROKER_STOP", "kill")
        broker.stop(signal.SIGTERM if how == "term" else signal.SIGKILL)
        time.sleep(rng.uniform(1, 3))
        broker.start()
        detail = f"{'SIGTERM' if how == 'term' else 'kill -9'}, started again"
        if os.environ.get("CHAOS_BROKER_RESTARTS_CAPTURE") == "1":
            for c in captures:
                c.restart(signal.SIGTERM)
            detail += "; captures restarted"
    elif kind == "clickhouse_cut":
        ch_proxy.cut(20)
        detail = "20 s"
    else:
        name = kind.split("_")[0]
        r = services("restart", name)
        detail = (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else f"exit {r.returncode}"
        if r.returncode != 0:
            detail = f"skipped: {detail}"
    done_log.append((round(time.time() - started_at, 1), kind, detail))
    say(f"fault {kind}: {detail}")


# --- main -------------------------------------------------------------------------------
def main():
    os.makedirs(OUT, exist_ok=True)
    say(f"seed {SEED}, {SECONDS} s at {RATE} events/s, work dir {OUT}")
    broker, kafka_port = start_broker()
    database = f"chaos_{SEED}"
    env = base_env(kafka_port, database)
    ch_port = int(CLICKHOUSE.rsplit(":", 1)[1].split("/")[0])
    ch_proxy = Proxy(ch_port)

    ingest_bin, capture_bin = os.path.join(BIN, "sluice-ingest"), os.path.join(BIN, "sluice-capture")
    subprocess.run([ingest_bin, "migrate"], env=env, check=True, capture_output=True)
    created = subprocess.run([ingest_bin, "teams", "create", "--name", f"chaos {SEED}"], env=env, check=True,
                             capture_output=True, text=True).stdout
    token = re.search(r"phc_[A-Za-z0-9]+", created).group(0)

    ingests = []
    for lane in LANES:
        for n in range(3):
            e = dict(env, LANE=lane, ADDRESS=f"127.0.0.1:{free_port()}", CLICKHOUSE_URL=f"http://127.0.0.1:{ch_proxy.port}",
                     KAFKA_SESSION_TIMEOUT_MS="6000", SHUTDOWN_DRAIN_TIMEOUT_MS="10000", RETRY_MAX_BACKOFF_MS="2000")
            ingests.append(Proc("ingest", f"ingest-{lane}-{n}", [ingest_bin], e))
    captures = []
    for n in range(2):
        port = free_port()
        e = dict(env, ADDRESS=f"127.0.0.1:{port}", OVERFLOW_PER_SECOND="2", OVERFLOW_BURST="20")
        captures.append(Proc("capture", f"capture-{n}", [capture_bin], e, port=port))
    PROCS.extend(ingests + captures)
    for c in captures:
        wait_port(c.port, 30, c.name)

    # Traffic: 3 posthog-python clients (one of them historical imports) and 2 posthog-node
    # processes, split over both captures.
    per_client = RATE // 5
    count = per_client * SECONDS
    outs, threads = [], []
    record_python_acks()
    for i, historical in enumerate([False, False, True]):
        host = f"http://127.0.0.1:{captures[i % 2].port}"
        t = threading.Thread(target=python_traffic, args=(host, token, f"py{i}", count, per_client, historical),
                             daemon=True)
        t.start()
        threads.append(t)
    node_dir = os.path.join(ROOT, "tests", "sdk", "node")
    for i in range(2):
        out = os.path.join(OUT, f"node-{i}.json")
        outs.append(out)
        host = f"http://127.0.0.1:{captures[(i + 1) % 2].port}"
        NODES.append(subprocess.Popen(["node", "chaos.mjs", host, token, f"js{i}", str(count), str(per_client), out],
                                      cwd=node_dir, stdout=open(os.path.join(OUT, f"node-{i}.log"), "wb"),
                                      stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
    merges = merges_of("py0", count, True) + merges_of("py1", count, True) + merges_of("py2", count, True) \
        + merges_of("js0", count, False) + merges_of("js1", count, False)

    faults, done = plan_faults(SECONDS), []
    watch = BrokerWatch(broker)
    bad = []
    max_lag = 0
    for at, kind in faults:
        while time.time() - started_at < at:
            time.sleep(0.5)
            watch.check(done)
            for p in PROCS:
                p.sample()
        if not bad and at > SECONDS / 3:
            bad = inject_dead_letters(kafka_port, token, 20)
            say(f"injected {len(bad)} messages that must be dead-lettered")
        inject(kind, ingests, captures, broker, ch_proxy, done)
    # The SDKs get a while to deliver what they hold, then what they did not is simply
    # not acknowledged.
    give_up = time.time() + 180
    while any(t.is_alive() for t in threads) or any(n.poll() is None for n in NODES):
        time.sleep(0.5)
        watch.check(done)
        if time.time() > give_up:
            for n in NODES:
                if n.poll() is None:
                    n.terminate()
                    n.wait(30)
            break
    say("traffic done; waiting for every lane to catch up")

    with ACKED_LOCK:
        sent, acked = list(SENT), set(ACKED)
    for out in outs:
        with open(out) as f:
            d = json.load(f)
        sent += d["sent"]
        acked |= set(d["acked"])
    deadline = time.time() + 600
    while True:
        watch.check(done)
        for p in PROCS:
            p.sample()
        try:
            lags = lag(kafka_port)
        except Exception as e:  # the broker may still be settling
            lags = {"error": str(e)}
        numbers = [v for v in lags.values() if isinstance(v, int)]
        if numbers:
            max_lag = max(max_lag, sum(numbers))
        if numbers and len(numbers) == len(LANES) and sum(numbers) == 0:
            break
        if time.time() > deadline:
            say(f"lanes did not catch up: {lags}")
            break
        time.sleep(2)

    settled, last = time.time() + 120, None
    while time.time() < settled:
        count = clickhouse(f"SELECT count() FROM {database}.events FORMAT TSV").strip()
        if count == last:
            break
        last = count
        time.sleep(5)
    rows = clickhouse(f"SELECT toString(uuid), count() FROM {database}.events FINAL GROUP BY uuid FORMAT TSV")
    final = {}
    for line in rows.splitlines():
        u, n = line.split("\t")
        final[u] = int(n)
    before_merge = int(clickhouse(f"SELECT count() - uniqExact(uuid) FROM {database}.events FORMAT TSV").strip())
    dead = dead_lettered(kafka_port)
    acked_ids = acked & set(sent)
    lost = sorted(u for u in acked_ids if u not in final and u not in dead)
    dup_final = sum(1 for n in final.values() if n > 1)
    bad_missing = [u for u in bad if u not in dead]

    # Persons: every distinct id on exactly one person; every identify merged; the same
    # persons as one process per lane makes of the same messages.
    persons_ok, persons_detail = True, []
    owner, groups = {}, set()
    try:
        owner, groups = person_groups(DATABASE_URL, token)
    except RuntimeError as e:
        persons_ok = False
        persons_detail.append(str(e))
    multi = [d for d, ps in owner.items() if len(ps) != 1]
    if multi:
        persons_ok = False
        persons_detail.append(f"{len(multi)} distinct ids on several persons")
    unmerged = [(a, u) for a, u in merges if not (owner.get(a) and owner.get(a) == owner.get(u))]
    if unmerged:
        persons_ok = False
        persons_detail.append(f"{len(unmerged)} of {len(merges)} identifies not merged, e.g. {unmerged[:3]}")
    same_as_single = "not compared (CHAOS_COMPARE_SINGLE=0)"
    if os.environ.get("CHAOS_COMPARE_SINGLE", "1") != "0":
        say("replaying every lane through one ingest process per lane, to compare persons")
        try:
            replayed = single_process_persons(env, ingest_bin, kafka_port, token)
            if replayed is None:
                # The broker, not Sluice: say so in the table rather than fail the run.
                raise TimeoutError(f"the replay did not catch up within {REPLAY_SECONDS} s")
            _, reference = replayed
            differ = groups ^ reference
            same_as_single = (f"same {len(groups)} persons" if not differ
                              else f"DIFFERENT: {len(groups - reference)} here, {len(reference - groups)} there")
            if differ:
                persons_ok = False
                persons_detail.append(f"persons differ from the single-process run ({len(differ)} groups)")
        except TimeoutError as e:
            same_as_single = f"not compared: {e}"
        except (RuntimeError, subprocess.CalledProcessError) as e:
            persons_ok = False
            same_as_single = f"FAILED: {e}"
            persons_detail.append(f"single-process run failed: {e}")

    stop_all()
    kinds = sorted({k for _, k, _ in done if k != "broker_recovered"})
    table = [
        ("seed", f"{SEED}"),
        ("traffic", f"{SECONDS} s, {RATE} events/s, 3 posthog-python + 2 posthog-node clients"),
        ("processes", "2 capture, 3 ingest per lane (main, overflow, historical), 8 partitions"),
        ("broker", f"Tansu 0.6, {BROKER_STORAGE} engine"),
        ("faults", f"{sum(1 for _, k, _ in done if k != 'broker_recovered')} ({', '.join(f'{k} x{sum(1 for _, x, _ in done if x == k)}' for k in kinds)})"),
        ("broker storage panics (Tansu bug), restarted", watch.recoveries),
        ("events sent", len(sent)),
        ("acknowledged (200)", len(acked_ids)),
        ("in ClickHouse exactly once (FINAL)", sum(1 for u in acked_ids if final.get(u) == 1)),
        ("in the dead-letter topic", f"{len(dead & set(bad))} of {len(bad)} injected"),
        ("LOST (acknowledged, in neither)", len(lost)),
        ("duplicates with FINAL", dup_final),
        ("duplicate rows before merge", before_merge),
        ("persons", "ok: every distinct id on one person, every identify merged" if persons_ok
         else "FAILED: " + "; ".join(persons_detail)),
        ("merges expected", len(merges)),
        ("persons vs a single-process replay", same_as_single),
        ("max lag (messages, all lanes)", max_lag),
    ] + [(f"peak RSS {k}", f"{v / 1024:.0f} MiB") for k, v in sorted(Proc.peaks.items())]
    width = max(len(k) for k, _ in table)
    print()
    for k, v in table:
        print(f"| {k.ljust(width)} | {v} |")
    print()
    for at, kind, detail in done:
        print(f"  {at:7.1f}s  {kind:<20} {detail}")
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump({"table": table, "faults": done, "lost": lost[:100]}, f, default=str)
    failed = lost or dup_final or not persons_ok or bad_missing
    if lost:
        print(f"lost, first ones: {lost[:10]}")
    if bad_missing:
        print(f"{len(bad_missing)} injected bad messages not dead-lettered")
    print("chaos: FAILED" if failed else "chaos: passed")
    return 1 if failed else 0


def person_groups(database_url, token):
    """The team's persons as sets of distinct ids, and each distinct id's persons."""
    q = ("SELECT d.distinct_id, d.person_id FROM person_distinct_ids d JOIN teams t ON t.id = d.team_id "
         f"WHERE t.api_token = '{token}'")
    r = subprocess.run(["psql", database_url, "-tA", "-c", q], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    owner, members = {}, {}
    for line in r.stdout.splitlines():
        if "|" in line:
            d, p = line.split("|")
            owner.setdefault(d, set()).add(p)
            members.setdefault(p, set()).add(d)
    return owner, {frozenset(m) for m in members.values()}


def single_process_persons(env, ingest_bin, kafka_port, token):
    """Replays every lane's topic, from the start, through one ingest process per lane
    into a database of its own, and returns its persons: the reference the many-process
    run must agree with."""
    name = f"chaos_{SEED}_single"
    base = DATABASE_URL.rsplit("/", 1)[0]
    admin = ["psql", DATABASE_URL, "-tA", "-c"]
    subprocess.run(admin + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)
    subprocess.run(admin + [f"CREATE DATABASE {name}"], check=True, capture_output=True)
    url = f"{base}/{name}"
    single = dict(env, DATABASE_URL=url, CLICKHOUSE_DATABASE=name, REDIS_KEY_PREFIX=f"chaos-{SEED}-single/")
    subprocess.run([ingest_bin, "migrate"], env=single, check=True, capture_output=True)
    subprocess.run([ingest_bin, "teams", "create", "--name", "single"], env=single, check=True, capture_output=True)
    subprocess.run(["psql", url, "-tA", "-c", f"UPDATE teams SET api_token = '{token}'"], check=True,
                   capture_output=True)
    procs = []
    for lane in LANES:
        e = dict(single, LANE=lane, ADDRESS=f"127.0.0.1:{free_port()}", KAFKA_GROUP_ID=f"chaos-single-{SEED}-{lane}")
        procs.append(Proc("ingest-single", f"ingest-single-{lane}", [ingest_bin], e))
    PROCS.extend(procs)
    deadline = time.time() + REPLAY_SECONDS
    caught_up = False
    while time.time() < deadline and not caught_up:
        time.sleep(2)
        try:
            lags = lag(kafka_port, f"chaos-single-{SEED}-")
        except Exception:  # noqa: BLE001 - the groups may not exist yet
            continue
        caught_up = len(lags) == len(LANES) and sum(lags.values()) == 0
    for p in procs:
        p.stop(signal.SIGTERM)
    if not caught_up:
        return None
    return person_groups(url, token)


def interrupted(signum, _frame):
    raise SystemExit(f"interrupted by signal {signum}")


if __name__ == "__main__" and sys.argv[1:2] == ["--lag"]:
    # One lag probe, in a process of its own (see `lag`).
    print(json.dumps(lag_of(int(sys.argv[2]), sys.argv[3])))
    sys.stdout.flush()
    os._exit(0)
elif __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupted)
    try:
        code = main()
    finally:
        stop_all()
    sys.stdout.flush()
    # SDK client threads that could not deliver would keep the interpreter alive.
    os._exit(code)
