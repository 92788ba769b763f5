# syntax=docker/dockerfile:1
#
# The imagegate container image: one binary on distroless, run as non-root.
#   docker build -t imagegate:dev .
# Build stage: the official Rust image on Debian 12, whose glibc matches the runtime image's.
# Runtime: distroless cc (glibc, libgcc, CA certificates; no shell, no package manager), user
# nonroot (65532). The binary needs no other file: TLS is rustls, certificates are generated.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit cache mounts), so a change in
# src/ rebuilds only imagegate itself. --locked: exactly the dependencies in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin imagegate \
 && install -D -m 0755 target/release/imagegate /out/imagegate \
 && /out/imagegate --version

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="imagegate" \
      org.opencontainers.image.description="Image-policy admission controller for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/imagegate /usr/local/bin/imagegate
USER 65532:65532
# 8443: HTTPS (admission, ImageReview, health, metrics); 9090: plain-HTTP metrics.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/imagegate"]
CMD ["run"]
