# Multi-stage build of the reporter: the same `cargo build --locked` that
# scripts/test.sh proves, in release mode, then a slim runtime image.
# TLS is rustls (no OpenSSL at run time) and build.rs compiles the .proto
# files with protox, so neither stage needs protoc.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY tests tests
COPY examples examples
RUN cargo build --release --locked --bin vsphere-ci-session-metrics

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin reporter
COPY --from=build /src/target/release/vsphere-ci-session-metrics /usr/local/bin/vsphere-ci-session-metrics
USER 65532:65532
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/vsphere-ci-session-metrics"]
CMD ["start"]
