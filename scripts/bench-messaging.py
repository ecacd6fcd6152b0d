#!/usr/bin/env python3
"""The messaging-semantics benchmark of docs/benchmarks.md ("Delayed and transactional messages"): one release
NameServer + broker (async flush), 1 KiB bodies, every workload beside plain sends from the same run:
  - produce, 1 and 64 in flight: plain, delayed (1 h, so nothing is delivered during the run: scheduled/s) and
    transactional (send + commit per message);
  - end to end at half and at all of the plain 64-in-flight maximum rate: plain, and delayed by 2 s (latency
    counted from the due time: how late the timer delivers; at the full rate, whether the timer schedules and
    delivers as fast as plain sends arrive).

Usage: scripts/bench-messaging.py [--secs 10] [--size 1024] [--out FILE]
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

DELAY_MS = 2000


def start(servers, workdir):
    """A NameServer and one async-flush broker; returns the NameServer address and the broker process."""
    ns, ns_out = servers.start(
        "nameserver",
        [os.path.join(bb.BIN, "comet-nameserver")],
        {"COMET_NAMESERVER_LISTEN": "127.0.0.1:0", "COMET_NAMESERVER_KV_CONFIG_PATH": os.path.join(workdir, "kv.json"),
         "COMET_LOG_LEVEL": "warn", "COMET_METRICS_LISTEN": "127.0.0.1:0"},
    )
    namesrv = bb.wait_for(ns_out, "listening", ns, "comet-nameserver")
    broker, broker_out = servers.start(
        "broker",
        [os.path.join(bb.BIN, "comet-broker")],
        {"COMET_BROKER_LISTEN": f"127.0.0.1:{bb.free_port()}", "COMET_BROKER_NAMESERVER_ADDRESSES": namesrv,
         "COMET_STORE_DIR": os.path.join(workdir, "store"), "COMET_STORE_FLUSH_MODE": "async",
         "COMET_LOG_LEVEL": "warn", "COMET_METRICS_LISTEN": "127.0.0.1:0"},
    )
    bb.wait_for(broker_out, "listening", broker, "comet-broker")
    time.sleep(0.5)  # first registration
    print(f"NameServer {namesrv}, broker pid {broker.pid}", file=sys.stderr)
    return namesrv, broker


def produce_rows(size, secs):
    """(label, kind, produce args) of the produce matrix."""
    common = ["--size", str(size), "--duration-secs", str(secs), "--warmup-secs", "2"]
    rows = []
    for inflight in (1, 64):
        base = [*common, "--concurrency", str(inflight)]
        rows += [
            (f"{inflight} in flight", "plain", base),
            (f"{inflight} in flight", "delayed", [*base, "--delay-ms", "3600000"]),
            (f"{inflight} in flight", "transactional", [*base, "--transactional"]),
        ]
    return rows


def run(namesrv, size, secs, results):
    for label, kind, args in produce_rows(size, secs):
        bb.bench(namesrv, "produce", ["--topic", f"bench-{kind}", *args], results, f"produce {kind}: {label}")
    peak = [r for r in results if r["label"] == "produce plain: 64 in flight"]
    top = int(peak[0]["msgs_per_sec"]) if peak else 10000
    e2e = ["--size", str(size), "--concurrency", "64", "--duration-secs", str(secs)]
    for rate in (top // 2, top):
        bb.bench(namesrv, "e2e", ["--topic", f"e2e-plain-{rate}", *e2e, "--rate", str(rate)], results,
                 f"e2e plain at {rate}/s")
        bb.bench(namesrv, "e2e", ["--topic", f"e2e-delayed-{rate}", *e2e, "--rate", str(rate), "--delay-ms",
                                  str(DELAY_MS)], results, f"e2e delayed {DELAY_MS} ms at {rate}/s")


def table(results, size):
    by = {r["label"]: r for r in results}

    def cell(r):
        if r is None:
            return "-"
        s = f"{r['msgs_per_sec']:,.0f}/s"
        if r.get("latency"):
            s += f" (p50 {r['p50_us']} µs, p99 {r['p99_us']} µs)"
        return s

    def ratio(r, base):
        return f"{r['msgs_per_sec'] / base['msgs_per_sec']:.2f}×" if r and base and base["msgs_per_sec"] else "-"

    out = [f"| {size} B workload | plain | delayed (scheduled) | delayed / plain | transactional (send + commit) "
           "| transactional / plain |", "|---|---|---|---|---|---|"]
    for inflight in (1, 64):
        label = f"{inflight} in flight"
        p, d, t = (by.get(f"produce {k}: {label}") for k in ("plain", "delayed", "transactional"))
        out.append(f"| produce, {label} | {cell(p)} | {cell(d)} | {ratio(d, p)} | {cell(t)} | {ratio(t, p)} |")
    out += ["", "| end to end (latency from the due time) | msg/s | p50 | p99 | p999 | lost |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["label"].startswith("e2e"):
            out.append(f"| {r['label']} | {r['msgs_per_sec']:,.0f} | {r['p50_us']} µs | {r['p99_us']} µs | "
                       f"{r['p999_us']} µs | {r.get('lost', '-')} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secs", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--out")
    args = p.parse_args()
    bench_main("messaging", lambda namesrv, results: run(namesrv, args.size, args.secs, results),
               lambda results: table(results, args.size), args.out)


def bench_main(name, workloads, render, out):
    """One bench run against a fresh NameServer + broker (also used by bench-rocketmq-v2.py): `workloads(namesrv,
    results)` appends result rows, the broker's peak RSS is sampled throughout, the rows are written as JSON lines
    to `out` (default: bench-<name>.jsonl in the temp dir) and `render(results)` is printed."""
    workdir = tempfile.mkdtemp(prefix=f"comet-bench-{name}-")
    servers = bb.Servers(workdir)
    results = []
    try:
        namesrv, broker = start(servers, workdir)
        rss = bb.RssSampler(broker.pid)
        rss.start()
        workloads(namesrv, results)
        rss.finish("broker peak RSS", results)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out = out or os.path.join(tempfile.gettempdir(), f"bench-{name}.jsonl")
    with open(out, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"raw results: {out}", file=sys.stderr)
    print(render(results))
    for r in results:
        if "peak_rss_mib" in r:
            print(f"\nbroker peak RSS {r['peak_rss_mib']:.0f} MiB (anonymous {r['peak_anon_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
