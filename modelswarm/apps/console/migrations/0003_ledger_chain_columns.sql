-- The ledger becomes a hash chain (issue 12): who recorded each entry (the authenticated identity, never the
-- request body), a free-text note, when it entered the ledger, and the chain's two hashes. The hashes are defined in
-- modelswarm/ledgerchain.py, the one rule the console and the CLI's verifier share; the database only stores them.
-- Rows that exist already keep their actor, are marked 'legacy' (recorded before identities existed) and are chained
-- by the next migration (a Python step), after which the hashes become NOT NULL.
ALTER TABLE rollouts
    ADD COLUMN actor_kind  TEXT        NOT NULL DEFAULT 'legacy' CHECK (actor_kind IN ('key', 'user', 'legacy')),
    ADD COLUMN note        TEXT        NOT NULL DEFAULT '' CHECK (length(note) <= 512),
    ADD COLUMN recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN prev_hash   TEXT        CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    ADD COLUMN entry_hash  TEXT        CHECK (entry_hash ~ '^[0-9a-f]{64}$');
-- New entries must say what kind of identity recorded them; only the rows above are 'legacy' by default.
ALTER TABLE rollouts ALTER COLUMN actor_kind DROP DEFAULT;
