# PostgreSQL 15 from Debian's packages, for docker-compose.yml on machines
# that cannot pull the official image. It takes the official image's
# settings, so `postgres:15` can replace it unchanged:
#   POSTGRES_USER (default postgres), POSTGRES_DB (default: the user),
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (required), PGDATA
#   (default /var/lib/postgresql/data).
# Clients authenticate with scram-sha-256 passwords; nothing is trusted.
#
# Build it with scripts/server-image (tags viberglass-postgres:15).
FROM debian:bookworm-slim
LABEL io.viberglass.image=postgres
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/* \
 && find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'C.UTF-8' -exec rm -rf {} + \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 \
  CMD ["pg_isready", "-h", "127.0.0.1", "-q"]
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
