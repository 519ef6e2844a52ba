# syntax=docker/dockerfile:1
# The tailsift image: a Rust build stage, then a slim Debian runtime holding only the binary and
# the example rules, run as a non-root user (uid 10001, the chart's default).
#
#   docker build -t tailsift:0.1.0 .
#   docker run --rm tailsift:0.1.0 demo --duration 10 --listen 0.0.0.0:8080
#
# The toolchain is the one CI uses (moka's uuid needs rustc >= 1.89). librdkafka is built from
# source by rdkafka-sys with its ./configure and make (no cmake): the rust image has the C
# toolchain, make, perl, and the zlib and OpenSSL headers it needs (TLS and SCRAM are on by
# default and link the system OpenSSL).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG FEATURES=tls
# The commit `tailsift_build_info` reports: --build-arg TAILSIFT_GIT_COMMIT=$(git rev-parse HEAD).
# An ARG is in the environment of the RUN below, where the crate reads it at compile time.
ARG TAILSIFT_GIT_COMMIT=unknown
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tailsift --features "${FEATURES}" \
    && install -D -m 0755 target/release/tailsift /out/tailsift

FROM debian:${DEBIAN_RELEASE}-slim
# The binary links glibc, libgcc, zlib and OpenSSL (libssl3); CA certificates for brokers
# reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tailsift \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tailsift
COPY --from=build /out/tailsift /usr/local/bin/tailsift
# The example rules; rules.dir defaults to `rules`, relative to the working directory. The Helm
# chart mounts its own rules ConfigMap elsewhere and points rules.dir at it.
COPY rules/ /etc/tailsift/rules/
WORKDIR /etc/tailsift
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tailsift"]
CMD ["run", "--config", "/etc/tailsift/tailsift.yaml"]
