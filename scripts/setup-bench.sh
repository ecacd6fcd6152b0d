#!/usr/bin/env bash
# Installs what the benchmarks need beyond the tests (idempotent): the peer baseline NATS JetStream (Debian
# nats-server) and perf for profiling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
need_apt=()
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v perf >/dev/null || need_apt+=(linux-perf)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # The nats-server package starts a system service on port 4222; the benchmark runs its own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet nats-server 2>/dev/null; then
    $SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true
  fi
fi
echo "setup-bench: ok"
