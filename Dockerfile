# Comet: one image with every binary (comet-nameserver, comet-broker, comet, comet-store).
#
#   docker build -t comet:0.1.0 .
#   docker run --rm comet:0.1.0 comet-nameserver --print-config
#   docker run --rm -p 9876:9876 comet:0.1.0 comet-nameserver
#
# The Helm chart (helm/comet) runs it with a read-only root filesystem as UID 10001; the processes write only to
# their volumes (/var/lib/comet/..., /tmp).

# The toolchain CI builds and tests with (rustc 1.95.0; the workspace's rust-version, 1.89, is only the floor), on
# Debian 12 like the runtime stage, so the binaries' glibc matches.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Our own .proto files compile with protox (pure Rust, no protoc). etcd-client's build script (the NameServer's
# etcd backend, a default feature) always runs protoc and needs the well-known types of libprotobuf-dev too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member's manifest and sources (cargo loads the whole workspace); .dockerignore keeps build
# outputs, data and tooling out of the context.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY store store
COPY services services
COPY tests tests
# Release profile without the debug line tables the workspace keeps for profiling (symbols stay, for backtraces).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
# Cache mounts keep the registry and target dir between builds; the binaries are copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p comet-nameserver -p comet-broker -p comet -p comet-store \
 && mkdir -p /out \
 && cp target/release/comet-nameserver target/release/comet-broker target/release/comet target/release/comet-store /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# CA certificates only (for TLS endpoints such as an etcd behind TLS); the binaries need nothing but glibc,
# libgcc_s and libm, which the slim image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 comet \
 && useradd --system --uid 10001 --gid comet --home-dir /var/lib/comet --no-create-home --shell /usr/sbin/nologin comet \
 && mkdir -p /var/lib/comet /etc/comet \
 && chown comet:comet /var/lib/comet
COPY --from=build /out/ /usr/local/bin/
# Without a config file the defaults apply: relative paths (the broker's data/broker, the NameServer's
# $HOME/namesrv/kvConfig.json) land under /var/lib/comet, the only directory the image lets the user write.
ENV HOME=/var/lib/comet
WORKDIR /var/lib/comet
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 9876 NameServer, 8081 broker (gRPC, health, reflection); 5557 broker and 5558 NameServer /metrics
# (metrics.listen, on by default); 10912 a master's HA replication listener (ha.listen, RocketMQ's HA port; the
# chart sets it on masters with slaves).
EXPOSE 9876 8081 5557 5558 10912
# No HEALTHCHECK: the image has no gRPC health client; Kubernetes probes grpc.health.v1 natively (see helm/comet).
CMD ["comet", "--help"]
