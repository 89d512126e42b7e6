#!/usr/bin/env python3
"""Scale in documents with real node processes: the README's three-process figures.

Makes a 3-node mesh with `concordant init` in a temporary directory, starts three
`concordant node` processes on 127.0.0.1, writes DOCS one-write documents through the HTTP
API, then reports each process's resident memory (once converged, and again after a full
`GET /v1/docs` on every node), whether the nodes' fingerprints agree, the idle peer traffic
per node, and the catch-up of a node SIGKILLed while NEW writes go to NEW new documents
(until it serves, and until it holds every document), and the resident memory at the end
after another full listing on every node. Prints one JSON line at the end. Every wait is
bounded.

    cargo build --release
    python3 scripts/process_scale.py --docs 204000 --new 20000
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

BASE_PORT = 7300


def request(port, token, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    c.request(method, path, body, headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def write_docs(port, token, prefix, start, count, errors):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    for i in range(start, start + count):
        body = json.dumps({"ops": [{"op": "set", "path": ["v"], "value": i}]})
        c.request("POST", f"/v1/docs/{prefix}-{i:07d}/ops", body, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            errors.append(r.status)
            return


def write_spread(ports, token, prefix, total):
    """`total` writes over 3 clients per port, each to a document of its own."""
    clients = [p for p in ports for _ in range(3)]
    per = total // len(clients)
    errors = []
    threads = [
        threading.Thread(target=write_docs, args=(p, token, prefix, k * per, per, errors))
        for k, p in enumerate(clients)
    ]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"writes refused: HTTP {errors[0]}")
    return per * len(clients), time.time() - started


def status(port, token):
    code, data = request(port, token, "GET", "/v1/status")
    return json.loads(data) if code == 200 else None


def sent_bytes(port, token):
    _, data = request(port, token, "GET", "/metrics")
    return sum(
        float(line.split()[-1])
        for line in data.decode().splitlines()
        if line.startswith("concordant_peer_bytes_sent_total")
    )


def list_all(port, token):
    """A full `GET /v1/docs` (the unpaged listing, read to its end): the number of documents."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", "/v1/docs", headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        sys.exit(f"GET /v1/docs on port {port}: HTTP {r.status}")
    return len(json.loads(data))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_for(what, check, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if check():
                return time.time()
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=204000)
    ap.add_argument("--new", type=int, default=20000)
    ap.add_argument("--binary", default="target/release/concordant")
    ap.add_argument("--idle-secs", type=float, default=20.0)
    ap.add_argument("--base-port", type=int, default=BASE_PORT,
                    help="peers listen from BASE+1, APIs from BASE+1001 (default %(default)s)")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="concordant-scale-")
    subprocess.run(
        [binary, "init", "--nodes", "3", "--topology", "mesh", "--dir", work,
         "--base-port", str(args.base_port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    config = os.path.join(work, "cluster.toml")
    token = open(config).read().split('token = "')[1].split('"')[0]
    ports = [args.base_port + 1001 + i for i in range(3)]
    procs = {}

    def start(i):
        log = open(os.path.join(work, f"n{i + 1}.log"), "a")
        procs[i] = subprocess.Popen(
            [binary, "node", "--config", config, "--id", f"n{i + 1}"],
            stdout=log, stderr=log,
        )

    try:
        for i in range(3):
            start(i)
        for p in ports:
            wait_for("the nodes to serve", lambda p=p: request(p, token, "GET", "/v1/health")[0] == 200, 30)
        written, took = write_spread(ports, token, "doc", args.docs)
        print(f"{written} documents written in {took:.1f} s", file=sys.stderr)
        wait_for("convergence", lambda: all(status(p, token)["docs"] == written for p in ports), 600)
        rss = [rss_mib(procs[i].pid) for i in range(3)]
        fingerprints = [status(p, token)["fingerprint"] for p in ports]
        listed = [list_all(p, token) for p in ports]
        rss_listed = [rss_mib(procs[i].pid) for i in range(3)]
        print(
            f"resident MiB {rss} converged, {rss_listed} after GET /v1/docs of {listed} "
            f"documents; fingerprints {fingerprints}",
            file=sys.stderr,
        )
        time.sleep(2)
        before = [sent_bytes(p, token) for p in ports]
        time.sleep(args.idle_secs)
        after = [sent_bytes(p, token) for p in ports]
        idle = [(b - a) / args.idle_secs for a, b in zip(before, after)]
        print(f"idle B/s {idle}", file=sys.stderr)

        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait(timeout=10)
        new, took = write_spread(ports[:2], token, "new", args.new)
        print(f"{new} new documents written in {took:.1f} s with n3 down", file=sys.stderr)
        target = status(ports[0], token)["docs"]
        began = time.time()
        start(2)
        serving = wait_for("n3 to serve", lambda: request(ports[2], token, "GET", "/v1/health")[0] == 200, 60)
        caught_up = wait_for("n3 to catch up", lambda: status(ports[2], token)["docs"] == target, 600)
        listed_end = [list_all(p, token) for p in ports]
        rss_end = [rss_mib(procs[i].pid) for i in range(3)]
        print(f"resident MiB {rss_end} after the catch-up and GET /v1/docs of {listed_end}", file=sys.stderr)
        result = {
            "docs": written,
            "rss_mib": [round(r, 1) for r in rss],
            "rss_after_listing_mib": [round(r, 1) for r in rss_listed],
            "listed": listed,
            "fingerprints_agree": len(set(fingerprints)) == 1,
            "rss_end_mib": [round(r, 1) for r in rss_end],
            "idle_bytes_per_s": [round(x, 1) for x in idle],
            "new_docs": new,
            "restart_s": round(serving - began, 3),
            "catchup_s": round(caught_up - began, 3),
        }
        print(json.dumps(result))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
