-- One database, one LOGIN role and one schema per service, and the pgvector extension.
--
-- docker compose runs this once, when the postgres volume is first initialised (it is
-- mounted into /docker-entrypoint-initdb.d), as the superuser in $POSTGRES_DB. For another
-- server, run it the same way with the four passwords in the environment:
--
--   AUTH_DB_PASSWORD=... INFERENCE_DB_PASSWORD=... EMBEDDINGS_DB_PASSWORD=... \
--   TELEMETRY_DB_PASSWORD=... psql "postgresql://postgres@HOST/platform" -f deploy/postgres/init.sql
--
-- Passwords are read with psql's \getenv (psql 15 or later); an unset one leaves its
-- variable undefined and the statement that uses it fails, which stops the script.
-- Each service's migrations (alembic upgrade head, as that service's role) create its
-- tables inside its own schema.

\set ON_ERROR_STOP on

CREATE EXTENSION IF NOT EXISTS vector;

-- Nobody creates objects in public; connecting to this database is granted per role.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CONNECT ON DATABASE :"DBNAME" FROM PUBLIC;

\getenv auth_password AUTH_DB_PASSWORD
\getenv inference_password INFERENCE_DB_PASSWORD
\getenv embeddings_password EMBEDDINGS_DB_PASSWORD
\getenv telemetry_password TELEMETRY_DB_PASSWORD

CREATE ROLE auth LOGIN PASSWORD :'auth_password';
CREATE ROLE inference LOGIN PASSWORD :'inference_password';
CREATE ROLE embeddings LOGIN PASSWORD :'embeddings_password';
CREATE ROLE telemetry LOGIN PASSWORD :'telemetry_password';

CREATE SCHEMA auth AUTHORIZATION auth;
CREATE SCHEMA inference AUTHORIZATION inference;
CREATE SCHEMA embeddings AUTHORIZATION embeddings;
CREATE SCHEMA telemetry AUTHORIZATION telemetry;

REVOKE ALL ON SCHEMA auth, inference, embeddings, telemetry FROM PUBLIC;

-- public holds the vector type and its operators; each role may use, not change, it.
GRANT USAGE ON SCHEMA public TO auth, inference, embeddings, telemetry;
GRANT CONNECT ON DATABASE :"DBNAME" TO auth, inference, embeddings, telemetry;
