#!/usr/bin/env python3
"""A/B of two broker builds on one produce workload: the measurement behind "measure before you optimise".

Each run starts a fresh release NameServer and a fresh broker (build A or B, alternating A, B, A, B, ...) on free
127.0.0.1 ports with its data in a new temporary directory, drives it with one `comet bench produce` (the release
`comet` of this tree), and reads the broker's CPU time from /proc before and after. Throughput on the shared 2-vCPU
VM of docs/benchmarks.md moves with the host (±25 % run to run); the broker's CPU per message is the steadier
figure, so both are printed, per run and as medians.

Usage: scripts/bench-ab.py (--a PATH | --a-rev REV) [--b PATH] [--runs 4] [--flush async|sync] [-- BENCH ARGS...]
  --a PATH     the A broker binary;  --a-rev REV  build comet-broker at git revision REV (a worktree under
               target/ab, its own target dir there) and use that
  --b PATH     the B broker binary (default: this tree's target/release/comet-broker)
  BENCH ARGS   `comet bench produce` arguments (default: --size 1024 --batch 1000 --concurrency 4
               --duration-secs 8); --warmup-secs 0 is added so CPU and messages cover the same period
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_broker", os.path.join(HERE, "bench-broker.py"))
bb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bb)

DEFAULT_ARGS = ["--size", "1024", "--batch", "1000", "--concurrency", "4", "--duration-secs", "8"]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_rev(rev):
    """comet-broker built at `rev` in a worktree of its own (kept for the next A/B: rebuilds are incremental)."""
    sha = subprocess.run(["git", "-C", bb.ROOT, "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    base = os.path.join(bb.ROOT, "target", "ab")
    tree = os.path.join(base, "tree")
    if not os.path.isdir(tree):
        os.makedirs(base, exist_ok=True)
        # A `cargo clean` removes the directory but not git's record of the worktree.
        subprocess.run(["git", "-C", bb.ROOT, "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", bb.ROOT, "worktree", "add", "--detach", tree, sha], check=True)
    else:
        subprocess.run(["git", "-C", tree, "checkout", "--quiet", "--detach", sha], check=True)
    target = os.path.join(base, "target")
    print(f"building comet-broker at {sha} in {tree}", file=sys.stderr, flush=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "comet-broker"], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    return os.path.join(target, "release", "comet-broker")


def registered(namesrv, address, label, timeout=20.0):
    """Waits until the NameServer lists the broker (it logs "listening" before its first registration)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = subprocess.run([os.path.join(bb.BIN, "comet"), "--namesrv", namesrv, "cluster"], capture_output=True,
                             text=True)
        if run.returncode == 0 and address in run.stdout:
            return
        time.sleep(0.1)
    sys.exit(f"{label}: the broker at {address} never registered with {namesrv}")


def one_run(binary, flush, bench_args, label):
    with tempfile.TemporaryDirectory(prefix="comet-ab-") as workdir:
        servers = bb.Servers(workdir)
        try:
            ns, ns_out = servers.start("nameserver", [os.path.join(bb.BIN, "comet-nameserver")], {
                "COMET_NAMESERVER_LISTEN": "127.0.0.1:0", "COMET_LOG_LEVEL": "warn",
                "COMET_NAMESERVER_KV_CONFIG_PATH": os.path.join(workdir, "kv.json"),
                "COMET_METRICS_LISTEN": "127.0.0.1:0"})
            namesrv = bb.wait_for(ns_out, "listening", ns, "comet-nameserver")
            broker, broker_out = servers.start("broker", [binary], {
                "COMET_BROKER_LISTEN": f"127.0.0.1:{bb.free_port()}", "COMET_BROKER_NAMESERVER_ADDRESSES": namesrv,
                "COMET_STORE_DIR": os.path.join(workdir, "store"), "COMET_STORE_FLUSH_MODE": flush,
                "COMET_LOG_LEVEL": "warn", "COMET_METRICS_LISTEN": "127.0.0.1:0"})
            address = bb.wait_for(broker_out, "listening", broker, label)
            registered(namesrv, address, label)
            before = cpu_seconds(broker.pid)
            results = []
            result = bb.bench(namesrv, "produce", ["--topic", "ab", *bench_args, "--warmup-secs", "0"], results, label)
            used = cpu_seconds(broker.pid) - before
        finally:
            servers.stop_all()
    if result is None or not result.get("messages"):
        sys.exit(f"{label}: the bench failed (see above)")
    return result["msgs_per_sec"], used * 1e6 / result["messages"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_mutually_exclusive_group(required=True)
    a.add_argument("--a", help="the A broker binary")
    a.add_argument("--a-rev", help="build the A broker at this git revision")
    p.add_argument("--b", default=os.path.join(bb.BIN, "comet-broker"), help="the B broker binary")
    p.add_argument("--runs", type=int, default=4, help="runs per build")
    p.add_argument("--flush", choices=["async", "sync"], default="async")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then `comet bench produce` arguments")
    args = p.parse_args()
    bench_args = [x for x in args.bench if x != "--"] or DEFAULT_ARGS
    binary_a = args.a or build_rev(args.a_rev)
    builds = {"A": binary_a, "B": args.b}
    names = {"A": f"A ({args.a_rev})" if args.a_rev else f"A: {binary_a}", "B": f"B: {args.b}"}
    rows = {"A": [], "B": []}
    for i in range(args.runs):
        for name, binary in builds.items():
            rows[name].append(one_run(binary, args.flush, bench_args, f"{name} run {i + 1}"))
    print(f"\nproduce {' '.join(bench_args)}, {args.flush} flush, a fresh broker per run\n")
    print("| build | msg/s per run | median msg/s | broker µs/msg per run | median µs/msg |")
    print("|---|---|---|---|---|")
    for name, label in names.items():
        rates = [r for r, _ in rows[name]]
        cpu = [c for _, c in rows[name]]
        print(f"| {label} | {', '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(rates):,.0f} "
              f"| {', '.join(f'{c:.2f}' for c in cpu)} | {statistics.median(cpu):.2f} |")


if __name__ == "__main__":
    main()
