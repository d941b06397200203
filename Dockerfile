# syntax=docker/dockerfile:1
# tollgate's container image: a release build made with the command CI uses,
# on a distroless runtime with no shell, running as the non-root user 65532.
#
#   docker build -t tollgate:0.1.0 .
#
# The image serves the example catalog (/opt/tollgate/policies and
# /opt/tollgate/entitlements, the defaults ./policies and ./entitlements from
# its working directory); the Helm chart mounts your own. The gRPC API keeps
# tollgate's default, 127.0.0.1:50051, for the app beside it in the pod; the
# container's network address carries only the health listener (for the
# kubelet's probes) and, when set, metrics.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the build directory between
# builds; the binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tollgate /out/tollgate

# glibc and libgcc (what a Rust binary links), CA certificates, no shell, user
# "nonroot" (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
WORKDIR /opt/tollgate
COPY policies/ ./policies/
COPY entitlements/ ./entitlements/
# The kubelet probes the pod IP, which the loopback API cannot answer: a
# listener serving grpc.health.v1 and nothing else, in plaintext, is there for
# it. Set as an environment variable, so another TOLLGATE_HEALTH_LISTEN
# overrides it; a config file's `health_listen` does not (env wins over file).
ENV TOLLGATE_HEALTH_LISTEN=0.0.0.0:50053
# The allocator (mimalloc) hands freed request buffers back to the system at
# once rather than after 10 ms: under 16 callers sending 4 MiB hostile
# requests the peak resident memory stays near 107 MiB instead of up to
# 170 MiB, and a usual Check costs the same (benches/README.md, "Hostile load").
ENV MIMALLOC_PURGE_DELAY=0
# 50053: health only; 9090: the conventional metrics_listen port (off unless
# set). The API, 50051, is on loopback and so not exposed: serving it on the
# container's address (TOLLGATE_LISTEN=0.0.0.0:50051) needs TLS
# (TOLLGATE_TLS_CERT_FILE, TOLLGATE_TLS_KEY_FILE) and callers
# (TOLLGATE_CALLERS_FILE), or TOLLGATE_INSECURE_LISTEN=true; without either
# tollgate refuses to start.
EXPOSE 50053 9090
USER 65532:65532
# No HEALTHCHECK: Kubernetes probes gRPC health (grpc.health.v1) directly.
ENTRYPOINT ["tollgate", "serve"]
