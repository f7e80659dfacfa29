# Container image of kimi-gateway: one statically linked binary on `scratch`.
#
# Targets (docker build --target NAME, buildah bud --target NAME):
#   runtime           (default) builds the gateway from source, profile-guided
#                     (--build-arg PGO=0: a plain release build), then the image
#   runtime-prebuilt  packs a binary built outside the container:
#                       CARGO_TARGET_DIR=target/static \
#                       RUSTFLAGS="-C target-feature=+crt-static" \
#                       CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
#                       scripts/pgo-build.sh --target x86_64-unknown-linux-gnu \
#                         --bin kimi-gateway --bin mock-provider
#                       docker build --target runtime-prebuilt -t kimi-gateway .
#                     (--build-arg PREBUILT_DIR=... points at another directory,
#                     which .dockerignore must then let into the build context)
#   mock              the mock provider (all three providers on port 9000),
#                     for the offline Compose profile and demos
#   mock-prebuilt     the same from a prebuilt mock-provider binary
#
# The runtime image holds /kimi-gateway and /etc/kimi-gateway/kimi-gateway.toml
# only; it runs as UID/GID 65532, listens on 0.0.0.0:8080 and probes itself
# with `kimi-gateway healthcheck` (there is no shell or curl inside).

ARG RUST_IMAGE=rust:1.95-bookworm

# ---------------------------------------------------------------------------
# builder: static glibc binaries, with the dependencies in their own layer.
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG RUST_TARGET=x86_64-unknown-linux-gnu
# Static glibc binaries, without debug info or symbols (the image stays small).
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src

# 1. Dependencies only: the manifest, the lock file, and an empty stand-in for
#    every target the manifest names (library, binaries, benchmarks), so this
#    layer is rebuilt only when Cargo.toml or Cargo.lock change. The crates
#    are downloaded here; they are compiled here only for the plain build
#    (PGO=0): the profile-guided one compiles them with its own flags, twice,
#    and a build with these flags would be thrown away.
ARG PGO=1
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    { sed -n 's/^path *= *"\([^"]*\.rs\)".*/\1/p' Cargo.toml; \
      awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } \
           b && /^name *=/ { gsub(/^name *= *"|".*$/, ""); print "benches/" $0 ".rs" }' Cargo.toml; \
      echo src/lib.rs; echo src/main.rs; } \
    | sort -u | while read -r stub; do \
        mkdir -p "$(dirname "$stub")"; echo 'fn main() {}' > "$stub"; \
      done; \
    cargo fetch --locked --target "$RUST_TARGET"; \
    if [ "$PGO" != 1 ]; then \
      cargo build --release --locked --target "$RUST_TARGET" --bin kimi-gateway --bin mock-provider; \
    fi; \
    rm -rf src

# 2. The project's own code (the benchmark stand-ins stay: the manifest names
#    them). COPY keeps the files' original times, which may be older than the
#    stand-ins' build: touch them so cargo rebuilds. With PGO=1 (default) the
#    gateway is built profile-guided (scripts/pgo-build.sh: an instrumented
#    build, a training run against the mock provider on loopback, then the
#    optimised build; it installs Debian's llvm-N for llvm-profdata), which
#    compiles the dependencies twice; PGO=0 is the plain release build.
COPY src ./src
COPY benches/gateway.toml ./benches/gateway.toml
COPY scripts/pgo-build.sh ./scripts/pgo-build.sh
RUN set -eux; \
    find src -name '*.rs' -exec touch {} +; \
    if [ "$PGO" = 1 ]; then \
      scripts/pgo-build.sh --target "$RUST_TARGET" --bin kimi-gateway --bin mock-provider; \
      rm -rf target/pgo/generate /var/lib/apt/lists/*; \
    else \
      cargo build --release --locked --target "$RUST_TARGET" --bin kimi-gateway --bin mock-provider; \
    fi; \
    mkdir -p /out; \
    cp "target/$RUST_TARGET/release/kimi-gateway" "target/$RUST_TARGET/release/mock-provider" /out/; \
    /out/kimi-gateway --version; \
    for bin in /out/*; do \
      if readelf -l "$bin" | grep -q INTERP; then echo "$bin is not static" >&2; exit 1; fi; \
    done

# ---------------------------------------------------------------------------
# runtime-base: everything of the runtime image except the binary.
# ---------------------------------------------------------------------------
FROM scratch AS runtime-base
COPY --chmod=0444 deploy/config/kimi-gateway.toml /etc/kimi-gateway/kimi-gateway.toml
ENV KIMI_GATEWAY_LISTEN=0.0.0.0:8080 \
    KIMI_GATEWAY_CONFIG=/etc/kimi-gateway/kimi-gateway.toml \
    RUST_LOG=info
USER 65532:65532
EXPOSE 8080
# SIGTERM starts the graceful drain (30 s by default): give the container
# more than that to stop (docker run --stop-timeout 45, stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/kimi-gateway", "healthcheck"]
ENTRYPOINT ["/kimi-gateway"]

# ---------------------------------------------------------------------------
# runtime-prebuilt: the runtime image around a binary built outside Docker.
# ---------------------------------------------------------------------------
FROM runtime-base AS runtime-prebuilt
ARG PREBUILT_DIR=target/static/x86_64-unknown-linux-gnu/release
COPY --chmod=0555 ${PREBUILT_DIR}/kimi-gateway /kimi-gateway

# ---------------------------------------------------------------------------
# mock, mock-prebuilt: the mock provider, for offline stacks.
# ---------------------------------------------------------------------------
FROM scratch AS mock-base
USER 65532:65532
EXPOSE 9000
# mock-provider stops on SIGINT.
STOPSIGNAL SIGINT
ENTRYPOINT ["/mock-provider", "--listen", "0.0.0.0:9000", "--api-key", "mock-key"]

FROM mock-base AS mock-prebuilt
ARG PREBUILT_DIR=target/static/x86_64-unknown-linux-gnu/release
COPY --chmod=0555 ${PREBUILT_DIR}/mock-provider /mock-provider

FROM mock-base AS mock
COPY --from=builder --chmod=0555 /out/mock-provider /mock-provider

# ---------------------------------------------------------------------------
# runtime (default): the runtime image, built from source.
# ---------------------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=builder --chmod=0555 /out/kimi-gateway /kimi-gateway
