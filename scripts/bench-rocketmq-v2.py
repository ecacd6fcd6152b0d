#!/usr/bin/env python3
"""The RocketMQ 5 API benchmark of docs/benchmarks.md ("RocketMQ 5 API"): one release NameServer + broker (async
flush), 1 KiB bodies, every v2 workload beside the same workload through the native comet.v1 API in the same run
(the SDK over its default remoting data path, and over gRPC as the v2 API is):
  - produce, unbatched with 1 and 64 in flight, and batches of 32 with 8 in flight: native = the Rust SDK's
    send/send_batch, v2 = SendMessage as an official SDK sends it (headers, Telemetry handshake, client ids);
  - consume from a stored backlog, 32 messages per call: native = pulls of every queue (8 readers, no acks: the
    native model commits an offset, not messages), v2 = ReceiveMessage + one AckMessage per batch (8 and 16
    receivers of one new consumer group: every message received, made invisible, and acknowledged), and v2
    PullMessage (the Java PullConsumer: the native pull behind the v2 wire format, one loop per queue).

Usage: scripts/bench-rocketmq-v2.py [--secs 10] [--size 1024] [--backlog 200000] [--out FILE]
Servers listen on 127.0.0.1 free ports; data lives in a temp dir removed at the end.
"""

import argparse
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_messaging", os.path.join(HERE, "bench-messaging.py"))
bm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bm)
bb = bm.bb

# The native API over the SDK's default remoting data path, and over gRPC like the v2 API (the transport-fair
# baseline: what the v2 protocol costs beyond HTTP/2 itself).
APIS = (("native", []), ("native-grpc", ["--transport", "grpc"]), ("v2", ["--api", "v2"]))


def produce_rows(size, secs):
    """(label, produce args) of the produce matrix."""
    common = ["--size", str(size), "--duration-secs", str(secs), "--warmup-secs", "2"]
    return [
        ("produce, unbatched, 1 in flight", [*common, "--concurrency", "1"]),
        ("produce, unbatched, 64 in flight", [*common, "--concurrency", "64"]),
        ("produce, batch 32, 8 in flight", [*common, "--batch", "32", "--concurrency", "8"]),
    ]


def consume_rows():
    """(label, native consume args or None for the first row's, v2 consume args) of the read side."""
    return [
        ("consume, 32 per call, 8 readers: native pull, v2 receive + ack", ["--pull-batch", "32"],
         ["--api", "v2", "--pull-batch", "32", "--receivers", "8"]),
        ("consume, 32 per call: native 8 readers, v2 16 receivers (receive + ack)", None,
         ["--api", "v2", "--pull-batch", "32", "--receivers", "16"]),
        ("consume, 32 per call, 8 queues: native pull, v2 PullMessage", None,
         ["--api", "v2-pull", "--pull-batch", "32"]),
    ]


def run(namesrv, size, secs, backlog, results):
    for label, args in produce_rows(size, secs):
        for api, flag in APIS:
            topic = f"v2bench-{bb.slug(label.replace(',', ''))}-{api}"
            bb.bench(namesrv, "produce", ["--topic", topic, *flag, *args], results, f"{label} [{api}]")
    # One backlog read by every consume run (native pulls commit nothing; each v2 run is a new group).
    topic = "v2bench-backlog"
    fill = ["--topic", topic, "--size", str(size), "--count", str(backlog), "--batch", "64", "--concurrency", "8",
            "--warmup-secs", "0"]
    bb.bench(namesrv, "produce", fill, results, "backlog fill")
    for label, native, v2 in consume_rows():
        if native is not None:
            bb.bench(namesrv, "consume", ["--topic", topic, *native], results, f"{label} [native]")
            bb.bench(namesrv, "consume", ["--topic", topic, "--transport", "grpc", *native], results,
                     f"{label} [native-grpc]")
        bb.bench(namesrv, "consume", ["--topic", topic, *v2], results, f"{label} [v2]")


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

    out = [f"| {size} B workload | native comet.v1 (remoting) | native comet.v1 over gRPC | RocketMQ 5 API (v2) "
           "| v2 / native | v2 / native over gRPC |", "|---|---|---|---|---|---|"]
    for label, _ in produce_rows(size, 0):
        n, g, v = by.get(f"{label} [native]"), by.get(f"{label} [native-grpc]"), by.get(f"{label} [v2]")
        out.append(f"| {label} | {cell(n)} | {cell(g)} | {cell(v)} | {ratio(v, n)} | {ratio(v, g)} |")
    first = consume_rows()[0][0]
    base, base_grpc = by.get(f"{first} [native]"), by.get(f"{first} [native-grpc]")
    for label, native, _ in consume_rows():
        n = by.get(f"{label} [native]") if native is not None else None
        g = by.get(f"{label} [native-grpc]") if native is not None else None
        v = by.get(f"{label} [v2]")
        out.append(f"| {label} | {cell(n or base)} | {cell(g or base_grpc)} | {cell(v)} | {ratio(v, n or base)} "
                   f"| {ratio(v, g or base_grpc)} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secs", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--backlog", type=int, default=200000)
    p.add_argument("--out")
    args = p.parse_args()
    bm.bench_main("rocketmq-v2",
                  lambda namesrv, results: run(namesrv, args.size, args.secs, args.backlog, results),
                  lambda results: table(results, args.size), args.out)


if __name__ == "__main__":
    main()
