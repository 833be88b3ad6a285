# syntax=docker/dockerfile:1
# Sluice: sluice-capture, sluice-ingest and sluice-plugin, with the shipped plugins.
#
#   docker build -t sluice:dev .
#
# The build stage compiles the release binaries; the runtime stage is distroless (no
# shell, no package manager) with exactly the shared libraries the binaries link:
# glibc, libgcc, libstdc++ (Luau is C++) and OpenSSL 3 (librdkafka's TLS and SASL);
# zlib is linked statically. What the runtime base provides, as Debian 12 packages (the
# build stage is Debian 12 too); tests/deploy/image.py holds every library the binaries'
# `ldd` names against this list:
# runtime-packages: libc6 libgcc-s1 libstdc++6 libssl3

# The toolchain the project is built and tested with (rustc 1.95 on the CI machines).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# librdkafka's build needs OpenSSL's headers, found by pkg-config; the rust image has both.
ENV CARGO_TARGET_DIR=/src/target

# Dependencies first, in a layer of their own: a change to Sluice's sources does not
# rebuild the hundreds of crates below it.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY schema/Cargo.toml schema/
COPY common/Cargo.toml common/
COPY connect/Cargo.toml connect/
COPY capture/Cargo.toml capture/
COPY ingest/Cargo.toml ingest/
COPY plugin-runtime/Cargo.toml plugin-runtime/
COPY tests/Cargo.toml tests/
RUN for crate in schema common connect capture ingest plugin-runtime tests; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
    done \
    && mkdir -p plugin-runtime/src/bin \
    && for main in capture/src/main.rs ingest/src/main.rs plugin-runtime/src/bin/sluice-plugin.rs; do \
        echo 'fn main() {}' > "$main"; \
    done \
    && cargo build --release --locked --workspace --bins \
    && rm -rf schema common connect capture ingest plugin-runtime tests

COPY schema schema
COPY common common
COPY connect connect
COPY capture capture
COPY ingest ingest
COPY plugin-runtime plugin-runtime
COPY tests tests
# The placeholders' build stamps are older than the sources; touching makes cargo rebuild them.
RUN find schema common connect capture ingest plugin-runtime tests -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --workspace --bins \
    && mkdir -p /out/bin \
    && cp target/release/sluice-capture target/release/sluice-ingest target/release/sluice-plugin /out/bin/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
# checkov:skip=CKV_DOCKER_2: Kubernetes probes /_liveness and /_readiness over HTTP; distroless has no shell or curl for a HEALTHCHECK
ARG VERSION=dev
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Event pipeline for product analytics that accepts PostHog SDK traffic" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sluice-analytics/sluice" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/bin/ /usr/local/bin/
COPY plugins /usr/share/sluice/plugins
# distroless's nonroot user; the manifests run as this UID too.
USER 65532:65532
EXPOSE 3000 3001
ENTRYPOINT ["/usr/local/bin/sluice-capture"]
