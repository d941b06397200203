# syntax=docker/dockerfile:1
# tollgate's container image: a release build made with the command CI uses,
# on a distroless runtime with no shell, running as the non-root user 65532.
#
#   docker build -t tollgate:0.1.0 .
#
# The image serves the example catalog (/opt/tollgate/policies and
# /opt/tollgate/entitlements, the defaults ./policies and ./entitlements from
# its working directory) on 0.0.0.0:50051; the Helm chart mounts your own.

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
# In a container the gRPC port must be reachable from outside it (the kubelet's
# probes, other pods). An environment variable, so TOLLGATE_LISTEN or --listen
# still override it; a config file's `listen` does not (env wins over file).
ENV TOLLGATE_LISTEN=0.0.0.0:50051
# gRPC; 9090 is the conventional metrics_listen port (off unless set).
EXPOSE 50051 9090
USER 65532:65532
# No HEALTHCHECK: Kubernetes probes gRPC health (grpc.health.v1) directly.
ENTRYPOINT ["tollgate", "serve"]
