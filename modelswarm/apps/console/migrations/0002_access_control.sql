-- Access control: API keys (stored as SHA-256 digests only), console users (slow password hashes), browser
-- sessions (stored as digests), and the version of the key grants that NGINX on every node loads.

-- The application's login role: requests run as it, never as the owner (see migrations that follow for its
-- rights on the ledger). Created without LOGIN; the console sets LOGIN and its password at start from a swarm secret.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'console_app') THEN
        CREATE ROLE console_app NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO console_app;

CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    key_id      TEXT        NOT NULL UNIQUE CHECK (key_id ~ '^{{API_KEY_ID_PATTERN}}$'),
    digest      TEXT        NOT NULL UNIQUE CHECK (digest ~ '^[0-9a-f]{64}$'),
    name        TEXT        NOT NULL CHECK (name ~ '^{{PRINCIPAL_NAME_PATTERN}}$'),
    role        TEXT        NOT NULL CHECK (role IN ({{ROLES}})),
    models      TEXT[],     -- NULL: every model
    created_by  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    revoked_by  TEXT,
    CHECK (models IS NULL OR cardinality(models) > 0)
);
-- One working key per name: a name is one person or pipeline.
CREATE UNIQUE INDEX api_keys_one_active_per_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE users (
    name           TEXT        PRIMARY KEY CHECK (name ~ '^{{PRINCIPAL_NAME_PATTERN}}$'),
    role           TEXT        NOT NULL CHECK (role IN ({{USER_ROLES}})),
    password_hash  TEXT        NOT NULL,
    created_by     TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at    TIMESTAMPTZ
);

CREATE TABLE sessions (
    digest      TEXT        PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
    user_name   TEXT        NOT NULL REFERENCES users (name),
    csrf_token  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- One row: bumped in the same transaction as every key change, so NGINX and the CLI can tell which keys a node has.
-- It starts at the creation time in milliseconds: a database made again (restored, rebuilt) starts above every
-- version the nodes may still hold, so they take its grants instead of answering "not modified".
CREATE TABLE grants_state (
    one      BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    version  BIGINT  NOT NULL
);
INSERT INTO grants_state (version) VALUES ((extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);

GRANT SELECT, INSERT, UPDATE ON api_keys, users TO console_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO console_app;
GRANT SELECT, UPDATE ON grants_state TO console_app;
GRANT USAGE ON SEQUENCE api_keys_id_seq TO console_app;
