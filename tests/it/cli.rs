//! The `tower-api-key` command line, run as a program against each store: PostgreSQL at
//! `DATABASE_URL` (a table of its own per test), Redis at `REDIS_URL` (a prefix of its own per
//! test) and SQLite (a temporary file). What it does is checked through the library, over the
//! same store: the key it prints authenticates through `ApiKeyLayer`, a revoked key is refused.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo test --all-features --test it -- cli::
//! ```
#![cfg(feature = "cli")]

use std::process::Command;

use serde_json::Value;
use tower_api_key::access::KeyMode;
use tower_api_key::key::KeyFormat;
use tower_api_key::store::{PgKeyStore, RedisKeyStore, SqliteKeyStore, WritableKeyStore};
use tower_api_key::{ApiKey, KeyManager};

use crate::common::verdict_through;

/// What one run of the program gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The run, which must have succeeded.
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "the command failed: {self:?}");
        self
    }

    /// Its stdout, one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON document ({error}): {self:?}"))
    }

    /// The key it printed: stdout must be the key alone on its line, and a well-formed key.
    fn key(&self) -> ApiKey {
        let key = self.stdout.strip_suffix('\n').unwrap_or_else(|| {
            panic!("stdout is not one line: {self:?}");
        });
        assert!(
            !key.contains('\n'),
            "stdout holds more than the key: {self:?}"
        );
        assert!(
            KeyFormat::default().is_well_formed(key),
            "stdout is not a well-formed key (prefix and checksum): {self:?}"
        );
        ApiKey::new(key)
    }

    /// Asserts a failure with `code`, told on stderr as `error: ...`, with nothing on stdout.
    fn fails_with(&self, code: i32) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
    }
}

/// Runs the program with `args` and no `TOWER_API_KEY_STORE` of the caller's.
fn run<I, A>(args: I) -> Run
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
        .args(args)
        .env_remove("TOWER_API_KEY_STORE")
        .output()
        .expect("the tower-api-key binary runs");
    Run {
        code: output.status.code().expect("the program exited"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A store the tests use both ways: through the program (its `--store` and options) and
/// through the library.
struct Backend<S> {
    options: Vec<String>,
    store: S,
    cleanup: Cleanup,
}

/// What a test leaves behind, removed once it passed.
enum Cleanup {
    Nothing,
    Table(sqlx::PgPool, String),
    Files(std::path::PathBuf),
}

impl<S: WritableKeyStore + Clone> Backend<S> {
    /// Runs a command on this store.
    fn run(&self, args: &[&str]) -> Run {
        run(args
            .iter()
            .copied()
            .map(str::to_owned)
            .chain(self.options.iter().cloned()))
    }

    fn keys(&self) -> KeyManager<S> {
        KeyManager::new(self.store.clone())
    }

    /// Removes the test's table or file.
    async fn finish(self) {
        match self.cleanup {
            Cleanup::Nothing => {}
            Cleanup::Table(pool, table) => {
                let drop = format!("DROP TABLE IF EXISTS {table}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&pool)
                    .await
                    .expect("the test's table drops");
            }
            Cleanup::Files(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }

    /// What the layer over the store answers to a request with `key`: `ok` or an error code.
    async fn verdict(&self, key: &ApiKey) -> String {
        verdict_through(self.store.clone(), key).await
    }
}

fn unique(what: &str) -> String {
    format!("{what}_{}", uuid::Uuid::new_v4().simple())
}

async fn postgres() -> Backend<PgKeyStore> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: the command line's PostgreSQL tests need a server, as in \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test --all-features"
        )
    });
    let table = unique("cli_keys")[..40].to_owned();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the PostgreSQL at DATABASE_URL: {error}"));
    let store = PgKeyStore::new(pool.clone()).table(&table);
    store.migrate().await.expect("the schema applies");
    let options = vec!["--store".into(), url, "--table".into(), table.clone()];
    let cleanup = Cleanup::Table(pool, table);
    Backend {
        options,
        store,
        cleanup,
    }
}

async fn redis() -> Backend<RedisKeyStore> {
    let url = std::env::var("REDIS_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "REDIS_URL is not set: the command line's Redis tests need a server, as in \
         REDIS_URL=redis://127.0.0.1:6379 cargo test --all-features"
    );
    let prefix = unique("cli");
    let client = ::redis::Client::open(url.as_str()).expect("REDIS_URL is a Redis URL");
    let connection = ::redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the Redis at REDIS_URL: {error}"));
    let store = RedisKeyStore::new(connection).prefix(prefix.as_str());
    let options = vec!["--store".into(), url, "--prefix".into(), prefix];
    // A few small Redis keys under a prefix no other run uses.
    let cleanup = Cleanup::Nothing;
    Backend {
        options,
        store,
        cleanup,
    }
}

async fn sqlite() -> Backend<SqliteKeyStore> {
    let path = std::env::temp_dir().join(format!("{}.db", unique("tower-api-key-cli")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SqliteKeyStore::connect(&url).await.expect("the file opens");
    store.migrate().await.expect("the schema applies");
    Backend {
        options: vec!["--store".into(), url],
        store,
        cleanup: Cleanup::Files(path),
    }
}

/// `create` prints the key alone; it authenticates, and the store holds it as asked.
async fn create_prints_a_key_that_authenticates<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let created = store
        .run(&[
            "create",
            "--account",
            &account,
            "--tier",
            "free",
            "--name",
            "ci",
        ])
        .ok();
    let key = created.key();
    assert!(key.expose_secret().starts_with("sk_live_"));
    assert_eq!(store.verdict(&key).await, "ok");
    assert!(!created.stderr.contains(key.expose_secret()), "{created:?}");

    let args = [
        "create",
        "--account",
        &account,
        "--tier",
        "free",
        "--name",
        "sandbox",
        "--test",
        "--scope",
        "iocs:read",
        "--scope",
        "keys:read",
        "--expires-in",
        "30d",
        "--rate-limit",
        "10/minute",
        "--credits",
        "100",
        "--refill-daily",
        "50",
    ];
    let test_key = store.run(&args).ok().key();
    assert!(test_key.expose_secret().starts_with("sk_test_"));
    assert_eq!(store.verdict(&test_key).await, "ok");

    let listed = store.keys().list(&account).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].name, "ci");
    let sandbox = &listed[1];
    assert_eq!(sandbox.name, "sandbox");
    assert_eq!(sandbox.mode.as_str(), "test");
    let scopes: Vec<&str> = sandbox.scopes.as_ref().unwrap().iter().collect();
    assert_eq!(scopes, ["iocs:read", "keys:read"]);
    assert!(sandbox.expires_at.is_some());
    let limit = sandbox.rate_limit.unwrap();
    assert_eq!((limit.requests(), limit.period().as_secs()), (10, 60));
    let credits = sandbox.credits.unwrap();
    assert_eq!(credits.remaining, 100);
    assert_eq!(credits.refill.unwrap().amount, 50);

    let json = store
        .run(&[
            "create",
            "--account",
            &account,
            "--tier",
            "free",
            "--name",
            "j",
            "--json",
        ])
        .ok()
        .json();
    let key = ApiKey::new(json["key"].as_str().unwrap());
    assert_eq!(store.verdict(&key).await, "ok");
    assert_eq!(json["info"]["name"], "j");
    assert!(json["info"]["id"].as_str().unwrap().starts_with("key_"));
}

/// `list` and `get`, as text and JSON, show every key and never a secret.
async fn list_and_get_show_keys_but_no_secret<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let create = |name: &str| {
        let args = [
            "create",
            "--account",
            &account,
            "--tier",
            "pro",
            "--name",
            name,
        ];
        store.run(&args).ok().key()
    };
    let keys = [create("first"), create("second")];
    let listed = store.keys().list(&account).await.unwrap();
    let ids: Vec<String> = listed.iter().map(|info| info.id.to_string()).collect();
    let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();

    let table = store.run(&["list", "--account", &account]).ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a row per key: {table:?}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("NAME"),
        "{table:?}"
    );
    for (line, (id, name)) in lines[1..].iter().zip(ids.iter().zip(&names)) {
        assert!(
            line.starts_with(id.as_str()) && line.contains(name),
            "{table:?}"
        );
        assert!(line.contains("active"), "{table:?}");
    }

    let json = store.run(&["list", "--account", &account, "--json"]).ok();
    let listed = json.json();
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], ids[0].as_str());
    assert_eq!(listed[1]["name"], names[1]);
    assert!(listed[0]["hint"]
        .as_str()
        .unwrap()
        .starts_with("sk_live_..."));

    let got = store
        .run(&["get", "--account", &account, &ids[1], "--json"])
        .ok()
        .json();
    assert_eq!(got["id"], ids[1].as_str());
    assert_eq!(got["name"], names[1]);
    assert_eq!(got["revoked_at"], Value::Null);
    let text = store.run(&["get", "--account", &account, &ids[1]]).ok();
    assert!(
        text.stdout.contains(&ids[1]) && text.stdout.contains(names[1]),
        "{text:?}"
    );

    for output in [&table, &json, &text] {
        for key in &keys {
            let secret = key.expose_secret();
            let body = &secret["sk_live_".len()..];
            assert!(
                !output.stdout.contains(&body[..12]),
                "a secret in {output:?}"
            );
        }
    }

    let missing = store.run(&["get", "--account", &account, "key_nope"]);
    missing.fails_with(3);
    let elsewhere = store.run(&["get", "--account", &unique("acct"), &ids[0]]);
    elsewhere.fails_with(3);
    let empty = store
        .run(&["list", "--account", &unique("acct"), "--json"])
        .ok();
    assert_eq!(empty.json(), serde_json::json!([]));
}

/// `revoke` refuses the key from then on; `disable` until `enable`; `delete` makes it unknown;
/// each says 3 when there is no such key.
async fn revoke_and_delete<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let create = |name: &str| {
        let args = [
            "create",
            "--account",
            &account,
            "--tier",
            "free",
            "--name",
            name,
            "--json",
        ];
        let json = store.run(&args).ok().json();
        let key = ApiKey::new(json["key"].as_str().unwrap());
        (key, json["info"]["id"].as_str().unwrap().to_owned())
    };
    let (revoked, revoked_id) = create("revoked");
    let (deleted, deleted_id) = create("deleted");

    let json = store
        .run(&["revoke", "--account", &account, &revoked_id, "--json"])
        .ok();
    assert!(json.json()["revoked_at"].is_string(), "{json:?}");
    assert_eq!(store.verdict(&revoked).await, "expired_api_key");
    let again = store
        .run(&["revoke", "--account", &account, &revoked_id])
        .ok();
    assert!(again.stdout.contains("revoked"), "{again:?}");

    let (disabled, disabled_id) = create("disabled");
    let json = store
        .run(&["disable", "--account", &account, &disabled_id, "--json"])
        .ok();
    assert!(json.json()["disabled_at"].is_string(), "{json:?}");
    assert_eq!(store.verdict(&disabled).await, "expired_api_key");
    let shown = store
        .run(&["get", "--account", &account, &disabled_id])
        .ok();
    assert!(shown.stdout.contains("status:     disabled"), "{shown:?}");
    let json = store
        .run(&["enable", "--account", &account, &disabled_id, "--json"])
        .ok();
    assert_eq!(json.json()["disabled_at"], Value::Null, "{json:?}");
    assert_eq!(store.verdict(&disabled).await, "ok");
    store
        .run(&["disable", "--account", &unique("acct"), &disabled_id])
        .fails_with(3);
    store
        .run(&["delete", "--account", &account, &disabled_id])
        .ok();

    store
        .run(&["delete", "--account", &account, &deleted_id])
        .ok();
    assert_eq!(store.verdict(&deleted).await, "invalid_api_key");
    store
        .run(&["delete", "--account", &account, &deleted_id])
        .fails_with(3);
    store
        .run(&["revoke", "--account", &account, "key_nope"])
        .fails_with(3);
    let json = store
        .run(&["delete", "--account", &account, &revoked_id, "--json"])
        .ok();
    assert_eq!(json.json()["deleted"], revoked_id.as_str());
    assert!(store.keys().list(&account).await.unwrap().is_empty());
}

/// `rotate` prints the replacement alone; the old key works through the grace period; only an
/// active key rotates.
async fn rotate<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let args = [
        "create",
        "--account",
        &account,
        "--tier",
        "free",
        "--name",
        "ci",
        "--json",
    ];
    let json = store.run(&args).ok().json();
    let old = ApiKey::new(json["key"].as_str().unwrap());
    let old_id = json["info"]["id"].as_str().unwrap().to_owned();

    let rotated = store.run(&["rotate", "--account", &account, &old_id, "--grace", "1h"]);
    let new = rotated.ok().key();
    assert_ne!(new.expose_secret(), old.expose_secret());
    assert_eq!(store.verdict(&new).await, "ok");
    assert_eq!(
        store.verdict(&old).await,
        "ok",
        "the old key works during the grace"
    );
    let listed = store.keys().list(&account).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|info| info.name == "ci"));
    let old_info = listed
        .iter()
        .find(|info| info.id.as_str() == old_id)
        .unwrap();
    assert!(
        old_info.expires_at.is_some(),
        "the old key expires after the grace"
    );

    let new_id = (listed
        .iter()
        .find(|info| info.id.as_str() != old_id)
        .unwrap()
        .id)
        .to_string();
    let args = [
        "rotate",
        "--account",
        &account,
        &new_id,
        "--grace",
        "3600",
        "--json",
    ];
    let json = store.run(&args).ok().json();
    let newest = ApiKey::new(json["key"].as_str().unwrap());
    assert_eq!(store.verdict(&newest).await, "ok");
    assert_eq!(json["info"]["name"], "ci");

    store.run(&["revoke", "--account", &account, &old_id]).ok();
    let refused = store.run(&["rotate", "--account", &account, &old_id, "--grace", "1h"]);
    refused.fails_with(3);
    assert!(refused.stderr.contains("no active key"), "{refused:?}");
}

/// `top-up` adds credits; the tier's key limit and other refusals by policy are exit code 4.
async fn top_up_and_refusals<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let args = [
        "create",
        "--account",
        &account,
        "--tier",
        "free",
        "--name",
        "metered",
        "--credits",
        "5",
        "--json",
    ];
    let id = store.run(&args).ok().json()["info"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let json = store
        .run(&["top-up", "--account", &account, &id, "10", "--json"])
        .ok();
    assert_eq!(json.json()["credits"]["remaining"], 15);
    let text = store.run(&["top-up", "--account", &account, &id, "1"]).ok();
    let balance = text
        .stdout
        .lines()
        .find(|line| line.starts_with("credits:"));
    assert_eq!(
        balance.map(str::split_whitespace).and_then(Iterator::last),
        Some("16")
    );
    store
        .run(&["top-up", "--account", &account, "key_nope", "1"])
        .fails_with(3);

    for name in ["second", "third"] {
        store
            .run(&[
                "create",
                "--account",
                &account,
                "--tier",
                "free",
                "--name",
                name,
            ])
            .ok();
    }
    let full = store.run(&[
        "create",
        "--account",
        &account,
        "--tier",
        "free",
        "--name",
        "4th",
    ]);
    full.fails_with(4);
    assert!(
        full.stderr.contains(&account) && full.stderr.contains("revoke one first"),
        "{full:?}"
    );
    assert_eq!(store.keys().list(&account).await.unwrap().len(), 3);

    let other = unique("acct");
    let refusals: [&[&str]; 4] = [
        &["--tier", "gold", "--name", "n"],
        &["--tier", "free", "--name", "   "],
        &["--tier", "free", "--name", "n", "--scope", "has space"],
        &["--tier", "free", "--name", "n", "--expires-in", "0"],
    ];
    for refusal in refusals {
        let mut args = vec!["create", "--account", &other];
        args.extend_from_slice(refusal);
        store.run(&args).fails_with(4);
    }
    assert!(store.keys().list(&other).await.unwrap().is_empty());
}

/// A file of `lines` in the temporary folder, with `extension`; removed when dropped.
struct ImportFile(std::path::PathBuf);

impl ImportFile {
    fn new(extension: &str, lines: &[String]) -> Self {
        let path = std::env::temp_dir().join(format!("{}.{extension}", unique("import")));
        std::fs::write(&path, lines.join("\n") + "\n").expect("the import file is written");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for ImportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A key of an older system: `ak_` and no checksum.
fn legacy_key() -> ApiKey {
    ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()))
}

/// What the layer answers to `key` over `store` with the `ak_` keys accepted.
async fn legacy_verdict<S: WritableKeyStore + Clone>(store: &Backend<S>, key: &ApiKey) -> String {
    let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
    tower_api_key::testing::verdict(&store.keys().key_format(format), key).await
}

/// `import` reads JSON lines and CSV: plaintext legacy keys (which then authenticate through a
/// layer with the legacy prefix) and digests alone, with their ids, names, times and scopes;
/// the same files again import nothing.
async fn import_files_once_whatever_the_runs<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let (plain, by_digest, in_csv) = (legacy_key(), legacy_key(), legacy_key());
    let jsonl = ImportFile::new(
        "jsonl",
        &[
            serde_json::json!({
                "id": "old_plain", "account_id": account, "tier": "pro", "name": "ci",
                "created_at": "2024-05-01T12:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
                "key": plain.expose_secret(),
            })
            .to_string(),
            String::new(),
            serde_json::json!({
                "id": "old_digest", "account_id": account, "tier": "pro", "name": "deploy",
                "created_at": "2024-05-02T12:00:00Z", "sha256": by_digest.digest().to_hex(),
                "scopes": ["iocs:read", "keys:write"], "hint": "ak_...dg57",
            })
            .to_string(),
        ],
    );
    let csv = ImportFile::new(
        "csv",
        &[
            "id,account_id,tier,name,created_at,sha256,scopes,mode".to_owned(),
            format!(
                "old_csv,{account},pro,\"build, nightly\",2024-05-03T12:00:00Z,{},iocs:read,live",
                in_csv.digest().to_hex()
            ),
        ],
    );
    for (file, rows) in [(&jsonl, 2), (&csv, 1)] {
        let first = store
            .run(&["import", "--legacy-prefix", "ak_", file.path()])
            .ok();
        let expected = format!("imported {rows}, already present 0, rejected 0\n");
        assert_eq!(first.stdout, expected, "{first:?}");
        let again = store
            .run(&["import", "--legacy-prefix", "ak_", file.path()])
            .ok();
        let expected = format!("imported 0, already present {rows}, rejected 0\n");
        assert_eq!(again.stdout, expected, "{again:?}");
    }
    let listed = store.keys().list(&account).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names, ["ci", "deploy", "build, nightly"]);
    assert_eq!(listed[0].id.as_str(), "old_plain");
    let hint = listed[0].hint.as_deref().unwrap();
    assert!(
        plain.expose_secret().ends_with(&hint["ak_...".len()..]),
        "{hint}"
    );
    assert_eq!(listed[1].hint.as_deref(), Some("ak_...dg57"));
    assert_eq!(
        listed[1].scopes.as_ref().unwrap().to_string(),
        "iocs:read keys:write"
    );
    assert_eq!(listed[2].scopes.as_ref().unwrap().to_string(), "iocs:read");
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!(json["created_at"], "2024-05-01T12:00:00Z");
    assert_eq!(json["expires_at"], "2099-01-01T00:00:00Z");
    for key in [&plain, &by_digest, &in_csv] {
        assert_eq!(legacy_verdict(store, key).await, "ok");
    }
    // Without the legacy prefix the layer refuses them, as any key that is not its own.
    assert_eq!(store.verdict(&plain).await, "invalid_api_key");
    let made_up = ApiKey::new(format!("sk_live_{}", "a".repeat(38)));
    assert_eq!(legacy_verdict(store, &made_up).await, "invalid_api_key");
}

/// Rejected rows are told by line number and the others imported (exit 6); a row past the
/// tier's limit is rejected unless `--bypass-quota`.
async fn import_tells_rejected_rows_by_line<S: WritableKeyStore + Clone>(store: &Backend<S>) {
    let account = unique("acct");
    let row = |id: &str, tier: &str| {
        serde_json::json!({
            "id": format!("{id}_{account}"), "account_id": account, "tier": tier, "name": id,
            "created_at": "2024-05-01T12:00:00Z", "sha256": legacy_key().digest().to_hex(),
        })
        .to_string()
    };
    let secret = legacy_key();
    let lines = [
        row("one", "free"),
        "{not json".to_owned(),
        row("gold", "gold"),
        serde_json::json!({"id": "plain", "account_id": account, "tier": "free", "name": "p",
            "created_at": "2024-05-01T12:00:00Z", "key": secret.expose_secret()})
        .to_string(),
        row("two", "free"),
        row("three", "free"),
        row("four", "free"),
    ];
    let file = ImportFile::new("jsonl", &lines);
    let run = store.run(&["import", file.path()]);
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(
        run.stdout, "imported 3, already present 0, rejected 4\n",
        "{run:?}"
    );
    let told: Vec<&str> = (run.stderr.lines())
        .filter(|line| line.starts_with("line "))
        .collect();
    assert_eq!(told.len(), 4, "{run:?}");
    assert!(told[0].starts_with("line 2: not a JSON object"), "{run:?}");
    assert!(told[1].starts_with("line 3: the tier \"gold\""), "{run:?}");
    assert!(
        told[2].starts_with("line 4: the key is not one of this crate's"),
        "{run:?}"
    );
    assert!(
        told[3].starts_with("line 7: ") && told[3].contains("allows 3"),
        "{run:?}"
    );
    assert!(!run.stderr.contains(secret.expose_secret()), "{run:?}");
    assert!(
        run.stderr.contains("error: 4 of 7 rows were rejected"),
        "{run:?}"
    );

    let bypassed = store.run(&["import", "--bypass-quota", "--json", file.path()]);
    assert_eq!(bypassed.code, 6, "{bypassed:?}");
    let totals = bypassed.json();
    assert_eq!(totals["imported"], 1, "{bypassed:?}");
    assert_eq!(totals["already_present"], 3, "{bypassed:?}");
    assert_eq!(totals["rejected"], 3, "{bypassed:?}");
    assert_eq!(store.keys().list(&account).await.unwrap().len(), 4);

    let unknown_column = ImportFile::new("csv", &["id,acount_id".to_owned()]);
    store.run(&["import", unknown_column.path()]).fails_with(2);
    store
        .run(&["import", "/nonexistent/keys.jsonl"])
        .fails_with(2);
}

/// One `#[tokio::test]` per flow, on a fresh `$backend` each, finished (cleaned up) after.
macro_rules! cli_suite {
    ($backend:ident: $($flow:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $flow() {
                    let backend = super::$backend().await;
                    super::$flow(&backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
    ($backend:ident) => {
        cli_suite!($backend:
            create_prints_a_key_that_authenticates,
            list_and_get_show_keys_but_no_secret,
            revoke_and_delete,
            rotate,
            top_up_and_refusals,
            import_files_once_whatever_the_runs,
            import_tells_rejected_rows_by_line,
        );
    };
}

cli_suite!(postgres);
cli_suite!(redis);
cli_suite!(sqlite);

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_store_is_exit_5_and_its_password_is_not_shown() {
    let port = closed_port();
    for url in [
        format!("postgres://admin:pw-s3cret-9@127.0.0.1:{port}/keys"),
        format!("redis://:pw-s3cret-9@127.0.0.1:{port}"),
    ] {
        let failed = run([
            "list",
            "--account",
            "acct_1",
            "--timeout",
            "2s",
            "--store",
            &url,
        ]);
        failed.fails_with(5);
        assert!(!failed.stderr.contains("pw-s3cret-9"), "{failed:?}");
        assert!(failed.stderr.contains("***@127.0.0.1"), "{failed:?}");

        let failed = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
            .args(["get", "--account", "acct_1", "key_1", "--timeout", "2s"])
            .env("TOWER_API_KEY_STORE", &url)
            .output()
            .unwrap();
        assert_eq!(failed.status.code(), Some(5));
        assert!(!String::from_utf8_lossy(&failed.stderr).contains("pw-s3cret-9"));
    }
}

#[test]
fn usage_errors_are_exit_2_and_show_no_password() {
    run(["list", "--account", "acct_1"]).fails_with(2);
    let unknown = run([
        "list",
        "--account",
        "a",
        "--store",
        "mysql://root:pw-s3cret-9@127.0.0.1/k",
    ]);
    unknown.fails_with(2);
    assert!(!unknown.stderr.contains("pw-s3cret-9"), "{unknown:?}");
    let sqlite = "sqlite::memory:";
    run(["list", "--store", sqlite]).fails_with(2);
    let bad_rate = ["create", "--account", "a", "--tier", "free", "--name", "n"];
    let bad_rate = [
        &bad_rate[..],
        &["--rate-limit", "0/minute", "--store", sqlite],
    ]
    .concat();
    run(bad_rate).fails_with(2);
    run(["list", "--account", "a", "--table", "x", "--store", sqlite]).fails_with(2);
    let url = format!("postgres://127.0.0.1:{}/k", closed_port());
    run([
        "list",
        "--account",
        "a",
        "--table",
        "Bad;Name",
        "--store",
        &url,
    ])
    .fails_with(2);
}

#[test]
fn help_documents_the_exit_codes_and_hides_the_store_from_the_environment() {
    let help = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
        .arg("--help")
        .env(
            "TOWER_API_KEY_STORE",
            "postgres://admin:pw-s3cret-9@127.0.0.1/keys",
        )
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8(help.stdout).unwrap();
    for code in [
        "0  success",
        "2  usage error",
        "3  not found",
        "4  refused",
        "5  the store",
    ] {
        assert!(help.contains(code), "{code:?} in {help}");
    }
    assert!(!help.contains("pw-s3cret-9"), "{help}");
}

#[test]
fn import_help_documents_the_file_format_and_its_exit_code() {
    let help = run(["import", "--help"]).ok().stdout;
    for field in [
        "id ",
        "account_id",
        "tier",
        "name",
        "created_at",
        "expires_at",
        "key ",
        "sha256",
        "mode",
        "scopes",
        "hint",
        "--legacy-prefix",
        "--bypass-quota",
        "line N: reason",
        "Exit code 6",
    ] {
        assert!(help.contains(field), "{field} is not in:\n{help}");
    }
    let top = run(["--help"]).ok().stdout;
    assert!(top.contains("6  import: some rows were rejected"), "{top}");
}
