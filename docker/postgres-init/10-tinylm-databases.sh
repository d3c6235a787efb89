#!/usr/bin/env bash
# Runs once, on the first start of an empty data volume (postgres image's /docker-entrypoint-initdb.d).
# Creates one login role and one database per consumer, so MLflow and Optuna cannot touch each other's tables:
#   mlflow  (owner $MLFLOW_DB_USER)  <- mlflow server --backend-store-uri
#   optuna  (owner $OPTUNA_DB_USER)  <- TINYLM_OPTUNA_STORAGE / optuna-dashboard
# Passwords come from the container environment (docker/.env), never from this file. psql's :'var' / :"var"
# quoting keeps any character in them safe.
set -euo pipefail

: "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}" "${OPTUNA_DB_USER:?}" "${OPTUNA_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v mlflow_user="$MLFLOW_DB_USER" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v optuna_user="$OPTUNA_DB_USER" -v optuna_password="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER :"mlflow_user";
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
CREATE ROLE :"optuna_user" LOGIN PASSWORD :'optuna_password';
CREATE DATABASE optuna OWNER :"optuna_user";
REVOKE ALL ON DATABASE optuna FROM PUBLIC;
SQL
