#!/bin/sh
# Run once by the postgres image when it creates the database: let the standby of the `replica` profile stream
# from this server as the owner role (password-checked), from any address on the compose network.
set -e
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
