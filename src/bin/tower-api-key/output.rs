//! What the commands print: on stdout, the new key alone, a table, or one JSON document; notes
//! on stderr.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tower_api_key::limit::{Credits, RateLimit, RefillPeriod};
use tower_api_key::manage::{CreatedKey, KeyInfo};
use tower_api_key::KeyId;

use crate::Failure;

/// A new key (created or rotated): the key alone on stdout, or `{"key", "info"}`.
pub fn created(created: &CreatedKey, json: bool, note: &str) -> Result<(), Failure> {
    let key = created.key.expose_secret();
    if json {
        #[derive(Serialize)]
        struct Created<'a> {
            key: &'a str,
            info: &'a KeyInfo,
        }
        return print_json(&Created {
            key,
            info: &created.info,
        });
    }
    let info = &created.info;
    eprintln!(
        "{note}: {} ({:?}, {}); the key, on stdout, is shown this once and stored nowhere: keep it now",
        info.id, info.name, info.mode
    );
    print(&format!("{key}\n"))
}

/// The account's keys, as a table or a JSON array.
pub fn list(keys: &[KeyInfo], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&keys);
    }
    let now = SystemTime::now();
    let header = [
        "ID",
        "NAME",
        "MODE",
        "STATUS",
        "HINT",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "SCOPES",
        "RATE LIMIT",
        "CREDITS",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for info in keys {
        rows.push(vec![
            info.id.to_string(),
            info.name.clone(),
            info.mode.to_string(),
            status(info, now).to_owned(),
            info.hint.clone().unwrap_or_else(|| "-".into()),
            time(info.created_at),
            time(info.expires_at),
            time(info.last_used_at),
            info.scopes
                .as_ref()
                .map_or_else(|| "(all)".into(), |s| s.to_string()),
            info.rate_limit.map_or_else(|| "-".into(), rate),
            info.credits.map_or_else(|| "-".into(), credits),
        ]);
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    print(&text)
}

/// One key, as `field: value` lines or a JSON object.
pub fn info(info: &KeyInfo, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(info);
    }
    let fields = [
        ("id", info.id.to_string()),
        ("name", info.name.clone()),
        ("mode", info.mode.to_string()),
        ("status", status(info, SystemTime::now()).to_owned()),
        ("hint", info.hint.clone().unwrap_or_else(|| "-".into())),
        ("created", time(info.created_at)),
        ("expires", time(info.expires_at)),
        ("revoked", time(info.revoked_at)),
        ("disabled", time(info.disabled_at)),
        ("last used", time(info.last_used_at)),
        (
            "scopes",
            info.scopes
                .as_ref()
                .map_or_else(|| "(all)".into(), |s| s.to_string()),
        ),
        (
            "rate limit",
            info.rate_limit.map_or_else(|| "-".into(), rate),
        ),
        ("credits", info.credits.map_or_else(|| "-".into(), credits)),
    ];
    let text: String = fields
        .iter()
        .map(|(name, value)| format!("{:<12}{value}\n", format!("{name}:")))
        .collect();
    print(&text)
}

/// A deleted key: a note on stderr, or `{"deleted": "<id>", "account": "<account>"}`.
pub fn deleted(account: &str, id: &KeyId, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({ "deleted": id, "account": account }));
    }
    eprintln!("deleted {id} of the account {account}: it is now unknown");
    Ok(())
}

fn status(info: &KeyInfo, now: SystemTime) -> &'static str {
    if info.revoked_at.is_some() {
        "revoked"
    } else if info.disabled_at.is_some() {
        "disabled"
    } else if info.expires_at.is_some_and(|expires_at| expires_at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn time(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".into(),
        |time| humantime::format_rfc3339_seconds(time).to_string(),
    )
}

fn rate(limit: RateLimit) -> String {
    let period = match limit.period() {
        period if period == Duration::from_secs(1) => "second".to_owned(),
        period if period == Duration::from_secs(60) => "minute".to_owned(),
        period if period == Duration::from_secs(3600) => "hour".to_owned(),
        period => humantime::format_duration(period).to_string(),
    };
    let requests = limit.requests();
    match limit.burst_size() {
        burst if burst == requests => format!("{requests}/{period}"),
        burst => format!("{requests}/{period} (burst {burst})"),
    }
}

fn credits(credits: Credits) -> String {
    match credits.refill {
        Some(refill) => {
            let every = match refill.every {
                RefillPeriod::Day => "daily",
                RefillPeriod::Month => "monthly",
            };
            format!("{} (refill {} {every})", credits.remaining, refill.amount)
        }
        None => credits.remaining.to_string(),
    }
}

pub fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|error| {
        Failure::new(
            Failure::STORE,
            format!("the store holds a value JSON cannot show: {error}"),
        )
    })?;
    print(&format!("{text}\n"))
}

/// Writes to stdout; a closed stdout (`| head`) is not an error worth a panic.
pub fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(Failure::new(1, format!("cannot write to stdout: {error}"))),
    }
}
