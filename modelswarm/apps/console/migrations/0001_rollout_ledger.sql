-- The rollout ledger: one row per deployment attempt of a model version.
CREATE TABLE rollouts (
    id            BIGSERIAL PRIMARY KEY,
    model         TEXT        NOT NULL CHECK (model ~ '^{{MODEL_NAME_PATTERN}}$'),
    from_version  TEXT,
    to_version    TEXT        NOT NULL CHECK (length(to_version) BETWEEN 1 AND 128),
    image         TEXT        NOT NULL,
    image_digest  TEXT        CHECK (image_digest IS NULL OR image_digest ~ '^{{DIGEST_PATTERN}}$'),
    actor         TEXT        NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL,
    result        TEXT        NOT NULL CHECK (result IN ('succeeded', 'rolled_back', 'failed', 'no_op')),
    message       TEXT        NOT NULL DEFAULT '',
    CHECK (finished_at >= started_at)
);
CREATE INDEX rollouts_model_started ON rollouts (model, started_at DESC);
