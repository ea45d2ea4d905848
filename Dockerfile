# syntax=docker/dockerfile:1
#
# sendsms-whitelister: a fully static binary on distroless/static, running as uid 65532, for
# linux/amd64 and linux/arm64:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t IMAGE .
#   docker build -t sendsms-whitelister .            # the build machine's own platform
#
# The builder runs on the build machine's platform (BUILDPLATFORM) and cross-compiles for the
# platform asked for (TARGETARCH) with scripts/build-release.sh, the command that builds the
# release binaries: nothing runs emulated, and the image holds what the release attaches.
# scripts/check-image-recipe.sh replays the builder stage on machines without a Docker engine.

FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-bookworm AS builder
# Set by buildx (and by BuildKit for a plain `docker build`): amd64 or arm64.
ARG TARGETARCH
# The commit, for sendsms_whitelister_build_info (the release workflow sets it; build.rs reads it).
ARG REVISION=unknown
WORKDIR /src

# Toolchain layer: the Rust target and, for a foreign architecture, Debian's cross gcc.
COPY scripts/build-release.sh scripts/
RUN scripts/build-release.sh --setup "$TARGETARCH"

# Dependency layer: build every dependency against stub sources, so that editing src/
# does not recompile the dependency graph. Only Cargo.toml and Cargo.lock invalidate it.
COPY Cargo.toml Cargo.lock build.rs ./
# The tests' harness is a workspace member: cargo reads its manifest even to build the binary.
COPY tests/harness/Cargo.toml tests/harness/
RUN mkdir -p src tests/harness/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/harness/src/lib.rs \
    && scripts/build-release.sh --build "$TARGETARCH" \
    && rm -rf src target/*/release/.fingerprint/sendsms-whitelister-*

COPY src ./src
RUN SENDSMS_WHITELISTER_COMMIT="$REVISION" scripts/build-release.sh --build "$TARGETARCH" --out out/sendsms-whitelister \
    && mkdir state

# No --platform: the target platform's variant of the (multi-platform) base.
FROM gcr.io/distroless/static-debian13:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sendsms-whitelister" \
      org.opencontainers.image.description="Sidecar that keeps a sendSMS.ro API key's IP whitelist in step with the host's egress IP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sendsms-whitelister/sendsms-whitelister" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian13:nonroot"

# distroless/static ships /etc/ssl/certs/ca-certificates.crt, /etc/passwd (nonroot = 65532)
# and tzdata; the binary also carries its own webpki roots and needs nothing else.
COPY --from=builder /src/out/sendsms-whitelister /usr/local/bin/sendsms-whitelister
# The conventional SENDSMS_STATE_FILE directory, owned by the runtime user, so that a named
# volume mounted there (which starts as a copy of it) is writable without a root init step.
COPY --from=builder --chown=65532:65532 /src/state /var/lib/sendsms-whitelister

USER 65532:65532
# 9797: /healthz, /readyz, /status, /metrics. 9798: the gateway (SENDSMS_GATEWAY_LISTEN), off
# unless configured.
EXPOSE 9797 9798

# `health` exits 0 when http://127.0.0.1:9797/readyz answers 200: the container turns healthy
# once the egress IP is whitelisted and verified. The start period covers the verification
# timeout (120s by default); Docker Engine >= 25 probes every 2s meanwhile.
HEALTHCHECK --interval=30s --timeout=5s --start-period=3m --start-interval=2s --retries=3 \
    CMD ["/usr/local/bin/sendsms-whitelister", "health"]

ENTRYPOINT ["/usr/local/bin/sendsms-whitelister"]
CMD ["run"]
