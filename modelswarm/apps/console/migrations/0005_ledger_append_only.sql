-- The ledger is append-only, enforced twice: the application's role has no UPDATE/DELETE/TRUNCATE privilege on it,
-- and triggers refuse those operations even for the owner. A superuser can still disable the triggers; what they
-- change then is caught by `modelswarm ledger verify` (the hash chain, and an anchor kept from an earlier run).

-- Every entry is chained (migration 4 filled the existing ones); no entry may lack its hashes, and two entries can
-- never follow the same predecessor, so the chain cannot fork even if an insert bypassed the console's lock.
ALTER TABLE rollouts ALTER COLUMN prev_hash SET NOT NULL;
ALTER TABLE rollouts ALTER COLUMN entry_hash SET NOT NULL;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_prev_hash_unique UNIQUE (prev_hash);
ALTER TABLE rollouts ADD CONSTRAINT rollouts_entry_hash_unique UNIQUE (entry_hash);

CREATE FUNCTION rollouts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the rollout ledger is append-only: % refused', TG_OP
        USING HINT = 'entries are never changed or removed; record a new entry instead';
END;
$$;
CREATE TRIGGER rollouts_no_update_or_delete BEFORE UPDATE OR DELETE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION rollouts_append_only();
CREATE TRIGGER rollouts_no_truncate BEFORE TRUNCATE ON rollouts
    FOR EACH STATEMENT EXECUTE FUNCTION rollouts_append_only();

-- An insert must extend the chain at its end: its prev_hash is the newest entry's entry_hash (or 64 zeros for the
-- first) and its id is above every other, so id order is chain order. The entry_hash itself is checked by the
-- verifier: its rule lives in Python, in one place.
CREATE FUNCTION rollouts_extend_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_id   BIGINT;
    last_hash TEXT;
BEGIN
    SELECT id, entry_hash INTO last_id, last_hash FROM rollouts ORDER BY id DESC LIMIT 1;
    IF NEW.prev_hash IS DISTINCT FROM coalesce(last_hash, repeat('0', 64)) THEN
        RAISE EXCEPTION 'ledger entry % does not extend the chain: prev_hash must be the newest entry''s hash',
            NEW.id;
    END IF;
    IF last_id IS NOT NULL AND NEW.id <= last_id THEN
        RAISE EXCEPTION 'ledger entry % does not extend the chain: its id must be above %', NEW.id, last_id;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER rollouts_extend_chain BEFORE INSERT ON rollouts
    FOR EACH ROW EXECUTE FUNCTION rollouts_extend_chain();

-- The application's role (the console's requests log in as it; the console sets LOGIN and its password at start).
-- Roles are cluster-wide, so create it only where it is missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'console_app') THEN
        CREATE ROLE console_app NOLOGIN;
    END IF;
END;
$$;
GRANT USAGE ON SCHEMA public TO console_app;
REVOKE ALL ON rollouts FROM PUBLIC;
REVOKE ALL ON rollouts FROM console_app;
GRANT SELECT, INSERT ON rollouts TO console_app;
REVOKE ALL ON SEQUENCE rollouts_id_seq FROM console_app;
GRANT USAGE ON SEQUENCE rollouts_id_seq TO console_app;
-- The health check reads the schema version.
GRANT SELECT ON schema_migrations TO console_app;
