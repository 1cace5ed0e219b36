# The Viberglass worker image: `viberglass worker` with git and the agent CLIs,
# running as an unprivileged user. Docker (and later Kubernetes) clankers run
# one container of it per job.
#
# Build it with scripts/worker-image, which passes the pinned versions from
# scripts/versions.sh and a build context holding the `viberglass` binary:
#
#   scripts/worker-image                      # tags viberglass-worker:latest
#
# The build context holds the `viberglass` binary and an `extra-ca/` directory
# (empty, or the certificates of a TLS-inspecting proxy the build and the
# agents must trust: scripts/worker-image copies $VIBERGLASS_EXTRA_CA_CERTS or
# $NODE_EXTRA_CA_CERTS there).
#
# On a machine that can pull images this is a plain `docker build` from
# debian:bookworm-slim. Where no registry can be reached, scripts/worker-image
# first makes debian:bookworm-slim itself from Debian's packages (debootstrap)
# and imports it, so the same file builds offline.
FROM debian:bookworm-slim
LABEL io.viberglass.image=worker

ARG CLAUDE_CODE_VERSION
ARG CODEX_VERSION
ARG QWEN_CODE_VERSION
ARG GEMINI_CLI_VERSION
ARG OPENCODE_VERSION

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates git nodejs npm \
 && rm -rf /var/lib/apt/lists/*

# Certificates to trust besides Debian's (for npm now, and the agents later).
COPY extra-ca/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null 2>&1 || true
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt

RUN npm install --global --no-audit --no-fund --omit=dev \
      "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" "@openai/codex@${CODEX_VERSION}" \
      "@qwen-code/qwen-code@${QWEN_CODE_VERSION}" "@google/gemini-cli@${GEMINI_CLI_VERSION}" \
      "opencode-ai@${OPENCODE_VERSION}" \
 && npm cache clean --force

# The worker runs as this user; /workspace is its job's workspace (the token
# file is copied in there, owned by it, and deleted once read).
RUN useradd --create-home --uid 10001 --user-group viberator \
 && mkdir /workspace && chown viberator:viberator /workspace

COPY viberglass /usr/local/bin/viberglass

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /workspace
ENV HOME=/home/viberator
ENTRYPOINT ["/usr/local/bin/viberglass"]
CMD ["worker", "--self-check"]
