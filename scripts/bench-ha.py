#!/usr/bin/env python3
"""The replication benchmark of docs/benchmarks.md ("Replication"): produce throughput and latency of one broker
group on this machine, in one run, for
  - a master alone (async flush, no HA listener),
  - a master with one slave, async replication,
  - a master with one slave, sync replication (a send waits until the slave holds it),
each driven by the same `comet bench produce` workloads (1 KiB bodies: 1 in flight, unbatched 64 in flight,
batch 64 with 8 in flight). The target: sync replication costs <= 30 % of the async throughput at batch 64.

Usage: scripts/bench-ha.py [--secs 10] [--size 1024] [--out FILE]
Servers listen on 127.0.0.1 free ports; data lives in a temp dir removed at the end.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_broker", os.path.join(HERE, "bench-broker.py"))
bb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bb)

SECRET = "bench-ha-secret-0123456789"


def workloads(size, secs):
    """bench-broker.py's matrix without its batch-1000 row: 1 in flight, unbatched 64, batch 64 with 8 in flight."""
    return [(label, args) for label, args in bb.workloads(size, secs) if "batch 1000" not in label]


def group(servers, workdir, tag, replication, size, secs, results):
    """Starts a NameServer, a master and (unless replication is None) a slave; runs the workloads."""
    data = os.path.join(workdir, tag.replace(" ", "-"))
    os.makedirs(data)
    ns, ns_out = servers.start(
        f"{tag}-nameserver",
        [os.path.join(bb.BIN, "comet-nameserver")],
        {"COMET_NAMESERVER_LISTEN": "127.0.0.1:0", "COMET_NAMESERVER_KV_CONFIG_PATH": os.path.join(data, "kv.json"),
         "COMET_LOG_LEVEL": "warn", "COMET_METRICS_LISTEN": "127.0.0.1:0"},
    )
    namesrv = bb.wait_for(ns_out, "listening", ns, "comet-nameserver")
    common = {"COMET_BROKER_NAMESERVER_ADDRESSES": namesrv, "COMET_LOG_LEVEL": "warn",
              "COMET_METRICS_LISTEN": "127.0.0.1:0", "COMET_STORE_FLUSH_MODE": "async"}
    master_env = {**common, "COMET_BROKER_LISTEN": f"127.0.0.1:{bb.free_port()}",
                  "COMET_STORE_DIR": os.path.join(data, "master")}
    if replication:
        master_env.update({"COMET_HA_LISTEN": "127.0.0.1:0", "COMET_HA_SECRET": SECRET,
                           "COMET_HA_REPLICATION": replication})
    master, master_out = servers.start(f"{tag}-master", [os.path.join(bb.BIN, "comet-broker")], master_env)
    bb.wait_for(master_out, "listening on", master, "comet-broker (master)")
    slave = None
    if replication:
        ha = bb.wait_for(master_out, "HA listening on", master, "comet-broker (master HA)")
        slave, slave_out = servers.start(
            f"{tag}-slave",
            [os.path.join(bb.BIN, "comet-broker")],
            {**common, "COMET_BROKER_LISTEN": f"127.0.0.1:{bb.free_port()}", "COMET_BROKER_BROKER_ID": "1",
             "COMET_STORE_DIR": os.path.join(data, "slave"), "COMET_HA_MASTER_ADDRESS": ha,
             "COMET_HA_SECRET": SECRET},
        )
        bb.wait_for(slave_out, "listening on", slave, "comet-broker (slave)")
    time.sleep(1.0)  # registrations, and the slave's handshake
    print(f"{tag}: NameServer {namesrv}, master pid {master.pid}" + (f", slave pid {slave.pid}" if slave else ""),
          file=sys.stderr)
    for label, args in workloads(size, secs):
        bb.bench(namesrv, "produce", ["--topic", f"bench-{tag.replace(' ', '-')}", *args], results, f"{tag}: {label}")
    for proc in (slave, master, ns):
        if proc is not None:
            servers.stop(proc)


def table(results, size):
    by = {r["label"]: r for r in results}
    tags = ("no slave", "async replication", "sync replication")
    out = ["| workload | " + " | ".join(tags) + " | sync / async |", "|---|---|---|---|---|"]

    def cell(r):
        if r is None:
            return "-"
        return f"{r['msgs_per_sec']:,.0f}/s (p50 {r['p50_us']} µs, p99 {r['p99_us']} µs)"

    for label, _ in workloads(size, 1):
        rs = [by.get(f"{t}: {label}") for t in tags]
        a, s = rs[1], rs[2]
        ratio = f"{s['msgs_per_sec'] / a['msgs_per_sec']:.2f}×" if a and s and a["msgs_per_sec"] else "-"
        out.append(f"| {label} | " + " | ".join(cell(r) for r in rs) + f" | {ratio} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secs", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--out")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="comet-bench-ha-")
    servers = bb.Servers(workdir)
    results = []
    try:
        for tag, replication in (("no slave", None), ("async replication", "async"), ("sync replication", "sync")):
            group(servers, workdir, tag, replication, args.size, args.secs, results)
    finally:
        servers.stop_all()
    out = args.out or os.path.join(tempfile.gettempdir(), "bench-ha.jsonl")
    with open(out, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"raw results: {out}", file=sys.stderr)
    print(table(results, args.size))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
