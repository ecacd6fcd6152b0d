#!/usr/bin/env bash
# Builds the Dockerfile for real and checks the image (`make check-image`; slow, not part of `make test`).
#
# No Docker daemon and no container registry are needed: Debian's podman builds the repository's Dockerfile as it
# is, and the two base images it names are assembled here when they are not present locally (never pulled):
#   docker.io/library/debian:<release>-slim        debootstrap --variant=minbase from this host's Debian mirror,
#                                                  trimmed like the slim images (no docs, man pages, locales)
#   docker.io/library/rust:<version>-slim-<release> that image + gcc/libc6-dev/ca-certificates (what the official
#                                                  slim image installs) + this host's rustup toolchain <version>,
#                                                  laid out like the official image (RUSTUP_HOME=/usr/local/rustup,
#                                                  CARGO_HOME=/usr/local/cargo, on PATH)
# The versions come from the Dockerfile's ARGs; the host must have that rustc (rustup toolchain) installed.
#
# Then: the image runs as 10001:10001; --print-config / --help of every binary; a NameServer and a broker started
# from the image the way the chart runs them (read-only root filesystem, all capabilities dropped, no privilege
# escalation, the store on a volume owned by 10001, tmpfs for the NameServer's directory and /tmp), on free
# 127.0.0.1 ports with host networking; a topic created, one message sent and consumed with the image's `comet`.
#
#   scripts/check-image.sh           build and check (base images and build cache are kept for the next run)
#   scripts/check-image.sh --purge   also remove the base images and podman's build cache afterwards
#
# Runs as root (apt-get, rootful podman). Removes the containers and the image it made, also on failure. The build
# context is the work tree as it is (like `docker build .`). Build output: $COMET_IMAGE_LOG (default
# /tmp/comet-check-image.log). DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR override the mirrors taken from apt's sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PURGE=0
[ "${1:-}" = --purge ] && PURGE=1
IMAGE=localhost/comet:check-image
PREFIX=comet-check-image                  # container names
LOG=${COMET_IMAGE_LOG:-/tmp/comet-check-image.log}
start=$(date +%s)

fail() { echo "check-image: $*" >&2; exit 1; }
step() { echo "check-image: $* ($(($(date +%s) - start)) s)"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (rootful podman, debootstrap)"

arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -1; }
RUST_VERSION=$(arg RUST_VERSION)
RELEASE=$(arg DEBIAN_RELEASE)
if [ -z "$RUST_VERSION" ] || [ -z "$RELEASE" ]; then fail "no ARG RUST_VERSION / DEBIAN_RELEASE in the Dockerfile"; fi
DEBIAN_IMAGE=docker.io/library/debian:$RELEASE-slim
RUST_IMAGE=docker.io/library/rust:$RUST_VERSION-slim-$RELEASE
ARCH=$(uname -m)
HOST_TRIPLE=$ARCH-unknown-linux-gnu

# 1. Tools (Debian's podman 4.3 / buildah 1.28: RUN --mount=type=cache is supported; root uses native overlayfs).
# Two things of this kind of VM need care; both are detected, so a normal host runs podman's defaults:
# - cgroup v1 with a cgroup2 "unified" mount that still has controllers (hybrid mode): crun refuses to create
#   containers there ("cgroups in hybrid mode not supported"), runc does not; so runc is used.
# - root without CAP_SYS_RESOURCE and a hard RLIMIT_NOFILE below podman's rootful default (1048576): setting
#   the container's limits fails ("setrlimit RLIMIT_NOFILE: Operation not permitted"); so the containers get
#   the host's hard open-files limit and at most podman's own process limit.
need=()
for t in podman:podman buildah:buildah debootstrap:debootstrap; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
hybrid=0
if grep -qs . /sys/fs/cgroup/unified/cgroup.controllers; then
  hybrid=1
  command -v runc >/dev/null || need+=(runc)
fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
PODMAN=(podman)         # global flags
LIMITS=()               # for `podman build` and `podman run`
notes=()
if [ $hybrid = 1 ]; then
  PODMAN+=(--runtime runc)
  notes+=("runtime runc (hybrid cgroups: $(tr '\n' ' ' < /sys/fs/cgroup/unified/cgroup.controllers)in cgroup2)")
fi
nofile=$(ulimit -Hn)
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt 1048576 ] && (( !((0x$capeff >> 24) & 1) )); then
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  LIMITS+=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  notes+=("${LIMITS[*]} (no CAP_SYS_RESOURCE, hard open-files limit $nofile)")
fi
pm() { # podman with the flags above on build and run
  local sub=$1; shift
  case $sub in
    build|run) "${PODMAN[@]}" "$sub" "${LIMITS[@]}" "$@" ;;
    *) "${PODMAN[@]}" "$sub" "$@" ;;
  esac
}
step "$(podman --version), $(buildah --version | cut -d' ' -f1-3)${notes:+; ${notes[*]}}"

work=$(mktemp -d /var/tmp/comet-check-image.XXXXXX)
pm images -q --no-trunc --filter dangling=true | sort > "$work/dangling.before"
cleanup() {
  local rc=$?
  for c in $(pm ps -a --format '{{.Names}}' | grep "^$PREFIX-" || true); do
    pm rm -f -t 2 "$c" >/dev/null 2>&1 || true
  done
  pm rmi -f "$IMAGE" >/dev/null 2>&1 || true
  # Untagged images left by this run's builds (none with --layers=false, but a failed build may leave one).
  for id in $(pm images -q --no-trunc --filter dangling=true | sort | comm -13 "$work/dangling.before" - || true); do
    pm rmi "$id" >/dev/null 2>&1 || true
  done
  if [ "$PURGE" = 1 ]; then
    pm rmi -f "$RUST_IMAGE" "$DEBIAN_IMAGE" >/dev/null 2>&1 || true
    rm -rf /var/tmp/buildah-cache      # rootful buildah's RUN --mount=type=cache directories
  fi
  rm -rf "$work"
  [ $rc -eq 0 ] || echo "check-image: FAILED (build log: $LOG)" >&2
  exit $rc
}
trap cleanup EXIT

# 2. debian:<release>-slim from debootstrap, with the host's Debian mirror (its sources.list / debian.sources).
mirror() { # the first non-comment http(s) URL ending in /$1 in the host's apt sources
  grep -hv '^[[:space:]]*#' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | grep -oE "https?://[^[:space:]]+/$1/?([[:space:]]|$)" | head -1 | tr -d '[:space:]' | sed 's:/$::' || true
}
if ! pm image exists "$DEBIAN_IMAGE"; then
  MIRROR=${DEBIAN_MIRROR:-$(mirror debian)}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  SECURITY=${DEBIAN_SECURITY_MIRROR:-$(mirror debian-security)}
  SECURITY=${SECURITY:-${MIRROR%/debian}/debian-security}
  root=$work/rootfs
  debootstrap --variant=minbase "$RELEASE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; fail "debootstrap $RELEASE from $MIRROR failed"; }
  # What the official slim images change (debuerreotype --slimify and its minimizing config).
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{info,linda,lintian/overrides,locale,man,groff}/*
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'APT::AutoRemove::SuggestsImportant "false";' > "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $RELEASE $RELEASE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $RELEASE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/ldconfig/aux-cache "$root"/var/log/* \
    "$root"/tmp/* "$root"/etc/hostname "$root"/etc/resolv.conf "$root"/etc/ssh/ssh_host_* "$root"/root/.bash_history
  : > "$root/etc/machine-id"
  tar -C "$root" --numeric-owner --xattrs -cf - . | pm import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $RELEASE $MIRROR" - "$DEBIAN_IMAGE" \
    > "$work/import.log" 2>&1 || { cat "$work/import.log"; fail "podman import failed"; }
  rm -rf "$root"
  step "$DEBIAN_IMAGE imported from debootstrap --variant=minbase $RELEASE $MIRROR"
else
  step "$DEBIAN_IMAGE present locally (kept from an earlier run)"
fi

# 3. rust:<version>-slim-<release>: the host's rustup toolchain <version> (without its HTML docs), like the official
# image's minimal profile plus clippy/rustfmt, which the host has too.
if ! pm image exists "$RUST_IMAGE"; then
  RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
  toolchain=""
  for tc in "$RUSTUP_DIR"/toolchains/*"$HOST_TRIPLE"; do
    v=$("$tc/bin/rustc" -vV 2>/dev/null) || continue
    if grep -qx "release: $RUST_VERSION" <<< "$v" && grep -qx "host: $HOST_TRIPLE" <<< "$v"; then
      toolchain=$(readlink -f "$tc"); break
    fi
  done
  [ -n "$toolchain" ] ||
    fail "no rustup toolchain with rustc $RUST_VERSION in $RUSTUP_DIR (rustup toolchain install $RUST_VERSION)"
  rustup_bin=$(command -v rustup || echo "${CARGO_HOME:-$HOME/.cargo}/bin/rustup")
  [ -x "$rustup_bin" ] || fail "no rustup binary"
  ctx=$work/rust-context
  name=$RUST_VERSION-$HOST_TRIPLE
  mkdir -p "$ctx/rustup/toolchains/$name" "$ctx/cargo/bin"
  tar -C "$toolchain" --exclude=./share/doc/rust/html -cf - . | tar -C "$ctx/rustup/toolchains/$name" -xf -
  components=$ctx/rustup/toolchains/$name/lib/rustlib/components
  sed -i '/^rust-docs-/d' "$components"
  rm -f "$ctx/rustup/toolchains/$name"/lib/rustlib/manifest-rust-docs-*
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" > "$ctx/rustup/settings.toml"
  cp "$rustup_bin" "$ctx/cargo/bin/rustup"
  for p in cargo rustc rustdoc rust-gdb rust-gdbgui rust-lldb cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -s rustup "$ctx/cargo/bin/$p"
  done
  # The host's own trust anchors (/usr/local/share/ca-certificates, e.g. a TLS-inspecting egress proxy's CA, which
  # cargo must trust to reach crates.io from here) go into this build-stage stand-in only, never into the runtime
  # base, so the image under test has Debian's CA set alone.
  mkdir -p "$ctx/local-ca"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$ctx/local-ca/" \; 2>/dev/null || true
  local_cas=$(find "$ctx/local-ca" -name '*.crt' | wc -l)
  cat > "$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$RUST_VERSION
COPY local-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/* \\
 && update-ca-certificates
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN chmod -R a+w /usr/local/rustup /usr/local/cargo \\
 && rustup --version && cargo --version && rustc --version | grep -F "rustc $RUST_VERSION "
EOF
  pm build --pull=never --network host --layers=false -t "$RUST_IMAGE" "$ctx" > "$work/rust-image.log" 2>&1 ||
    { tail -30 "$work/rust-image.log"; fail "building $RUST_IMAGE failed"; }
  rm -rf "$ctx"
  step "$RUST_IMAGE built: $DEBIAN_IMAGE + gcc, libc6-dev, ca-certificates + $(basename "$toolchain") ($("$toolchain/bin/rustc" -V)) + the host's $local_cas local CA certificate(s)"
else
  step "$RUST_IMAGE present locally (kept from an earlier run)"
fi

# 4. The repository's Dockerfile as it is. Host networking: apt and cargo inside the build reach the mirror and crates.io.
# The cache mounts (cargo registry, target/) persist in podman's build cache between runs.
b0=$(date +%s)
build=(build --pull=never --network host --layers=false -f Dockerfile -t "$IMAGE" .)
echo "+ ${PODMAN[*]} ${build[0]} ${LIMITS[*]} ${build[*]:1}" > "$LOG"
if ! pm "${build[@]}" >> "$LOG" 2>&1; then
  tail -40 "$LOG"
  fail "podman build failed"
fi
grep -q 'RUN --mount=type=cache' Dockerfile || fail "the Dockerfile lost its cache mounts"
step "$(head -1 "$LOG" | cut -c3-) ($(($(date +%s) - b0)) s; $(grep -E '^ *Finished ' "$LOG" | tail -1 | sed 's/^ *//'))"

# 5. The image: user, binaries, size.
user=$(pm image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = 10001:10001 ] || fail "image user is '$user', not 10001:10001"
ids=$(pm run --rm --network none "$IMAGE" sh -c 'echo "$(id -u):$(id -g) $HOME $PWD"')
[ "$ids" = "10001:10001 /var/lib/comet /var/lib/comet" ] || fail "in the container: uid:gid HOME PWD = $ids"
pm run --rm --network none "$IMAGE" > "$work/cmd.out" 2>&1 || fail "the default command (comet --help) failed"
grep -q '^Usage: comet ' "$work/cmd.out" || fail "the default command printed no usage: $(head -5 "$work/cmd.out")"
for b in comet-nameserver comet-broker; do
  pm run --rm --network none "$IMAGE" "$b" --print-config > "$work/$b.yaml" 2> "$work/$b.err" ||
    fail "$b --print-config failed: $(cat "$work/$b.err")"
done
grep -q '^  listen: 0.0.0.0:9876$' "$work/comet-nameserver.yaml" || fail "nameserver --print-config: no 0.0.0.0:9876"
grep -q '^  listen: 0.0.0.0:8081$' "$work/comet-broker.yaml" || fail "broker --print-config: no 0.0.0.0:8081"
# Every port the processes listen on by default, and the HA port, is declared.
exposed=$(pm image inspect --format '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")
for port in $(sed -n 's/^  listen: 0\.0\.0\.0:\([0-9]*\)$/\1/p' "$work"/comet-*.yaml) 10912; do
  [[ " $exposed " == *" $port/tcp "* ]] || fail "the image does not EXPOSE $port (exposes: $exposed)"
done
for b in comet comet-store; do
  pm run --rm --network none "$IMAGE" "$b" --help > "$work/$b.help" 2>&1 || fail "$b --help failed"
  grep -q "^Usage: $b " "$work/$b.help" || fail "$b --help printed no usage"
done
libs=$(pm run --rm --network none "$IMAGE" ldd /usr/local/bin/comet-broker | awk '{print $1}' | tr '\n' ' ')
pm run --rm --network none "$IMAGE" sh -c 'test ! -w /usr/local/bin && test -w /var/lib/comet' ||
  fail "the user can write /usr/local/bin or cannot write /var/lib/comet"
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
base=$(pm image inspect --format '{{.Size}}' "$DEBIAN_IMAGE")
bins=$(pm run --rm --network none "$IMAGE" sh -c 'du -ck /usr/local/bin/comet*' | awk '/total/ {print $1}')
step "image: user 10001:10001, HOME and workdir /var/lib/comet; comet --help (default command), comet-nameserver and comet-broker --print-config, comet and comet-store --help; EXPOSE ${exposed% }; comet-broker links only ${libs% }; size $((size / 1000000)) MB ($DEBIAN_IMAGE $((base / 1000000)) MB, the four binaries $((bins / 1024)) MiB)"

# 6. A NameServer and a broker from the image, as the chart runs them, on free loopback ports.
read -r ns_port ns_metrics broker_port broker_metrics < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
store=$work/store                         # the broker's volume (a PVC with fsGroup 10001 in the chart)
mkdir -p "$store" && chown 10001:10001 "$store" && chmod 700 "$store"
# shellcheck disable=SC2054  # the commas are tmpfs mount options
hardened=(--network host --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges
  --tmpfs /tmp:rw,nosuid,nodev,size=64m,mode=1777)
pm run -d --name "$PREFIX-nameserver" "${hardened[@]}" \
  --tmpfs /var/lib/comet/nameserver:rw,nosuid,nodev,size=16m,mode=0700,U \
  -e "COMET_NAMESERVER_LISTEN=127.0.0.1:$ns_port" -e "COMET_METRICS_LISTEN=127.0.0.1:$ns_metrics" \
  -e COMET_NAMESERVER_KV_CONFIG_PATH=/var/lib/comet/nameserver/kvConfig.json \
  "$IMAGE" comet-nameserver >/dev/null
pm run -d --name "$PREFIX-broker" "${hardened[@]}" -v "$store:/var/lib/comet/store" \
  -e "COMET_BROKER_LISTEN=127.0.0.1:$broker_port" -e "COMET_METRICS_LISTEN=127.0.0.1:$broker_metrics" \
  -e "COMET_BROKER_NAMESERVER_ADDRESSES=127.0.0.1:$ns_port" -e COMET_STORE_DIR=/var/lib/comet/store \
  -e COMET_STORE_DISK_CAPACITY_BYTES=$((64 << 30)) \
  "$IMAGE" comet-broker >/dev/null
wait_log() { # container, pattern
  for _ in $(seq 300); do
    pm logs "$1" 2>&1 | grep -q "$2" && return 0
    [ "$(pm inspect --format '{{.State.Running}}' "$1")" = true ] || break
    sleep 0.1
  done
  pm logs "$1" 2>&1 | tail -20 >&2
  fail "$1: no '$2' in its output"
}
wait_log "$PREFIX-nameserver" "listening on 127.0.0.1:$ns_port"
wait_log "$PREFIX-broker" "listening on 127.0.0.1:$broker_port"
cli() { pm run --rm --network host --read-only --cap-drop ALL -e "NAMESRV_ADDR=127.0.0.1:$ns_port" "$IMAGE" comet "$@"; }
# (the CLI from the image too: no host build needed)
for _ in $(seq 100); do
  cli cluster 2>/dev/null | grep -q "127.0.0.1:$broker_port" && break
  sleep 0.2
done
cli cluster | grep -q "127.0.0.1:$broker_port" || fail "the broker never registered with the NameServer"
cli topic create check-image --queues 1 > "$work/topic.out" 2>&1 || fail "topic create: $(cat "$work/topic.out")"
body="hello from the image $(date +%s%N)"
cli send check-image "$body" --tags t1 > "$work/send.out" 2>&1 || fail "send: $(cat "$work/send.out")"
timeout 60 "${PODMAN[@]}" run "${LIMITS[@]}" --rm --network host --read-only --cap-drop ALL \
  -e "NAMESRV_ADDR=127.0.0.1:$ns_port" "$IMAGE" \
  comet consume check-image --group check-image --from begin --count 1 > "$work/consume.out" 2>&1 ||
  fail "consume: $(cat "$work/consume.out")"
grep -qxF "$body" "$work/consume.out" || fail "consumed something else: $(cat "$work/consume.out")"
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://127.0.0.1:$broker_metrics/metrics" > "$work/metrics"
grep -q '^rocketmq_' "$work/metrics" || fail "the broker's /metrics has no rocketmq_ series"
for c in broker nameserver; do
  pm stop -t 10 "$PREFIX-$c" >/dev/null
  code=$(pm inspect --format '{{.State.ExitCode}}' "$PREFIX-$c")
  [ "$code" = 0 ] || { pm logs "$PREFIX-$c" 2>&1 | tail -20 >&2; fail "$c exited $code on SIGTERM"; }
done
step "NameServer 127.0.0.1:$ns_port and broker 127.0.0.1:$broker_port from the image (read-only root, no capabilities, store volume owned by 10001, tmpfs /tmp): broker registered, topic created, one message sent and consumed with the image's comet, broker metrics scraped, both exit 0 on SIGTERM"

echo "check-image: ok ($(($(date +%s) - start)) s)"
