//! `import`: keys of another system from a JSON-lines or CSV file, in batches, with progress
//! and each rejected row reported by line number.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tower_api_key::access::KeyMode;
use tower_api_key::key::{KeyDigest, KeyFormat};
use tower_api_key::manage::{ImportError, ImportOutcome, ImportQuota, ImportedKey, ManageError};
use tower_api_key::store::WritableKeyStore;
use tower_api_key::{ApiKey, KeyId, KeyManager, Tier};

use crate::args::{Import, ImportFormat};
use crate::Failure;

/// Rows handed to the manager at once: one store transaction for the SQL stores.
const BATCH: usize = 1_000;

/// Rows between two progress lines on stderr.
const PROGRESS_EVERY: usize = 10_000;

/// One row of the file, as written: every field optional here, so that a missing one is
/// reported with the row's line number rather than as a parse error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    id: Option<String>,
    account_id: Option<String>,
    tier: Option<String>,
    name: Option<String>,
    created_at: Option<String>,
    expires_at: Option<String>,
    key: Option<String>,
    sha256: Option<String>,
    mode: Option<String>,
    scopes: Option<ScopeList>,
    hint: Option<String>,
}

/// Scopes as a JSON array, or as one string of scopes separated by spaces (as in CSV).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    List(Vec<String>),
    Text(String),
}

/// The columns of a CSV file, in the order `Row` has them.
const COLUMNS: [&str; 11] = [
    "id",
    "account_id",
    "tier",
    "name",
    "created_at",
    "expires_at",
    "key",
    "sha256",
    "mode",
    "scopes",
    "hint",
];

/// What an import did, as the last line (or `--json` document) says.
#[derive(Debug, Default, Serialize)]
struct Tally {
    rows: usize,
    imported: usize,
    already_present: usize,
    rejected: usize,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "{} rows: {} imported, {} already present, {} rejected",
            self.rows, self.imported, self.already_present, self.rejected
        )
    }
}

/// The key format: the default, with the legacy prefixes of the command line.
pub fn format(import: &Import) -> Result<KeyFormat, Failure> {
    let mut format = KeyFormat::default();
    let mut seen: Vec<&str> = Vec::new();
    let prefixes = (import.legacy_prefixes.iter().map(|p| (p, KeyMode::Live))).chain(
        import
            .legacy_test_prefixes
            .iter()
            .map(|p| (p, KeyMode::Test)),
    );
    for (prefix, mode) in prefixes {
        let own = format.prefix_for(KeyMode::Live) == Some(prefix.as_str())
            || format.prefix_for(KeyMode::Test) == Some(prefix.as_str());
        if own || seen.contains(&prefix.as_str()) {
            return Err(usage(format!(
                "the legacy prefix {prefix:?} is given twice, or is one of this crate's own \
                 (sk_live_, sk_test_), whose keys are always checked"
            )));
        }
        if !prefix.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(usage(format!(
                "the legacy prefix {prefix:?} holds characters other than visible ASCII"
            )));
        }
        seen.push(prefix);
        format = format.legacy_prefix(prefix.clone(), mode);
    }
    Ok(format)
}

/// Imports the file of `import` through `keys`; `Err` for a file that cannot be read, a store
/// that fails (the rows before it are imported: running again imports the rest), or rows
/// that were rejected (each reported on stderr already).
pub async fn run<S: WritableKeyStore>(
    keys: &KeyManager<S>,
    import: &Import,
    json: bool,
) -> Result<(), Failure> {
    let path = &import.file;
    let format = match import.format {
        Some(format) => format,
        None => detect(path)?,
    };
    let file = File::open(path)
        .map_err(|error| usage(format!("cannot read {}: {error}", path.display())))?;
    let quota = if import.bypass_quota {
        ImportQuota::Bypassed
    } else {
        ImportQuota::Respected
    };
    let mut rows = Rows::new(BufReader::new(file), format)?;
    let mut tally = Tally::default();
    // Rows in error stay in the batch, so that rejections are told in line order.
    let mut batch: Vec<(u64, Result<ImportedKey, String>)> = Vec::with_capacity(BATCH);
    loop {
        let row = rows.next_row();
        let done = row.is_none();
        if let Some((line, row)) = row {
            // Told before the next row rather than after the last, which the totals tell.
            if tally.rows > 0 && tally.rows % PROGRESS_EVERY == 0 {
                eprintln!("{}", tally.line());
            }
            tally.rows += 1;
            batch.push((line, row.and_then(imported_key)));
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            import_batch(keys, std::mem::take(&mut batch), quota, &mut tally).await?;
        }
        if done {
            break;
        }
    }
    if json {
        crate::output::print_json(&tally)?;
    } else {
        eprintln!("{}", tally.line());
        crate::output::print(&format!(
            "imported {}, already present {}, rejected {}\n",
            tally.imported, tally.already_present, tally.rejected
        ))?;
    }
    if tally.rejected > 0 {
        return Err(Failure::new(
            Failure::ROWS_REJECTED,
            format!(
                "{} of {} rows were rejected (each reported above as `line N: reason`); the \
                 others are imported, so fix those rows and run the import again",
                tally.rejected, tally.rows
            ),
        ));
    }
    Ok(())
}

/// The file's format from its extension.
fn detect(path: &Path) -> Result<ImportFormat, Failure> {
    let extension = path.extension().and_then(|extension| extension.to_str());
    match extension.map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl" | "ndjson" | "json") => Ok(ImportFormat::Jsonl),
        Some("csv") => Ok(ImportFormat::Csv),
        _ => Err(usage(format!(
            "cannot tell the format of {} from its extension (.jsonl or .csv): pass --format \
             jsonl or --format csv",
            path.display()
        ))),
    }
}

async fn import_batch<S: WritableKeyStore>(
    keys: &KeyManager<S>,
    batch: Vec<(u64, Result<ImportedKey, String>)>,
    quota: ImportQuota,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let mut reasons: Vec<(u64, Option<String>)> = Vec::with_capacity(batch.len());
    let mut valid = Vec::with_capacity(batch.len());
    for (line, row) in batch {
        match row {
            Ok(key) => {
                reasons.push((line, None));
                valid.push(key);
            }
            Err(reason) => reasons.push((line, Some(reason))),
        }
    }
    let outcomes = keys.import(valid, quota).await.map_err(|error| {
        let done = tally.imported + tally.already_present;
        match error {
            ManageError::Store(error) => Failure::new(
                Failure::STORE,
                format!(
                    "the store failed after {done} rows were imported or found present: \
                     {error}; check that it is up, then run the same import again (it imports \
                     nothing twice)"
                ),
            ),
            other => Failure::new(Failure::REFUSED, other.to_string()),
        }
    })?;
    let mut outcomes = outcomes.into_iter();
    for (line, reason) in reasons {
        if let Some(reason) = reason {
            reject(tally, line, &reason);
            continue;
        }
        match outcomes.next() {
            Some(ImportOutcome::Imported) => tally.imported += 1,
            Some(ImportOutcome::AlreadyPresent) => tally.already_present += 1,
            Some(ImportOutcome::Rejected(ImportError::KeyNotAccepted)) => reject(
                tally,
                line,
                "the key is not one of this crate's, nor does it start with a --legacy-prefix \
                 (--legacy-test-prefix for a test key)",
            ),
            Some(ImportOutcome::Rejected(error)) => reject(tally, line, &error.to_string()),
            // A later outcome of the library: counted as rejected, so that nothing goes unsaid.
            _ => reject(tally, line, "not imported"),
        }
    }
    Ok(())
}

fn reject(tally: &mut Tally, line: u64, reason: &str) {
    tally.rejected += 1;
    eprintln!("line {line}: {reason}");
}

/// The key a row describes, or why it describes none. No message holds the row's key.
fn imported_key(row: Row) -> Result<ImportedKey, String> {
    let required = |field: Option<String>, name: &str| {
        field
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("`{name}` is missing"))
    };
    let id = KeyId::new(required(row.id, "id")?);
    let account_id = required(row.account_id, "account_id")?;
    let tier = match required(row.tier, "tier")?.as_str() {
        "free" => Tier::FREE,
        "pro" => Tier::PRO,
        other => Tier::new(other.to_owned()),
    };
    let name = required(row.name, "name")?;
    let created_at = time(&required(row.created_at, "created_at")?, "created_at")?;
    let mut key = match (row.key.filter(|k| !k.is_empty()), row.sha256) {
        (Some(key), None) => ImportedKey::key(ApiKey::new(key), id, account_id, tier, name),
        (None, Some(hex)) => {
            let digest = KeyDigest::from_hex(&hex)
                .ok_or("`sha256` is not 64 hexadecimal digits (a key's SHA-256 digest)")?;
            ImportedKey::digest(digest, id, account_id, tier, name)
        }
        (Some(_), Some(_)) => return Err("give `key` or `sha256`, not both".into()),
        (None, None) => return Err("give the key (`key`) or its digest (`sha256`)".into()),
    };
    key = key.created_at(created_at);
    if let Some(expires_at) = row.expires_at.filter(|value| !value.is_empty()) {
        key = key.expires_at(time(&expires_at, "expires_at")?);
    }
    if let Some(mode) = row.mode.filter(|value| !value.is_empty()) {
        let mode = KeyMode::parse(&mode).ok_or("`mode` must be `live` or `test`")?;
        key = key.mode(mode);
    }
    match row.scopes {
        Some(ScopeList::List(scopes)) => key = key.scopes(scopes),
        Some(ScopeList::Text(text)) if !text.trim().is_empty() => {
            key = key.scopes(text.split_whitespace().map(str::to_owned));
        }
        _ => {}
    }
    if let Some(hint) = row.hint.filter(|value| !value.is_empty()) {
        key = key.hint(hint);
    }
    Ok(key)
}

/// An RFC 3339 time in UTC (`2024-05-01T12:00:00Z`).
fn time(text: &str, field: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(text).map_err(|_| {
        format!("`{field}` is not an RFC 3339 time in UTC, such as 2024-05-01T12:00:00Z")
    })
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Failure::USAGE, message)
}

/// The rows of a file, each with its line number.
enum Rows<R> {
    Jsonl { lines: std::io::Lines<R>, line: u64 },
    Csv(csv::Reader<R>, Vec<usize>),
}

impl<R: BufRead> Rows<R> {
    /// The rows of `reader`; for CSV, after its header, which must name known columns only.
    fn new(reader: R, format: ImportFormat) -> Result<Self, Failure> {
        match format {
            ImportFormat::Jsonl => Ok(Self::Jsonl {
                lines: reader.lines(),
                line: 0,
            }),
            ImportFormat::Csv => {
                let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
                let headers = csv.headers().map_err(|error| {
                    usage(format!("cannot read the CSV header (line 1): {error}"))
                })?;
                let columns = headers
                    .iter()
                    .map(|header| {
                        let header = header.trim();
                        COLUMNS
                            .iter()
                            .position(|column| *column == header)
                            .ok_or_else(|| {
                                usage(format!(
                                "the CSV header names the column {header:?}, which is not one of \
                                 {}",
                                COLUMNS.join(", ")
                            ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self::Csv(csv, columns))
            }
        }
    }

    /// The next row and its line number, or `None` at the end of the file. A line that cannot
    /// be read or parsed is a row in error.
    fn next_row(&mut self) -> Option<(u64, Result<Row, String>)> {
        match self {
            Self::Jsonl { lines, line } => loop {
                *line += 1;
                let text = match lines.next()? {
                    Ok(text) => text,
                    Err(error) => return Some((*line, Err(format!("cannot be read: {error}")))),
                };
                if text.trim().is_empty() {
                    continue;
                }
                let row = serde_json::from_str(&text).map_err(|error| {
                    // serde's message names "line 1" of the one line it read: give the column.
                    let message = error.to_string();
                    let message = message.rsplit_once(" at line ").map_or(&*message, |m| m.0);
                    let column = error.column();
                    format!("not a JSON object of the import format: {message} (column {column})")
                });
                return Some((*line, row));
            },
            Self::Csv(csv, columns) => {
                let mut record = csv::StringRecord::new();
                let line = csv.position().line();
                match csv.read_record(&mut record) {
                    Ok(false) => None,
                    Ok(true) => {
                        let line = record.position().map_or(line, |position| position.line());
                        Some((line, csv_row(&record, columns)))
                    }
                    Err(error) => {
                        let line = error.position().map_or(line, |position| position.line());
                        Some((line, Err(format!("not a CSV row: {error}"))))
                    }
                }
            }
        }
    }
}

/// The row of a CSV record whose fields are the `columns` (indexes into [`COLUMNS`]).
fn csv_row(record: &csv::StringRecord, columns: &[usize]) -> Result<Row, String> {
    if record.len() != columns.len() {
        return Err(format!(
            "has {} fields where the header has {}",
            record.len(),
            columns.len()
        ));
    }
    let mut row = Row::default();
    for (value, column) in record.iter().zip(columns) {
        let value = Some(value.to_owned()).filter(|value| !value.is_empty());
        match COLUMNS[*column] {
            "id" => row.id = value,
            "account_id" => row.account_id = value,
            "tier" => row.tier = value,
            "name" => row.name = value,
            "created_at" => row.created_at = value,
            "expires_at" => row.expires_at = value,
            "key" => row.key = value,
            "sha256" => row.sha256 = value,
            "mode" => row.mode = value,
            "scopes" => row.scopes = value.map(ScopeList::Text),
            _ => row.hint = value,
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, format: ImportFormat) -> Vec<(u64, Result<Row, String>)> {
        let mut rows = Rows::new(text.as_bytes(), format).ok().unwrap();
        std::iter::from_fn(|| rows.next_row()).collect()
    }

    #[test]
    fn json_lines_are_numbered_from_one_skipping_blank_lines() {
        let text = "{\"id\":\"a\"}\n\n{\"id\":\"b\"}\nnot json\n";
        let rows = rows(text, ImportFormat::Jsonl);
        let lines: Vec<u64> = rows.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 3, 4]);
        assert_eq!(rows[1].1.as_ref().unwrap().id.as_deref(), Some("b"));
        assert!(rows[2].1.is_err());
    }

    #[test]
    fn csv_rows_are_numbered_by_their_line_with_the_header_as_line_one() {
        let text = "id,name,scopes\na,\"ci, prod\",x:read y:write\nb,deploy\n";
        let rows = rows(text, ImportFormat::Csv);
        assert_eq!(rows[0].0, 2);
        let first = rows[0].1.as_ref().unwrap();
        assert_eq!(first.name.as_deref(), Some("ci, prod"));
        assert!(matches!(&first.scopes, Some(ScopeList::Text(text)) if text == "x:read y:write"));
        assert_eq!(rows[1].0, 3);
        assert!(rows[1].1.is_err(), "a short row is an error");
    }

    #[test]
    fn an_unknown_csv_column_is_a_usage_error() {
        let refused = Rows::new("id,acount_id\n".as_bytes(), ImportFormat::Csv);
        assert!(matches!(refused, Err(failure) if failure.code == Failure::USAGE));
    }

    #[test]
    fn no_message_about_a_row_holds_its_key() {
        let key = "ak_secret_value_1234567890";
        let rows = [
            format!(
                r#"{{"id":"a","account_id":"x","tier":"free","name":"n","created_at":"yesterday","key":"{key}"}}"#
            ),
            format!(
                r#"{{"id":"a","account_id":"x","tier":"free","name":"n","created_at":"2024-01-01T00:00:00Z","key":"{key}","sha256":"00"}}"#
            ),
            format!(r#"{{"id":"a","tier":"free","key":"{key}"}}"#),
        ];
        for row in rows {
            let row: Row = serde_json::from_str(&row).unwrap();
            let error = imported_key(row).unwrap_err();
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
