#!/usr/bin/env python3
"""The broker benchmark of docs/benchmarks.md: Comet (release NameServer + broker, async then sync flush) and NATS
JetStream (file storage) driven by the same `comet bench` workloads in one run, so every figure is also a ratio.
The async broker is driven over each SDK transport (remoting, the default, then gRPC: an A/B of the data path).

Usage: scripts/bench-broker.py [--secs 10] [--sizes 1024,128] [--backlog 2000000] [--skip-nats] [--skip-sync]
                               [--transports remoting,grpc] [--out FILE]
Prints a markdown table and writes every raw JSON result (one per line) to --out (default bench-broker.jsonl in
a temporary directory, path printed). Servers listen on 127.0.0.1 free ports; data lives in a temp dir removed at
the end.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET if os.path.isabs(TARGET) else os.path.join(ROOT, TARGET), "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path, needle, proc, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}; see {path}")
        try:
            with open(path) as f:
                for line in f:
                    if needle in line:
                        return line.split()[-1]
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    sys.exit(f"{what} did not start within {timeout} s; see {path}")


class Servers:
    """Processes started by this run, stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def start(self, name, argv, env=None):
        out = os.path.join(self.workdir, f"{name}.out")
        err = os.path.join(self.workdir, f"{name}.err")
        proc = subprocess.Popen(
            argv,
            stdout=open(out, "w"),
            stderr=open(err, "w"),
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        self.procs.append(proc)
        return proc, out

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc)


class RssSampler(threading.Thread):
    """Samples a process's resident memory (VmRSS) and its anonymous part (RssAnon: heap and stacks, without the
    mapped CommitLog pages) every 100 ms; keeps the peaks. VmHWM is not used: it never comes down, so it reports
    file pages the broker has since unmapped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_anon, self.stop = pid, 0, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.peak_rss = max(self.peak_rss, int(line.split()[1]))
                        elif line.startswith("RssAnon:"):
                            self.peak_anon = max(self.peak_anon, int(line.split()[1]))
            except OSError:
                return

    def finish(self, label, results):
        self.stop.set()
        self.join()
        rss, anon = self.peak_rss / 1024, self.peak_anon / 1024
        results.append({"label": label, "peak_rss_mib": rss, "peak_anon_mib": anon})
        print(f"  {label}: {rss:.0f} MiB (anonymous {anon:.0f} MiB)", file=sys.stderr)


def bench(namesrv, mode, args, results, label):
    argv = [os.path.join(BIN, "comet"), "--namesrv", namesrv, "bench", mode, "--json", "--quiet", *args]
    print(f"  {label}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    run = subprocess.run(argv, capture_output=True, text=True)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    if run.returncode != 0 or not lines:
        print(f"    FAILED ({run.returncode}): {run.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1])
    result["label"] = label
    results.append(result)
    lat = f", p50 {result['p50_us']} us p99 {result['p99_us']} us p999 {result['p999_us']} us" if result["latency"] else ""
    print(f"    {result['msgs_per_sec']:.0f} msg/s{lat}", file=sys.stderr, flush=True)
    return result


def workloads(size, secs):
    """(label, produce args) of the throughput matrix for one body size."""
    common = ["--size", str(size), "--duration-secs", str(secs), "--warmup-secs", "2"]
    return [
        (f"{size} B, 1 in flight", [*common, "--concurrency", "1"]),
        (f"{size} B, unbatched, 64 in flight", [*common, "--concurrency", "64"]),
        (f"{size} B, batch 64, 8 in flight", [*common, "--batch", "64", "--concurrency", "8"]),
        (f"{size} B, batch 1000, 4 in flight", [*common, "--batch", "1000", "--concurrency", "4"]),
    ]


def slug(tag):
    return tag.replace(" ", "-")


def run_matrix(namesrv, extra, sizes, secs, results, tag):
    for size in sizes:
        for label, args in workloads(size, secs):
            bench(namesrv, "produce", [*extra, "--topic", f"bench-{slug(tag)}-{size}", *args], results,
                  f"{tag}: {label}")


def run_read_side(namesrv, extra, backlog, secs, results, tag):
    """Consume a backlog of `backlog` 1 KiB messages, then e2e latency at half the unbatched-64 maximum."""
    topic = f"backlog-{slug(tag)}"
    fill = ["--topic", topic, "--size", "1024", "--batch", "1000", "--concurrency", "4", "--count", str(backlog),
            "--warmup-secs", "0"]
    bench(namesrv, "produce", [*extra, *fill], results, f"{tag}: fill backlog")
    bench(namesrv, "consume", [*extra, "--topic", topic, "--count", str(backlog)], results,
          f"{tag}: consume {backlog} x 1024 B backlog")
    peak = [r for r in results if r["label"] == f"{tag}: 1024 B, unbatched, 64 in flight"]
    rate = int(peak[0]["msgs_per_sec"] / 2) if peak else 10000
    bench(namesrv, "e2e", [*extra, "--topic", f"e2e-{slug(tag)}", "--size", "1024", "--concurrency", "64", "--rate",
                           str(rate), "--duration-secs", str(secs)], results, f"{tag}: e2e 1024 B at {rate}/s")


def comet(servers, workdir, flush, sizes, secs, backlog, results, read_side, transports):
    data = os.path.join(workdir, f"comet-{flush}")
    os.makedirs(data)
    ns, ns_out = servers.start(
        f"nameserver-{flush}",
        [os.path.join(BIN, "comet-nameserver")],
        {"COMET_NAMESERVER_LISTEN": "127.0.0.1:0", "COMET_NAMESERVER_KV_CONFIG_PATH": os.path.join(data, "kv.json"),
         "COMET_LOG_LEVEL": "warn", "COMET_METRICS_LISTEN": "127.0.0.1:0"},
    )
    namesrv = wait_for(ns_out, "listening", ns, "comet-nameserver")
    broker, broker_out = servers.start(
        f"broker-{flush}",
        [os.path.join(BIN, "comet-broker")],
        {"COMET_BROKER_LISTEN": f"127.0.0.1:{free_port()}", "COMET_BROKER_NAMESERVER_ADDRESSES": namesrv,
         "COMET_STORE_DIR": os.path.join(data, "store"), "COMET_STORE_FLUSH_MODE": flush, "COMET_LOG_LEVEL": "warn",
         # Metrics on as by default (the cost is part of what is measured), on a free port.
         "COMET_METRICS_LISTEN": "127.0.0.1:0"},
    )
    wait_for(broker_out, "listening", broker, "comet-broker")
    time.sleep(0.5)  # first registration
    print(f"comet {flush}: NameServer {namesrv}, broker pid {broker.pid}", file=sys.stderr)
    rss = RssSampler(broker.pid)
    rss.start()
    for transport in transports:
        # The SDK's default (remoting) keeps the plain tag; the gRPC A/B runs against the same broker.
        tag = f"comet {flush}" if transport == "remoting" else f"comet {flush} {transport}"
        extra = ["--transport", transport]
        run_matrix(namesrv, extra, sizes, secs, results, tag)
        if read_side:
            run_read_side(namesrv, extra, backlog, secs, results, tag)
    rss.finish(f"comet {flush}: broker peak RSS", results)
    servers.stop(broker)
    servers.stop(ns)


def nats(servers, workdir, sizes, secs, backlog, results):
    if shutil.which("nats-server") is None:
        sys.exit("nats-server is not installed: run `bash scripts/setup-bench.sh` (or use --skip-nats)")
    port = free_port()
    conf = os.path.join(workdir, "nats.conf")
    with open(conf, "w") as f:
        f.write(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{workdir}/js", max_file_store: 40G, '
                f'max_memory_store: 1G }}\n')
    proc, _ = servers.start("nats", ["nats-server", "-c", conf])
    url = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    extra = ["--system", "nats", "--nats-url", url]
    tag = "nats"
    print(f"{tag}: nats-server {url}, pid {proc.pid}", file=sys.stderr)
    rss = RssSampler(proc.pid)
    rss.start()
    run_matrix("127.0.0.1:1", extra, sizes, secs, results, tag)
    run_read_side("127.0.0.1:1", extra, backlog, secs, results, tag)
    rss.finish(f"{tag}: server peak RSS", results)
    servers.stop(proc)


def table(results, sizes, backlog):
    by = {r["label"]: r for r in results}
    rows = []
    for size in sizes:
        rows += [label for label, _ in workloads(size, 1)]
    rows += [f"consume {backlog} x 1024 B backlog"]
    out = ["| workload | comet async | comet async, gRPC transport | comet sync | NATS JetStream | comet async / NATS |",
           "|---|---|---|---|---|---|"]

    def cell(r):
        if r is None:
            return "-"
        s = f"{r['msgs_per_sec']:,.0f}/s"
        if r.get("latency") == "ack":
            s += f" (p50 {r['p50_us']} µs, p99 {r['p99_us']} µs)"
        return s

    for row in rows:
        a, g, s = by.get(f"comet async: {row}"), by.get(f"comet async grpc: {row}"), by.get(f"comet sync: {row}")
        n = by.get(f"nats: {row}")
        ratio = f"{a['msgs_per_sec'] / n['msgs_per_sec']:.2f}×" if a and n and n["msgs_per_sec"] else "-"
        out.append(f"| {row} | {cell(a)} | {cell(g)} | {cell(s)} | {cell(n)} | {ratio} |")
    for tag in ("comet async", "comet async grpc", "comet sync", "nats"):
        for r in results:
            if r["label"].startswith(f"{tag}: e2e"):
                out.append(f"| {r['label']} | p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, p999 {r['p999_us']} µs, "
                           f"lost {r['lost']} | | | | |")
    for r in results:
        if "peak_rss_mib" in r:
            rss = f"{r['peak_rss_mib']:.0f} MiB (anonymous {r['peak_anon_mib']:.0f} MiB)"
            out.append(f"| {r['label']} | {rss} | | | | |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secs", type=int, default=10)
    p.add_argument("--sizes", default="1024,128")
    p.add_argument("--backlog", type=int, default=2_000_000)
    p.add_argument("--skip-nats", action="store_true")
    p.add_argument("--skip-sync", action="store_true")
    p.add_argument("--transports", default="remoting,grpc",
                   help="SDK transports the async broker is driven over (the sync one uses the first)")
    p.add_argument("--out")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s]
    workdir = tempfile.mkdtemp(prefix="comet-bench-")
    out = a.out or os.path.join(tempfile.gettempdir(), f"bench-broker-{int(time.time())}.jsonl")
    servers = Servers(workdir)
    results = []
    try:
        transports = [t for t in a.transports.split(",") if t]
        comet(servers, workdir, "async", sizes, a.secs, a.backlog, results, read_side=True, transports=transports)
        if not a.skip_sync:
            comet(servers, workdir, "sync", sizes, a.secs, a.backlog, results, read_side=False,
                  transports=transports[:1])
        if not a.skip_nats:
            nats(servers, workdir, sizes, a.secs, a.backlog, results)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        with open(out, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    print(table(results, sizes, a.backlog))
    print(f"\nraw results: {os.path.abspath(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
