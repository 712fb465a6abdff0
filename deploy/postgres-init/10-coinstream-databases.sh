#!/bin/sh
# Per service (wallet, gifts, payouts): its database, owned by its migration role, and the role the service runs as.
# Run once, as the superuser, by the official postgres image on an empty data volume (/docker-entrypoint-initdb.d:
# compose.yaml and the Kubernetes dev overlay mount this file); tests/integration/test_database_roles.py runs it
# against the embedded PostgreSQL. Production on CloudNativePG declares the same roles and databases instead
# (deploy/kubernetes/overlays/prod/postgres.yaml).
#
#   coinstream_<service>_migrator  owns the database, so it alone changes the schema: `python -m services.<service>
#                                  migrate` (a one-shot compose service, a Kubernetes Job) logs in as it.
#   coinstream_<service>           the service; may connect, and reads and writes rows once `migrate` has granted
#                                  them (COINSTREAM_DB_RUNTIME_ROLE); it can create, alter or drop nothing.
#
# Passwords from the environment: DB_<SERVICE>_PASSWORD and DB_<SERVICE>_MIGRATOR_PASSWORD.
# They reach psql through its environment (\getenv), never its command line. psql connects to the server the image's
# entrypoint started for the init scripts: on its socket in /var/run/postgresql (PGHOST when set, as in the tests).
set -eu
for service in wallet gifts payouts; do
    upper=$(printf '%s' "$service" | tr '[:lower:]' '[:upper:]')
    eval "runtime_password=\${DB_${upper}_PASSWORD:?DB_${upper}_PASSWORD is not set}"
    eval "migrator_password=\${DB_${upper}_MIGRATOR_PASSWORD:?DB_${upper}_MIGRATOR_PASSWORD is not set}"
    RUNTIME_PASSWORD="$runtime_password" MIGRATOR_PASSWORD="$migrator_password" \
        psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        --host "${PGHOST:-/var/run/postgresql}" \
        --set database="coinstream_$service" --set runtime="coinstream_$service" \
        --set migrator="coinstream_${service}_migrator" <<'SQL'
\getenv runtime_password RUNTIME_PASSWORD
\getenv migrator_password MIGRATOR_PASSWORD
CREATE ROLE :"migrator" LOGIN PASSWORD :'migrator_password';
CREATE ROLE :"runtime" LOGIN PASSWORD :'runtime_password';
CREATE DATABASE :"database" OWNER :"migrator";
SQL
done
