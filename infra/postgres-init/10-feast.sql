-- Runs once, on an empty Postgres data directory (compose mounts this folder at /docker-entrypoint-initdb.d;
-- infra/k8s/postgres.yaml embeds this file). POSTGRES_DB creates `prefect`; the Feast registry gets its own.
CREATE DATABASE feast;
