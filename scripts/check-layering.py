#!/usr/bin/env python3
"""Fails when a workspace crate depends on a crate the layering table in docs/architecture.md forbids.

Only direct dependencies of workspace members are checked: a forbidden transitive edge is always the direct
edge of some other member, which is checked in turn. Dev-dependencies are exempt (tests may drive anything).
"""
import json
import subprocess
import sys

# crate -> crates (workspace or external) it must never depend on, directly, in normal or build deps.
FORBIDDEN = {
    "comet-config": {"comet-model", "comet-proto", "comet-store", "comet-remoting", "comet-nameserver",
                     "comet-nameserver-client", "comet-broker", "comet-client", "comet", "comet-telemetry", "tonic",
                     "hyper"},
    # Metrics set-up shared by the servers: knows no comet type; serves /metrics on hyper, not on tonic.
    "comet-telemetry": {"comet-config", "comet-model", "comet-proto", "comet-store", "comet-remoting",
                        "comet-nameserver", "comet-nameserver-client", "comet-broker", "comet-client", "comet",
                        "tonic"},
    "comet-model": {"comet-config", "comet-proto", "comet-store", "comet-remoting", "comet-nameserver", "comet-nameserver-client",
                    "comet-broker", "comet-client", "comet", "comet-telemetry", "tokio", "tonic", "hyper"},
    "comet-proto": {"comet-model", "comet-store", "comet-remoting", "comet-nameserver", "comet-nameserver-client",
                    "comet-broker", "comet-client", "comet"},
    "comet-remoting": {"comet-proto", "comet-store", "comet-model", "comet-nameserver", "comet-nameserver-client",
                       "comet-broker", "comet-client", "comet"},
    "comet-store": {"comet-proto", "comet-remoting", "comet-nameserver", "comet-nameserver-client", "comet-broker",
                    "comet-client", "comet", "comet-telemetry", "tokio", "tonic", "hyper"},
    "comet-nameserver": {"comet-broker", "comet-store", "comet-client", "comet", "comet-remoting"},
    "comet-nameserver-client": {"comet-broker", "comet-store", "comet-client", "comet", "comet-nameserver",
                                "comet-remoting"},
    "comet-broker": {"comet-client", "comet-nameserver", "comet"},
    # The SDK's send and pull ride the remoting channel (docs/architecture.md, "Data path").
    "comet-client": {"comet-broker", "comet-nameserver", "comet-store", "comet-telemetry"},
    "comet": {"comet-broker", "comet-nameserver", "comet-store", "comet-remoting"},
}


def main() -> int:
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"]
        if "--offline" in sys.argv else ["cargo", "metadata", "--format-version", "1", "--no-deps"]))
    bad = []
    for pkg in meta["packages"]:
        rules = FORBIDDEN.get(pkg["name"], set())
        for dep in pkg["dependencies"]:
            if dep.get("kind") == "dev":
                continue
            if dep["name"] in rules:
                bad.append(f"{pkg['name']} depends on {dep['name']} (forbidden by docs/architecture.md layering)")
    unknown = [p["name"] for p in meta["packages"]
               if p["name"].startswith("comet") and p["name"] not in FORBIDDEN and p["name"] != "comet-tests"]
    for name in unknown:
        bad.append(f"{name} has no layering rule: add it to scripts/check-layering.py and docs/architecture.md")
    for line in bad:
        print(f"layering: {line}", file=sys.stderr)
    if not bad:
        print(f"layering: ok ({len(meta['packages'])} workspace crates checked)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
