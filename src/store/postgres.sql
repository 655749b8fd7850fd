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
    last_used_at TIMESTAMPTZ
);

-- Listing an account's keys and counting them against its quota.
CREATE INDEX IF NOT EXISTS "api_keys_account_id_idx" ON "api_keys" (account_id);
