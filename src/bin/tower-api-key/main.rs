//! `tower-api-key`: issue, list, revoke, disable, enable, delete, rotate, top up and import API keys in a
//! PostgreSQL, Redis or SQLite store, without writing code.
//!
//! ```text
//! cargo install tower-api-key --features cli
//! export TOWER_API_KEY_STORE=postgres://app@127.0.0.1/app   # or pass --store <URL>
//! tower-api-key create --account acct_42 --tier free --name ci > key.txt
//! tower-api-key list --account acct_42
//! tower-api-key rotate --account acct_42 key_... --grace 1h
//! tower-api-key revoke --account acct_42 key_...
//! tower-api-key disable --account acct_42 key_...          # and `enable` to undo it
//! tower-api-key import --legacy-prefix ak_ old-keys.jsonl      # or .csv; --bypass-quota
//! ```
//!
//! The store is named by URL: `postgres://` or `postgresql://` (a `PgKeyStore`, in table
//! `--table`, `api_keys` by default, whose schema is applied first), `redis://` (not yet `rediss://`)
//! (a `RedisKeyStore`, under `--prefix`, `tower-api-key` by default), or `sqlite:` (a
//! `SqliteKeyStore`, schema applied first; add `?mode=rwc` to create a missing file). Everything
//! goes through the crate's `KeyManager`, with the default tiers (`free`: 3 active keys,
//! `pro`: 50).
//!
//! `create` and `rotate` print the new key alone on its line on stdout, and nothing else there;
//! the key is stored nowhere, so keep it. Other text goes to stderr. With `--json`, every
//! command prints one JSON document on stdout instead (`create` and `rotate`:
//! `{"key": "...", "info": {...}}`). No output ever shows a key other than the one just made,
//! nor the store's password.
//!
//! # Exit codes
//!
//! | Code | Meaning                                                                      |
//! |------|------------------------------------------------------------------------------|
//! | 0    | success                                                                      |
//! | 2    | usage error: a bad option or value, no store URL, a URL that is not one of a store this build can use |
//! | 3    | not found: no such key in the account (to rotate: no such active key)        |
//! | 4    | refused by policy: the tier's key limit is reached, an unknown tier, an invalid name, scope or expiry |
//! | 5    | the store is unreachable or failing                                          |
//! | 6    | `import`: some rows were rejected (each told on stderr); the others were imported |
//! | 1    | anything else (stdout cannot be written)                                     |
//!
//! Errors go to stderr, one line beginning with `error: `, saying what to do.
//!
//! # Importing keys
//!
//! `import FILE` keeps the keys of another system: one key a row, in JSON lines (`.jsonl`) or
//! CSV (`.csv`, a header row naming the columns; `--format` when the extension does not say),
//! with the fields `id`, `account_id`, `tier`, `name`, `created_at` (RFC 3339, UTC), and
//! optionally `expires_at`, `mode` (`live` or `test`), `scopes` (separated by spaces, or a JSON
//! array) and `hint`; and either `key`, the plaintext key (its prefix given with
//! `--legacy-prefix`, as the service's `KeyFormat::legacy_prefix`; only its digest is stored),
//! or `sha256`, its SHA-256 digest in hex. `import --help` shows an example of each format.
//!
//! Rows go to the store 1,000 at a time (one transaction each in PostgreSQL and SQLite).
//! Each key counts against its account's tier limit unless `--bypass-quota` (a migration).
//! A key whose id or key is stored already is left as it is and counted as already present:
//! running the same import twice imports nothing twice, so an import stopped by a failing store
//! is finished by running it again. Each rejected row is told on stderr as `line N: reason`,
//! and the others go on; progress goes to stderr every 10,000 rows, and the totals to stdout
//! (`imported N, already present N, rejected N`, or with `--json`
//! `{"rows", "imported", "already_present", "rejected"}`). The exit code is 6 when some rows were
//! rejected.

mod args;
mod import;
mod output;
mod store;

use std::process::ExitCode;

use clap::Parser;
use tower_api_key::access::KeyMode;
use tower_api_key::limit::{Credits, Refill};
use tower_api_key::manage::ManageError;
use tower_api_key::store::WritableKeyStore;
use tower_api_key::{KeyId, KeyManager, NewKey, Tier};

use args::{Cli, Command, Create};

/// Why the command failed: the exit code and the message (without `error: `).
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const STORE: u8 = 5;
    pub const ROWS_REJECTED: u8 = 6;

    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let connection = match store::Connection::parse(&cli) {
        Ok(connection) => connection,
        Err(failure) => return fail(&failure, None),
    };
    let result = match connection.open(&cli).await {
        Ok(store::Opened::Postgres(store)) => run(KeyManager::new(store), &cli).await,
        Ok(store::Opened::Redis(store)) => run(KeyManager::new(store), &cli).await,
        Ok(store::Opened::Sqlite(store)) => run(KeyManager::new(store), &cli).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure, Some(&connection)),
    }
}

/// Prints the failure to stderr, with the store's password scrubbed, and gives its exit code.
fn fail(failure: &Failure, connection: Option<&store::Connection>) -> ExitCode {
    let message = match connection {
        Some(connection) => connection.scrub(&failure.message),
        None => failure.message.clone(),
    };
    eprintln!("error: {message}");
    ExitCode::from(failure.code)
}

async fn run<S: WritableKeyStore>(keys: KeyManager<S>, cli: &Cli) -> Result<(), Failure> {
    let json = cli.json;
    match &cli.command {
        Command::Create(create) => {
            let account = &create.account;
            let created = keys.create(new_key(create)).await;
            let created = created.map_err(|error| refusal(error, account, None))?;
            output::created(&created, json, "created")
        }
        Command::List { account } => {
            let keys = keys
                .list(account)
                .await
                .map_err(|e| refusal(e, account, None))?;
            if keys.is_empty() && !json {
                eprintln!("the account {account} has no keys");
            }
            output::list(&keys, json)
        }
        Command::Get(target) => {
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let info = keys.get(account, &id).await;
            output::info(&info.map_err(|e| refusal(e, account, Some(&id)))?, json)
        }
        Command::Revoke(target) => {
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let info = keys.revoke(account, &id).await;
            let info = info.map_err(|e| refusal(e, account, Some(&id)))?;
            if !json {
                eprintln!("revoked {id}: it is refused from now on");
            }
            output::info(&info, json)
        }
        Command::Disable(target) | Command::Enable(target) => {
            let disable = matches!(cli.command, Command::Disable(_));
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let info = if disable {
                keys.disable(account, &id).await
            } else {
                keys.enable(account, &id).await
            };
            let info = info.map_err(|e| refusal(e, account, Some(&id)))?;
            if !json {
                match disable {
                    true => eprintln!("disabled {id}: it is refused until enabled again"),
                    false => eprintln!("enabled {id}"),
                }
            }
            output::info(&info, json)
        }
        Command::Delete(target) => {
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let deleted = keys.delete(account, &id).await;
            deleted.map_err(|e| refusal(e, account, Some(&id)))?;
            output::deleted(account, &id, json)
        }
        Command::Rotate { target, grace } => {
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let created = keys.rotate(account, &id, *grace).await;
            let created = created.map_err(|error| match error {
                // Only an active key can be rotated: say so, rather than "no such key".
                ManageError::NotFound => Failure::new(
                    Failure::NOT_FOUND,
                    format!(
                        "the account {account} has no active key {id} (revoked, expired, \
                         already rotated out, or unknown); `tower-api-key list --account \
                         {account}` shows its keys"
                    ),
                ),
                error => refusal(error, account, Some(&id)),
            })?;
            let note = format!(
                "rotated {id}, which keeps working for {}",
                humantime::format_duration(*grace)
            );
            output::created(&created, json, &note)
        }
        Command::TopUp { target, amount } => {
            let (account, id) = (&target.account, KeyId::new(target.key_id.as_str()));
            let info = keys.top_up(account, &id, *amount).await;
            output::info(&info.map_err(|e| refusal(e, account, Some(&id)))?, json)
        }
        Command::Import(options) => {
            let keys = keys.key_format(import::format(options)?);
            import::run(&keys, options, json).await
        }
    }
}

fn new_key(create: &Create) -> NewKey {
    let tier = match create.tier.as_str() {
        "free" => Tier::FREE,
        "pro" => Tier::PRO,
        other => Tier::new(other.to_owned()),
    };
    let mut new = NewKey::new(create.account.as_str(), tier, create.name.as_str());
    if !create.scopes.is_empty() {
        new = new.scopes(create.scopes.iter().cloned());
    }
    if create.test {
        new = new.mode(KeyMode::Test);
    }
    if let Some(lifetime) = create.expires_in {
        new = new.expires_in(lifetime);
    }
    if let Some(limit) = create.rate_limit {
        new = new.rate_limit(limit);
    }
    if let Some(balance) = create.credits {
        let refill =
            (create.refill_daily.map(Refill::daily)).or(create.refill_monthly.map(Refill::monthly));
        let credits = Credits::new(balance);
        // The manager counts a refill from the key's creation, by its own clock.
        new = new.credits(match refill {
            Some(refill) => credits.refilled(refill, std::time::SystemTime::now()),
            None => credits,
        });
    }
    new
}

/// The failure for a manager's error: its exit code, and what to do about it.
fn refusal(error: ManageError, account: &str, key: Option<&KeyId>) -> Failure {
    let list = format!("`tower-api-key list --account {account}` shows its keys");
    match error {
        ManageError::NotFound => {
            let key = key.map_or_else(String::new, |key| format!(" {key}"));
            let message = format!("the account {account} has no such key{key}; {list}");
            Failure::new(Failure::NOT_FOUND, message)
        }
        ManageError::KeyLimitReached { tier, limit } => Failure::new(
            Failure::REFUSED,
            format!(
                "the account {account} holds its {limit} active {tier} keys; revoke one first \
                 (`tower-api-key revoke --account {account} <KEY_ID>`; {list})"
            ),
        ),
        ManageError::UnknownTier(tier) => Failure::new(
            Failure::REFUSED,
            format!("the tier \"{tier}\" is not known; use --tier free (3 keys) or --tier pro (50 keys)"),
        ),
        ManageError::InvalidExpiry => Failure::new(
            Failure::REFUSED,
            "an expiry or grace period must be longer than zero and at most 100 years",
        ),
        ManageError::Store(error) => Failure::new(
            Failure::STORE,
            format!("the store failed: {error}; check that it is up and reachable, then try again"),
        ),
        other => Failure::new(Failure::REFUSED, format!("{other}; change it and try again")),
    }
}
