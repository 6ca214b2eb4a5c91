# syntax=docker/dockerfile:1
#
# Flashsale, embedded default (SQLite order store under /data).
#   docker build -t flashsale .
#   docker run -p 8080:8080 -v flashsale-data:/data \
#     -e FLASHSALE_ADMIN_TOKEN=... -e FLASHSALE_JWT_SECRET=... flashsale

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The context is trimmed by .dockerignore to the manifests, lock file and
# sources (src/, crates/ for the workspace's load tool, and tests/ and
# benches/ so every target Cargo.toml names resolves).
COPY . .
# Cache mounts keep the registry and the build directory between builds; the
# binary is copied out because the target mount is not part of the image.
# Only the server is built: the load tool (`flashsale bench`, the
# `flashsale-bench` binary) drives a server from outside and is not shipped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flashsale \
    && install -D -m 0755 target/release/flashsale /out/flashsale

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 flashsale \
    && useradd --system --uid 10001 --gid flashsale --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin flashsale \
    && install -d -o flashsale -g flashsale -m 0750 /data
COPY --from=builder /out/flashsale /usr/local/bin/flashsale

USER flashsale:flashsale
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENV RUST_LOG=info \
    FLASHSALE_LOG_FORMAT=json

# No curl in the image: bash's /dev/tcp speaks just enough HTTP/1.0.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# Exec form: flashsale is PID 1 and gets SIGTERM itself, so `docker stop`
# is a graceful stop (finish in-flight requests, flush every accepted order).
# --listen and --data-dir are fixed here; flags win over FLASHSALE_LISTEN and
# FLASHSALE_DATA_DIR. Every other setting can come from its variable.
STOPSIGNAL SIGTERM
ENTRYPOINT ["flashsale", "serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
