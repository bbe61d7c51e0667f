#!/bin/sh
# Runs once, when the official postgres image initialises an empty data volume:
# the read-only role the exporter and Grafana's PostgreSQL data source log in
# as. The tables do not exist yet (the seed service creates them as the owner),
# so SELECT is granted through default privileges for the owner's new tables.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader_password="$CREDIT_READER_PASSWORD" <<'SQL'
CREATE ROLE credit_reader LOGIN PASSWORD :'reader_password';
ALTER ROLE credit_reader SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"DBNAME" TO credit_reader;
GRANT USAGE ON SCHEMA public TO credit_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO credit_reader;
-- the event engine waits for transactions still open below its read horizon
GRANT pg_monitor TO credit_reader;
SQL
