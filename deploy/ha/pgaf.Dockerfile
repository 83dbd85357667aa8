# PostgreSQL 15 with pg_auto_failover from the PostgreSQL apt repository the official image already uses.
FROM postgres:15-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15-auto-failover pg-auto-failover-cli \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/pgaf && chown postgres:postgres /var/lib/postgresql/pgaf
USER postgres
WORKDIR /var/lib/postgresql
# pg_autoctl is the entry point of every container: `create monitor|postgres ... --run`.
ENTRYPOINT []
