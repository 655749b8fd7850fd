-- The schema of `PgKeyStore` (tower-api-key, feature `postgres`). `PgKeyStore::migrate` applies
-- it; to apply it with your own migration tool instead, copy it as it is. Every statement is
-- idempotent. For a table of another name, `PgKeyStore::table` replaces "api_keys" in each
-- quoted name below.

CREATE TABLE IF NOT EXISTS "api_keys" (
    -- The key's public id (`KeyId`).
    key_id TEXT PRIMARY KEY,
    -- The first 16 bytes of the key's SHA-256 digest: what requests look keys up by.
    lookup_id BYTEA NOT NULL UNIQUE,
    -- The whole SHA-256 digest (32 bytes), which the layer compares in constant time.
    digest BYTEA NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    metadata JSONB,
    -- A non-secret reminder of the key: its prefix and last four characters.
    hint TEXT,
    created_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    -- 'live' or 'test' (`KeyMode`).
    mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test')),
    -- The scopes of a restricted key, sorted; NULL for a key with full access.
    scopes TEXT[]
);

-- Tables created before keys had modes and scopes get both columns: their keys are live, with
-- full access. Looked up first, because ALTER TABLE would lock out every key lookup, at every
-- start, even when there is nothing to add.
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = '"api_keys"'::regclass
          AND attname IN ('mode', 'scopes') AND NOT attisdropped) < 2
    THEN
        ALTER TABLE "api_keys"
            ADD COLUMN IF NOT EXISTS mode TEXT NOT NULL DEFAULT 'live'
                CHECK (mode IN ('live', 'test')),
            ADD COLUMN IF NOT EXISTS scopes TEXT[];
    END IF;
END
$$;

-- Listing an account's keys.
CREATE INDEX IF NOT EXISTS "api_keys_account_id_idx" ON "api_keys" (account_id);

-- Counting an account's active keys against its quota: revoked keys are not in this index, and
-- expired ones are skipped by the range scan, so the count reads none of the account's history.
CREATE INDEX IF NOT EXISTS "api_keys_active_idx" ON "api_keys"
    (account_id, (coalesce(expires_at, 'infinity')))
    WHERE revoked_at IS NULL;
