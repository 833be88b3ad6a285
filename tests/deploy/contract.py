"""Holds the Kubernetes manifests against the binaries they run, which no linter does.

Usage: contract.py BIN_DIR RENDERED.yaml [RENDERED.yaml ...] [--start]

For every container of every Deployment and Job in the rendered overlays:
  - its command is one of the binaries the image installs in /usr/local/bin;
  - every environment variable it sets is one the binary accepts (`--help` lists it, or
    it is a documented pass-through: KAFKA_PRODUCER_*, KAFKA_CONSUMER_*);
  - every `*_FILE` points into a mounted volume that provides that file;
  - ADDRESS binds all interfaces, on the port its probes and containerPort name;
With --start (for an overlay whose dependencies exist locally): the binary is started
with the container's command, args and environment (ConfigMap values resolved, Secret
files written with test values, service names mapped to the local servers); the Job
must exit 0, and each Deployment's container must answer its probes on the declared
path and port, then end within terminationGracePeriodSeconds of SIGTERM.

It checks itself first: a copy of the manifests with a variable the binary does not
know, and one with a probe on the wrong port, must each be caught.
"""
import copy
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

PASS_THROUGH = ("KAFKA_PRODUCER_", "KAFKA_CONSUMER_")
# What a test puts where the cluster's servers and secrets would be.
LOCAL = {
    "KAFKA_HOSTS": os.environ.get("KAFKA_HOSTS", "127.0.0.1:9092"),
    "database-url": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sluice"),
    "redis-url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
    "clickhouse-url": os.environ.get("CLICKHOUSE_URL", "http://127.0.0.1:8123"),
    "kafka-sasl-password": "contract-test-password",
}

_help_cache = {}


def accepted_settings(binary):
    """The environment variables `binary --help` names."""
    if binary not in _help_cache:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
        names = set(re.findall(r"env: ([A-Z][A-Z0-9_]*)", text))
        names |= set(re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_FILE)\b", text))
        _help_cache[binary] = names
    return _help_cache[binary]


def workloads(docs):
    for doc in docs:
        if doc.get("kind") in ("Deployment", "Job"):
            yield doc


def config_maps(docs):
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}


def container_env(container, docs):
    """The container's environment as the kubelet would build it (Secrets excluded)."""
    env = {}
    maps = config_maps(docs)
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(maps[ref["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = maps[ref["name"]][ref["key"]]
    return env


def mounted_files(pod, container):
    """{path in the container: (secret key or None)} for files volumes provide."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        secret = volume.get("secret")
        if secret:
            for item in secret.get("items", []):
                files[os.path.join(mount["mountPath"], item["path"])] = item["key"]
    return files


def declared_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_static(docs, bin_dir):
    """Problems found without starting anything, as strings."""
    problems = []
    for w in workloads(docs):
        name = f'{w["kind"]}/{w["metadata"]["name"]}'
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            command = c.get("command") or []
            if not command or os.path.dirname(command[0]) != "/usr/local/bin":
                problems.append(f"{name}: command {command} is not a binary the image installs in /usr/local/bin")
                continue
            binary = os.path.join(bin_dir, os.path.basename(command[0]))
            if not os.path.exists(binary):
                problems.append(f"{name}: {os.path.basename(command[0])} is not one of the built binaries")
                continue
            known = accepted_settings(binary)
            env = container_env(c, docs)
            for var in env:
                if var not in known and not var.startswith(PASS_THROUGH):
                    problems.append(f"{name}: {var} is not a setting {os.path.basename(binary)} accepts")
            files = mounted_files(pod, c)
            for var, value in env.items():
                if var.endswith("_FILE") and value not in files:
                    problems.append(f"{name}: {var}={value} is not a file any mounted volume provides")
            probes = [c[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in c]
            if w["kind"] == "Job":
                continue
            address = env.get("ADDRESS")
            if not address:
                problems.append(f"{name}: ADDRESS is not set (the binary's default listens on loopback only)")
                continue
            host, _, port = address.rpartition(":")
            if host not in ("0.0.0.0", "[::]"):
                problems.append(f"{name}: ADDRESS={address} does not listen on the pod's interfaces")
            if not probes:
                problems.append(f"{name}: no probes")
            for probe in probes:
                target = declared_port(c, probe["httpGet"]["port"])
                if target != int(port):
                    problems.append(
                        f'{name}: probe {probe["httpGet"]["path"]} on port {probe["httpGet"]["port"]} ({target}), '
                        f"but ADDRESS listens on {port}")
    return problems


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(container, pod, docs, files_dir):
    env = container_env(container, docs)
    files = mounted_files(pod, container)
    for var, value in list(env.items()):
        if var.endswith("_FILE") and value in files:
            local_path = os.path.join(files_dir, files[value])
            with open(local_path, "w") as f:
                f.write(LOCAL[files[value]] + "\n")
            env[var] = local_path
    env["KAFKA_HOSTS"] = LOCAL["KAFKA_HOSTS"]
    return env


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def check_running(docs, bin_dir, log_dir):
    """Starts every workload as its manifest says; returns problems as strings."""
    problems = []
    files_dir = tempfile.mkdtemp(prefix="sluice-contract-files-")
    ordered = sorted(workloads(docs), key=lambda w: w["kind"] != "Job")  # the migration first
    for w in ordered:
        name = f'{w["kind"]}/{w["metadata"]["name"]}'
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            binary = os.path.join(bin_dir, os.path.basename(c["command"][0]))
            env = local_env(c, pod, docs, files_dir)
            argv = [binary] + c["command"][1:] + c.get("args", [])
            log_path = os.path.join(log_dir, f'{w["metadata"]["name"]}.log')
            environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
            if w["kind"] == "Job":
                with open(log_path, "w") as log:
                    done = subprocess.run(argv, env=environment, stdout=log, stderr=log, timeout=120)
                if done.returncode != 0:
                    problems.append(f"{name}: exited {done.returncode} (log {log_path})")
                continue
            declared = int(env["ADDRESS"].rpartition(":")[2])
            port = free_port()
            environment["ADDRESS"] = f"127.0.0.1:{port}"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(argv, env=environment, stdout=log, stderr=log)
            try:
                for kind in ("livenessProbe", "readinessProbe"):
                    path = c[kind]["httpGet"]["path"]
                    deadline = time.time() + 60
                    status = None
                    while time.time() < deadline and proc.poll() is None:
                        status = get(f"http://127.0.0.1:{port}{path}")
                        if status == 200:
                            break
                        time.sleep(0.2)
                    if status != 200:
                        problems.append(f"{name}: {kind} {path} (port {declared} in the manifest) answered {status} "
                                        f"(log {log_path})")
                grace = pod.get("terminationGracePeriodSeconds", 30)
                started = time.time()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                    print(f"contract: {name}: probes answered; exited {proc.returncode} "
                          f"{time.time() - started:.1f} s after SIGTERM (grace {grace} s)")
                except subprocess.TimeoutExpired:
                    problems.append(f"{name}: still running {grace} s (terminationGracePeriodSeconds) after SIGTERM")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return problems


def self_test(docs, bin_dir):
    """The checks must catch what they are for; returns problems with the checks."""
    failures = []
    capture = next(w for w in workloads(docs) if w["metadata"]["name"] == "sluice-capture")
    unknown = copy.deepcopy(docs)
    for w in workloads(unknown):
        if w["metadata"]["name"] == "sluice-capture":
            w["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "CAPTURE_NO_SUCH_SETTING", "value": "1"})
    if not any("CAPTURE_NO_SUCH_SETTING is not a setting" in p for p in check_static(unknown, bin_dir)):
        failures.append("a variable the binary does not know was not caught")
    wrong_port = copy.deepcopy(docs)
    for w in workloads(wrong_port):
        if w["metadata"]["name"] == "sluice-capture":
            w["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 9999
    if not any("/_readiness on port 9999" in p for p in check_static(wrong_port, bin_dir)):
        failures.append("a probe on the wrong port was not caught")
    assert capture  # the self-test needs the capture Deployment to mutate
    return failures


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    start = "--start" in sys.argv
    bin_dir, rendered = args[0], args[1:]
    problems = []
    for path in rendered:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        failures = self_test(docs, bin_dir)
        problems += [f"{path}: self-test: {p}" for p in failures]
        problems += [f"{path}: {p}" for p in check_static(docs, bin_dir)]
        if start:
            log_dir = tempfile.mkdtemp(prefix="sluice-contract-")
            problems += [f"{path}: {p}" for p in check_running(docs, bin_dir, log_dir)]
        print(f"contract: {path}: {len(list(workloads(docs)))} workloads checked")
    for p in problems:
        print(f"contract: FAIL {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
