# azsim in a container: the local IoT Hub by default (`docker run -p 8883:8883 -p 8443:8443 azsim`),
# or any other subcommand (`docker run azsim token --help`). As a CI service container, the health
# check (`azsim hub status`: its process alive and both listeners answering) tells the runner
# when the hub is ready.
#
# Build stage: the same release build as CI, from the committed Cargo.lock.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin azsim

# Runtime stage: a slim Debian with the CA bundle (for real Azure hubs) and the one binary.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /data azsim
COPY --from=build /src/target/release/azsim /usr/local/bin/azsim
USER azsim
# The hub keeps its state (CA, keys, SQLite, hub.json) in .azsim/hub under the working directory.
WORKDIR /data
VOLUME ["/data"]
# 8883: MQTT over TLS (devices); 8443: the service REST API, DPS and MQTT over WebSockets over
# HTTPS; 5671: AMQP over TLS (C2D, feedback, the Event Hubs-compatible endpoint); 8880: the
# dashboard (over the hub's TLS when bound beyond loopback, as here).
EXPOSE 8883 8443 5671 8880
# Healthy once `azsim hub` (the default command, state in /data/.azsim/hub) answers on both ports.
# With another --state, override it (`--health-cmd "azsim hub status --state DIR"`).
HEALTHCHECK --interval=2s --timeout=5s --start-period=2s --retries=30 \
    CMD ["azsim", "hub", "status"]
ENTRYPOINT ["azsim"]
CMD ["hub", "--bind", "0.0.0.0"]
