//! The command line's options and subcommands, and the parsers of their values.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tower_api_key::limit::RateLimit;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  2  usage error (a bad option or value, no store URL, or a URL that is not one of a
     store this build can use)
  3  not found: no such key in the account (to rotate: no such active key)
  4  refused by policy: the tier's key limit is reached, an unknown tier, or an invalid
     name, scope or expiry
  5  the store is unreachable or failing
  6  import: some rows were rejected (each told on stderr as `line N: reason`); the
     others were imported
  1  anything else (stdout cannot be written)

Store URLs: postgres://user:password@host/db (or postgresql://), redis://host:6379
(TLS, rediss://, is not supported yet), sqlite:///path/to/keys.db (add ?mode=rwc to create it).";

/// Issue, list, revoke, disable, enable, delete, rotate, top up and import API keys in a tower-api-key store.
#[derive(Debug, Parser)]
#[command(name = "tower-api-key", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The store's URL: postgres://, postgresql://, redis:// or sqlite:
    #[arg(
        long,
        env = "TOWER_API_KEY_STORE",
        hide_env_values = true,
        global = true
    )]
    pub store: Option<String>,
    /// PostgreSQL only: the table that holds the keys [default: api_keys]
    #[arg(long, global = true)]
    pub table: Option<String>,
    /// Redis only: the prefix of the store's Redis keys [default: tower-api-key]
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// How long to wait for the store, to connect and for each operation (`5s`, `500ms`)
    #[arg(long, global = true, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a key and print it, alone on its line; it is shown this once
    Create(Create),
    /// List an account's keys, revoked and expired ones included (never a key)
    List {
        /// The account
        #[arg(long)]
        account: String,
    },
    /// Show one key
    Get(Target),
    /// Revoke a key: it stops working at once, and its record stays
    Revoke(Target),
    /// Disable a key: it is refused until enabled again, and still counts toward the quota
    Disable(Target),
    /// Enable a disabled key again
    Enable(Target),
    /// Delete a key and its record
    Delete(Target),
    /// Replace an active key: print the new key; the old one works for the grace period
    Rotate {
        #[command(flatten)]
        target: Target,
        /// How long the old key keeps working (`3600`, `1h`, `7d`)
        #[arg(long, value_parser = duration)]
        grace: Duration,
    },
    /// Add credits to a key's balance (a key without one gets a balance of AMOUNT)
    TopUp {
        #[command(flatten)]
        target: Target,
        /// How many credits to add
        amount: u64,
    },
    /// Import the keys of another system from a JSON-lines or CSV file, in bulk
    #[command(after_help = IMPORT_FORMAT)]
    Import(Import),
}

const IMPORT_FORMAT: &str = "\
File format: one key a row, in JSON lines (.jsonl: one JSON object a line) or CSV (.csv: a
header row naming the columns, then one row a key; quote fields that hold commas). Fields:
  id          the key's id, kept as it is (required)
  account_id  its account (required)
  tier        its account's tier: free or pro (required)
  name        its name (required)
  created_at  when it was created, RFC 3339 in UTC: 2024-05-01T12:00:00Z (required)
  expires_at  when it stops working, likewise (optional; a time past imports it expired)
  key         the plaintext key: it must start with a --legacy-prefix (or be a key of
              this crate), and only its SHA-256 digest is stored
  sha256      or the key's SHA-256 digest alone, 64 hexadecimal digits (one of the two)
  mode        live (default) or test; a plaintext key's prefix must name the same
  scopes      scopes separated by spaces (JSON lines: also an array); none: full access
  hint        what listings show to recognise a key imported by digest (ak_...Xy12)

  {\"id\":\"old_1\",\"account_id\":\"acct_42\",\"tier\":\"pro\",\"name\":\"ci\",\"created_at\":\"2024-05-01T12:00:00Z\",\"key\":\"ak_9f8e7d6c5b4a3f2e1d0c\"}

  id,account_id,tier,name,created_at,expires_at,sha256,scopes
  old_2,acct_42,pro,\"deploy, prod\",2024-05-01T12:00:00Z,,<64 hex digits>,iocs:read keys:write

A key whose id or key is stored already is left as it is and counted as already present, so
running the same import twice imports nothing twice. Each rejected row is told on stderr as
`line N: reason` and the rest go on; progress goes to stderr every 10,000 rows, the totals to
stdout. Exit code 6 when some rows were rejected.";

#[derive(Debug, Args)]
pub struct Import {
    /// The file to import: .jsonl or .csv, or say which with --format
    pub file: std::path::PathBuf,
    /// The file's format, if its extension does not say
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Accept plaintext live keys that start with PREFIX (no checksum); repeat for more.
    /// The service's layer needs the same `KeyFormat::legacy_prefix` for them to authenticate
    #[arg(long = "legacy-prefix", value_name = "PREFIX")]
    pub legacy_prefixes: Vec<String>,
    /// Likewise, for plaintext test keys
    #[arg(long = "legacy-test-prefix", value_name = "PREFIX")]
    pub legacy_test_prefixes: Vec<String>,
    /// Do not count the tiers' key limits: a migration, whose accounts may hold more keys
    /// than their tier lets them create. Default: a key past its account's limit is rejected
    #[arg(long)]
    pub bypass_quota: bool,
}

/// The format of an import file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// One JSON object a line
    Jsonl,
    /// A header row, then one row a key
    Csv,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The account that holds the key
    #[arg(long)]
    pub account: String,
    /// The key's id (`key_...`, as `list` shows it)
    pub key_id: String,
}

#[derive(Debug, Args)]
pub struct Create {
    /// The account the key is for
    #[arg(long)]
    pub account: String,
    /// The account's tier, which bounds its active keys: free (3) or pro (50)
    #[arg(long)]
    pub tier: String,
    /// A name to recognise the key by
    #[arg(long)]
    pub name: String,
    /// Restrict the key to this scope (repeat for more); without it, full access
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Make a test key (sk_test_...) instead of a live one
    #[arg(long)]
    pub test: bool,
    /// Expire the key after this long: seconds, or `30d`, `12h`, `90min`
    #[arg(long, value_parser = duration)]
    pub expires_in: Option<Duration>,
    /// The key's own rate limit instead of its tier's: N/second, N/minute or N/hour
    #[arg(long, value_parser = rate_limit)]
    pub rate_limit: Option<RateLimit>,
    /// Give the key a balance of N credits, which metered requests spend
    #[arg(long, value_name = "N")]
    pub credits: Option<u64>,
    /// Set the balance back to N at 00:00 UTC every day
    #[arg(
        long,
        value_name = "N",
        requires = "credits",
        conflicts_with = "refill_monthly"
    )]
    pub refill_daily: Option<u64>,
    /// Set the balance back to N at 00:00 UTC on the 1st of every month
    #[arg(long, value_name = "N", requires = "credits")]
    pub refill_monthly: Option<u64>,
}

/// Seconds (`3600`) or a humantime duration (`1h`, `30d`, `90min`).
fn duration(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text)
            .map_err(|error| format!("{error}; give seconds (3600) or a duration (1h, 30d)")),
    }
}

/// `N/second`, `N/minute` or `N/hour` (also `s`, `sec`, `m`, `min`, `h`), N at least 1.
fn rate_limit(text: &str) -> Result<RateLimit, String> {
    let usage = "give N/second, N/minute or N/hour, N at least 1 (e.g. 100/minute)";
    let (requests, period) = text.split_once('/').ok_or(usage)?;
    let requests: u32 = requests.trim().parse().map_err(|_| usage)?;
    if requests == 0 {
        return Err(usage.to_owned());
    }
    match period.trim() {
        "second" | "sec" | "s" => Ok(RateLimit::per_second(requests)),
        "minute" | "min" | "m" => Ok(RateLimit::per_minute(requests)),
        "hour" | "h" => Ok(RateLimit::per_hour(requests)),
        _ => Err(usage.to_owned()),
    }
}
