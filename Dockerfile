# One image with every binary; docker-compose.yml runs each component from it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bins \
    && mkdir /out \
    && cp target/release/chat target/release/chat-broker target/release/chat-proxy \
          target/release/chat-reference target/release/chat-server target/release/chat-client \
          target/release/chat-bot target/release/chat-bench target/release/chat-web /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libstdc++6 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV RUST_LOG=info
