//! The store named by URL: which kind it is, opening it, and keeping its password out of every
//! message.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection as _;
use tower_api_key::store::{PgKeyStore, RedisKeyStore, SqliteKeyStore};

use crate::{Cli, Failure};

/// The longest PostgreSQL table name `PgKeyStore::table` accepts.
const MAX_TABLE_LEN: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postgres,
    Redis,
    Sqlite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
            Self::Sqlite => "SQLite",
        }
    }
}

/// A store URL, checked, with what of it must never be printed.
pub struct Connection {
    kind: Kind,
    url: String,
    /// The URL as messages may show it: its password replaced by `***`.
    shown: String,
    /// The password, as written in the URL and percent-decoded, to scrub from messages.
    secrets: Vec<String>,
}

/// A store, opened and ready.
pub enum Opened {
    Postgres(PgKeyStore),
    Redis(RedisKeyStore),
    Sqlite(SqliteKeyStore),
}

impl Connection {
    /// The store URL of the command line, checked along with the options that go with it.
    pub fn parse(cli: &Cli) -> Result<Self, Failure> {
        let Some(url) = cli.store.as_deref().filter(|url| !url.trim().is_empty()) else {
            return Err(Failure::new(
                Failure::USAGE,
                "no store: pass --store <URL> or set TOWER_API_KEY_STORE \
                 (postgres://..., redis://... or sqlite:...)",
            ));
        };
        let (shown, secrets) = redact(url);
        let lower = url.to_ascii_lowercase();
        let kind = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Kind::Postgres
        } else if lower.starts_with("redis://") || lower.starts_with("rediss://") {
            Kind::Redis
        } else if lower.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            return Err(Failure::new(
                Failure::USAGE,
                format!(
                    "the store URL {shown} is not one this tool knows: it must begin with \
                     postgres://, postgresql://, redis:// or sqlite:"
                ),
            ));
        };
        if let Some(table) = &cli.table {
            if kind != Kind::Postgres {
                return Err(usage("--table applies to PostgreSQL stores only; drop it"));
            }
            if !is_plain_identifier(table) {
                return Err(usage(format!(
                    "--table {table:?} is not a plain SQL identifier: a lowercase letter or _, \
                     then lowercase letters, digits or _, at most {MAX_TABLE_LEN} bytes"
                )));
            }
        }
        if let Some(prefix) = &cli.prefix {
            if kind != Kind::Redis {
                return Err(usage("--prefix applies to Redis stores only; drop it"));
            }
            if prefix.is_empty() || prefix.contains(['{', '}']) {
                return Err(usage("--prefix must be non-empty and hold no `{` or `}`"));
            }
        }
        Ok(Self {
            kind,
            url: url.to_owned(),
            shown,
            secrets,
        })
    }

    /// Connects, and applies the schema to a SQL store.
    pub async fn open(&self, cli: &Cli) -> Result<Opened, Failure> {
        let timeout = cli.timeout;
        let opened = tokio::time::timeout(timeout, self.connect(cli)).await;
        let opened = opened.unwrap_or_else(|_| {
            let waited = humantime::format_duration(timeout);
            Err(Problem::store(format!("no answer within {waited}")))
        });
        opened.map_err(|problem| {
            let hint = match (problem.code, self.kind) {
                (Failure::USAGE, _) => "correct the URL",
                _ if problem.message.contains("TLS") => {
                    "this build has no TLS support: connect without it (sslmode=prefer or \
                     disable), over a trusted network or a tunnel"
                }
                (_, Kind::Sqlite) => {
                    "check the path, and add ?mode=rwc to the URL to create a missing file"
                }
                _ => "check that the server is up and the URL is right, or pass a longer --timeout",
            };
            Failure::new(
                problem.code,
                format!(
                    "cannot use the {} store at {}: {}; {hint}",
                    self.kind.name(),
                    self.shown,
                    problem.message
                ),
            )
        })
    }

    async fn connect(&self, cli: &Cli) -> Result<Opened, Problem> {
        let timeout = cli.timeout;
        match self.kind {
            Kind::Postgres => {
                let options = PgConnectOptions::from_str(&self.url).map_err(|error| {
                    Problem::usage(format!("not a valid PostgreSQL URL ({error})"))
                })?;
                // One connection first, for the server's own error: the pool would retry a
                // refused connection until its timeout, and then say only that.
                let probe = PgConnection::connect_with(&options).await;
                probe.map_err(Problem::store)?.close().await.ok();
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await
                    .map_err(Problem::store)?;
                let mut store = PgKeyStore::new(pool);
                if let Some(table) = &cli.table {
                    store = store.table(table);
                }
                let store = store.timeout(timeout);
                store
                    .migrate()
                    .await
                    .map_err(|error| Problem::store(format!("cannot apply the schema: {error}")))?;
                Ok(Opened::Postgres(store))
            }
            Kind::Redis => {
                let client = redis::Client::open(self.url.as_str()).map_err(|error| {
                    Problem::usage(format!("not a Redis URL this build can use ({error})"))
                })?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let connection = redis::aio::ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(Problem::store)?;
                let mut store = RedisKeyStore::new(connection).timeout(timeout);
                if let Some(prefix) = &cli.prefix {
                    store = store.prefix(prefix.as_str());
                }
                Ok(Opened::Redis(store))
            }
            Kind::Sqlite => {
                let store = SqliteKeyStore::connect(&self.url)
                    .await
                    .map_err(Problem::store)?
                    .timeout(timeout);
                store
                    .migrate()
                    .await
                    .map_err(|error| Problem::store(format!("cannot apply the schema: {error}")))?;
                Ok(Opened::Sqlite(store))
            }
        }
    }

    /// `message` with the store's password replaced by `***`.
    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.replace(&self.url, &self.shown);
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        message
    }
}

/// Why a store could not be opened: a usage error (the URL) or the store's failure.
struct Problem {
    code: u8,
    message: String,
}

impl Problem {
    fn usage(message: String) -> Self {
        Self {
            code: Failure::USAGE,
            message,
        }
    }

    fn store(error: impl ToString) -> Self {
        Self {
            code: Failure::STORE,
            message: error.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Failure::USAGE, message)
}

/// The URL with its password (`user:password@`, or a `password=` query parameter) replaced by
/// `***`, and the passwords found, raw and percent-decoded.
fn redact(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let mut shown = url.to_owned();
    if let Some(scheme_end) = url.find("://") {
        let authority_start = scheme_end + 3;
        let rest = &url[authority_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                let password = &authority[colon + 1..at];
                if !password.is_empty() {
                    secrets.push(password.to_owned());
                    let start = authority_start + colon + 1;
                    shown = format!("{}***{}", &url[..start], &url[authority_start + at..]);
                }
            }
        }
    }
    if let Some(query_start) = shown.find('?') {
        let (base, query) = shown.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value))
                    if name.eq_ignore_ascii_case("password") && !value.is_empty() =>
                {
                    secrets.push(value.to_owned());
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown = format!("{base}{}", query.join("&"));
    }
    let decoded: Vec<String> = secrets
        .iter()
        .filter_map(|secret| {
            let decoded = percent_encoding::percent_decode_str(secret)
                .decode_utf8()
                .ok()?;
            (decoded != secret.as_str()).then(|| decoded.into_owned())
        })
        .collect();
    secrets.extend(decoded);
    // The longest first, so that a password containing another is scrubbed whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    (shown, secrets)
}

/// `[a-z_][a-z0-9_]*`, at most [`MAX_TABLE_LEN`] bytes: what `PgKeyStore::table` accepts.
fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_TABLE_LEN
        && bytes
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_collected() {
        let (shown, secrets) = redact("postgres://app:s%40cret@db:5432/app?sslmode=require");
        assert_eq!(shown, "postgres://app:***@db:5432/app?sslmode=require");
        assert_eq!(secrets, ["s%40cret", "s@cret"]);
        let (shown, secrets) = redact("redis://:hunter2@127.0.0.1:6379/0");
        assert_eq!(shown, "redis://:***@127.0.0.1:6379/0");
        assert_eq!(secrets, ["hunter2"]);
        let (shown, secrets) = redact("postgres://db/app?user=app&password=pw");
        assert_eq!(shown, "postgres://db/app?user=app&password=***");
        assert_eq!(secrets, ["pw"]);
        let (shown, secrets) = redact("sqlite:///tmp/keys.db?mode=rwc");
        assert_eq!(shown, "sqlite:///tmp/keys.db?mode=rwc");
        assert!(secrets.is_empty());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(is_plain_identifier("api_keys"));
        assert!(is_plain_identifier("_k2"));
        for name in ["", "Keys", "2k", "api-keys", "a;drop", &"a".repeat(49)] {
            assert!(!is_plain_identifier(name), "{name}");
        }
    }
}
