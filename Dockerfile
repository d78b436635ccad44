# The image chat-zmq:latest for machines with an image registry (`docker compose build`,
# or `docker build -t chat-zmq:latest .`). Without a registry, docker/build-offline.sh
# builds the same image from the host's release build (docs/operations.md).
#
# Layout (docker/make-rootfs.sh, shared by both builds): every binary in /usr/local/bin,
# the shared libraries they load and glibc's name resolution, /etc/passwd with the user
# `chat` (10001) the services run as, /data owned by it (the volumes' mount point).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bins \
    && docker/make-rootfs.sh target/release /stage

# From here on, the same lines as docker/Dockerfile.offline.
FROM scratch
COPY --from=build /stage/rootfs/ /
COPY --from=build --chown=10001:10001 /stage/data/ /data/
USER 10001:10001
WORKDIR /data
ENV PATH=/usr/local/bin RUST_LOG=info
CMD ["chat", "--help"]
