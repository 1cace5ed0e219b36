# The Viberglass server image: `viberglass serve` with git and the CA roots,
# as an unprivileged user, its state in the volume /var/lib/viberglass.
#
# Build it with scripts/server-image, which makes a build context holding the
# `viberglass` binary (the release build by default):
#
#   scripts/server-image                       # tags viberglass:latest
#
# Two stages: the first strips the binary and checks that it runs on this
# base (binutils stays behind in it); the second is the image.
#
# On a machine that can pull images this is a plain `docker build` from
# debian:bookworm-slim. Where no registry can be reached, scripts/server-image
# first makes debian:bookworm-slim from Debian's packages (debootstrap), so the
# same file builds offline.
#
# Configuration is the server's environment (see `viberglass config default`);
# secrets can come from files: SECRETS_ENCRYPTION_KEY_FILE, DATABASE_URL_FILE.
# Without DATABASE_URL it runs the embedded SQLite database in the volume.
FROM debian:bookworm-slim AS binary
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
COPY viberglass /viberglass
RUN strip --strip-unneeded /viberglass && /viberglass --version

FROM debian:bookworm-slim
LABEL io.viberglass.image=server \
      org.opencontainers.image.title="Viberglass" \
      org.opencontainers.image.description="Tickets in, pull requests out: the Viberglass agent orchestrator" \
      org.opencontainers.image.licenses="Apache-2.0"

# git for the server's own repository work (listing branches, the local workers' clones); no shell tools beyond
# the base's.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
           /usr/share/info/* /var/log/apt /var/log/dpkg.log

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/viberglass --create-home --shell /usr/sbin/nologin viberglass \
 && chmod 0700 /var/lib/viberglass

COPY --from=binary /viberglass /usr/local/bin/viberglass

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/viberglass
ENV VIBERGLASS_HOST=0.0.0.0 \
    VIBERGLASS_PORT=8888 \
    VIBERGLASS_DATA_DIR=/var/lib/viberglass \
    HOME=/var/lib/viberglass
VOLUME ["/var/lib/viberglass"]
EXPOSE 8888
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/viberglass", "health", "--ready"]
ENTRYPOINT ["/usr/local/bin/viberglass"]
CMD ["serve"]
