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
    scopes TEXT[],
    -- The key's own rate limit, `{"requests": 60, "period_secs": 60, "burst": 60}`; NULL for
    -- its tier's.
    rate_limit JSONB,
    -- The key's balance of credits (`Credits`); NULL if its requests are not metered. Amounts
    -- above the largest BIGINT are kept as the largest BIGINT.
    credits_remaining BIGINT CHECK (credits_remaining >= 0),
    -- Its refill: the balance is set back to the amount at the start of every 'day' or 'month'
    -- (UTC); both NULL without one.
    credits_refill_amount BIGINT CHECK (credits_refill_amount >= 0),
    credits_refill_every TEXT CHECK (credits_refill_every IN ('day', 'month')),
    -- The start of the period of the last refill (or the key's creation).
    credits_refilled_at TIMESTAMPTZ,
    -- Since when the key is disabled (refused until enabled again); NULL if it is not.
    disabled_at TIMESTAMPTZ
);

-- Tables created before keys had modes, scopes, rate limits, credits and could be disabled get
-- those columns: their keys are live, with full access, their tier's rate limit, no balance,
-- and enabled. Looked up
-- first, because ALTER TABLE would lock out every key lookup, at every start, even when there
-- is nothing to add.
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = '"api_keys"'::regclass
          AND attname IN ('mode', 'scopes', 'rate_limit', 'credits_remaining',
                          'credits_refill_amount', 'credits_refill_every',
                          'credits_refilled_at', 'disabled_at')
          AND NOT attisdropped) < 8
    THEN
        ALTER TABLE "api_keys"
            ADD COLUMN IF NOT EXISTS mode TEXT NOT NULL DEFAULT 'live'
                CHECK (mode IN ('live', 'test')),
            ADD COLUMN IF NOT EXISTS scopes TEXT[],
            ADD COLUMN IF NOT EXISTS rate_limit JSONB,
            ADD COLUMN IF NOT EXISTS credits_remaining BIGINT
                CHECK (credits_remaining >= 0),
            ADD COLUMN IF NOT EXISTS credits_refill_amount BIGINT
                CHECK (credits_refill_amount >= 0),
            ADD COLUMN IF NOT EXISTS credits_refill_every TEXT
                CHECK (credits_refill_every IN ('day', 'month')),
            ADD COLUMN IF NOT EXISTS credits_refilled_at TIMESTAMPTZ,
            ADD COLUMN IF NOT EXISTS disabled_at TIMESTAMPTZ;
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

-- Push invalidation (`PgKeyStore::changes`): every change to a key's record but its last use
-- and its balance (what requests write: spends, and top-ups and refills with them, decide no
-- authentication), made through the crate or with plain SQL, notifies the channel "api_keys_changes" with the
-- key's lookup id in hex, and each instance's cache evicts that key. Created unless it exists,
-- so that a start takes no lock that would hold up writes.
CREATE OR REPLACE FUNCTION "api_keys_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE names no row: every instance forgets everything it cached.
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(TG_TABLE_NAME || '_changes', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE'
        AND (to_jsonb(OLD) - '{last_used_at,credits_remaining,credits_refilled_at}'::text[])
          = (to_jsonb(NEW) - '{last_used_at,credits_remaining,credits_refilled_at}'::text[])
    THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify(TG_TABLE_NAME || '_changes', encode(OLD.lookup_id, 'hex'));
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.lookup_id <> OLD.lookup_id) THEN
        PERFORM pg_notify(TG_TABLE_NAME || '_changes', encode(NEW.lookup_id, 'hex'));
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    -- tgtype's bit 1 marks a row trigger, bit 32 a TRUNCATE trigger.
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = '"api_keys"'::regclass
                     AND tgfoid = '"api_keys_notify"'::regproc AND tgtype & 1 = 1) THEN
        CREATE TRIGGER "api_keys_notify" AFTER INSERT OR UPDATE OR DELETE ON "api_keys"
            FOR EACH ROW EXECUTE FUNCTION "api_keys_notify"();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = '"api_keys"'::regclass
                     AND tgfoid = '"api_keys_notify"'::regproc AND tgtype & 32 = 32) THEN
        CREATE TRIGGER "api_keys_notify_truncate" AFTER TRUNCATE ON "api_keys"
            FOR EACH STATEMENT EXECUTE FUNCTION "api_keys_notify"();
    END IF;
END
$$;
