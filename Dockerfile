# syntax=docker/dockerfile:1
#
# sendsms-whitelister: a fully static binary on distroless/static, running as uid 65532.
#
#   docker build -t sendsms-whitelister .
#
# The build command below is the one scripts/check-image-recipe.sh runs (and asserts is
# the same) to prove this recipe on machines without a Docker engine.

# The binary is built for x86_64 only, so both stages pin linux/amd64: on an arm64 host
# (Apple silicon, Graviton) the build then runs under emulation and still yields a working
# amd64 image, instead of an arm64 base holding an x86_64 binary.
# hadolint ignore=DL3029
FROM --platform=linux/amd64 rust:1.95.0-slim-bookworm AS builder
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so that editing src/
# does not recompile the dependency graph. Only Cargo.toml and Cargo.lock invalidate it.
COPY Cargo.toml Cargo.lock ./
# The tests' harness is a workspace member: cargo reads its manifest even to build the binary.
COPY tests/harness/Cargo.toml tests/harness/
RUN mkdir -p src tests/harness/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/harness/src/lib.rs \
    && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu \
    && rm -rf src target/x86_64-unknown-linux-gnu/release/.fingerprint/sendsms-whitelister-*

COPY src ./src
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu \
    && mkdir state

# Pinned to linux/amd64 like the builder: the binary inside is x86_64.
# hadolint ignore=DL3029
FROM --platform=linux/amd64 gcr.io/distroless/static-debian13:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sendsms-whitelister" \
      org.opencontainers.image.description="Sidecar that keeps a sendSMS.ro API key's IP whitelist in step with the host's egress IP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian13:nonroot"

# distroless/static ships /etc/ssl/certs/ca-certificates.crt, /etc/passwd (nonroot = 65532)
# and tzdata; the binary also carries its own webpki roots and needs nothing else.
COPY --from=builder /src/target/x86_64-unknown-linux-gnu/release/sendsms-whitelister /usr/local/bin/sendsms-whitelister
# The conventional SENDSMS_STATE_FILE directory, owned by the runtime user, so that a named
# volume mounted there (which starts as a copy of it) is writable without a root init step.
COPY --from=builder --chown=65532:65532 /src/state /var/lib/sendsms-whitelister

USER 65532:65532
EXPOSE 9797

# `health` exits 0 when http://127.0.0.1:9797/readyz answers 200: the container turns healthy
# once the egress IP is whitelisted and verified. The start period covers the verification
# timeout (120s by default); Docker Engine >= 25 probes every 2s meanwhile.
HEALTHCHECK --interval=30s --timeout=5s --start-period=3m --start-interval=2s --retries=3 \
    CMD ["/usr/local/bin/sendsms-whitelister", "health"]

ENTRYPOINT ["/usr/local/bin/sendsms-whitelister"]
CMD ["run"]
