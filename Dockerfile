# Tollgate: the gateway and the Rust example plugins, built from source; a small runtime image
# running as a non-root user. `docker build -t tollgate .`, then see deploy/ and
# docs/operations.md.

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tollgate \
 && cargo build --locked --profile guest --target wasm32-wasip1 --target-dir target/guests \
        -p mtls-auth -p tls-handshake-modifier -p tls-metadata-headers \
 && mkdir -p /out/plugins \
 && cp target/release/tollgate /out/ \
 && cp target/guests/wasm32-wasip1/guest/mtls_auth.wasm \
       target/guests/wasm32-wasip1/guest/tls_handshake_modifier.wasm \
       target/guests/wasm32-wasip1/guest/tls_metadata_headers.wasm /out/plugins/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid tollgate --home-dir /nonexistent --shell /usr/sbin/nologin tollgate
COPY --from=build /out/tollgate /usr/local/bin/tollgate
COPY --from=build /out/plugins/ /usr/share/tollgate/plugins/
COPY deploy/tollgate.toml /etc/tollgate/config/tollgate.toml
USER 10001:10001
EXPOSE 8443 9901
ENTRYPOINT ["tollgate", "run"]
CMD ["--config", "/etc/tollgate/config/tollgate.toml"]
