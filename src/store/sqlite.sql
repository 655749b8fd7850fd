-- The schema of `SqliteKeyStore` (tower-api-key, feature `sqlite`). `SqliteKeyStore::migrate`
-- applies it; to apply it with your own migration tool instead, copy it as it is. Every
-- statement is idempotent.
--
-- The columns are those of `PgKeyStore`, in SQLite's types. STRICT: SQLite refuses a value of
-- the wrong type rather than storing it as it comes (SQLite 3.37 or later; sqlx bundles one).

CREATE TABLE IF NOT EXISTS api_keys (
    -- The key's public id (`KeyId`). NOT NULL spelled out: SQLite would let a NULL into a
    -- TEXT PRIMARY KEY.
    key_id TEXT NOT NULL PRIMARY KEY,
    -- The first 16 bytes of the key's SHA-256 digest: what requests look keys up by. Bytes,
    -- not hex: the unique index compares them as they are, at half the size.
    lookup_id BLOB NOT NULL UNIQUE,
    -- The whole SHA-256 digest (32 bytes), which the layer compares in constant time.
    digest BLOB NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    -- JSON.
    metadata TEXT,
    -- A non-secret reminder of the key: its prefix and last four characters.
    hint TEXT,
    -- Times in integer microseconds since the Unix epoch (negative before 1970): exact, and
    -- compared as integers, where text would have to agree on one format forever.
    created_at INTEGER,
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER,
    -- 'live' or 'test' (`KeyMode`).
    mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test')),
    -- The scopes of a restricted key, as a sorted JSON array of strings; NULL for a key with
    -- full access.
    scopes TEXT,
    -- The key's own rate limit, as JSON: `{"requests": 60, "period_secs": 60, "burst": 60}`;
    -- NULL for its tier's.
    rate_limit TEXT,
    -- The key's balance of credits (`Credits`); NULL if its requests are not metered. Amounts
    -- above the largest INTEGER are kept as the largest INTEGER.
    credits_remaining INTEGER CHECK (credits_remaining >= 0),
    -- Its refill: the balance is set back to the amount at the start of every 'day' or 'month'
    -- (UTC); both NULL without one.
    credits_refill_amount INTEGER CHECK (credits_refill_amount >= 0),
    credits_refill_every TEXT CHECK (credits_refill_every IN ('day', 'month')),
    -- The start of the period of the last refill (or the key's creation), in microseconds.
    credits_refilled_at INTEGER,
    -- Since when the key is disabled (refused until enabled again), in microseconds; NULL if
    -- it is not.
    disabled_at INTEGER
) STRICT;

-- SQLite has no ADD COLUMN IF NOT EXISTS: `SqliteKeyStore::migrate` adds the columns from
-- `rate_limit` on, as written above, to a table created before keys had rate limits,
-- credits and could be disabled (ALTER TABLE api_keys ADD COLUMN ..., for each column the table lacks).

-- Listing an account's keys.
CREATE INDEX IF NOT EXISTS api_keys_account_id_idx ON api_keys (account_id);

-- Counting an account's active keys against its quota: revoked keys are not in this index, and
-- expired ones are skipped by the range scan, so the count reads none of the account's history.
-- A key without expiry sorts last, as the largest integer.
CREATE INDEX IF NOT EXISTS api_keys_active_idx ON api_keys
    (account_id, coalesce(expires_at, 9223372036854775807))
    WHERE revoked_at IS NULL;
