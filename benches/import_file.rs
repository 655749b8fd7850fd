//! Writes a file for `tower-api-key import` to time (issue 19: 100,000 rows in well under a
//! minute on PostgreSQL): N keys of an older system, half as plaintext `ak_` keys (no checksum)
//! and half as SHA-256 digests alone, ten to an account, in JSON lines or (with `--csv`) CSV.
//! Each run writes new ids and keys.
//!
//! ```text
//! cargo bench --bench import_file -- 100000 /tmp/keys.jsonl
//! cargo build --release --features cli --bin tower-api-key
//! time target/release/tower-api-key import --store postgres://postgres@127.0.0.1:5432/test \
//!   --table import_bench --legacy-prefix ak_ --bypass-quota /tmp/keys.jsonl
//! ```
//!
//! Without a count and a path (as when `cargo bench` runs every bench) it writes nothing and
//! says how to run it.

use std::io::{BufWriter, Write};

use tower_api_key::key::KeyDigest;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let csv = args.iter().any(|arg| arg == "--csv");
    let mut plain = args.iter().filter(|arg| !arg.starts_with("--"));
    let (Some(count), Some(path)) = (plain.next(), plain.next()) else {
        println!("import_file writes a file to import: cargo bench --bench import_file -- N PATH [--csv]");
        return Ok(());
    };
    let count: usize = count.parse().expect("N is a number of rows");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    if csv {
        writeln!(
            out,
            "id,account_id,tier,name,created_at,expires_at,key,sha256,scopes"
        )?;
    }
    for index in 0..count {
        let key = format!("ak_{}", uuid::Uuid::new_v4().simple());
        let (id, account) = (
            format!("old_{run}_{index}"),
            format!("acct_{run}_{}", index / 10),
        );
        let name = format!("key {index}, imported");
        let created_at = "2024-05-01T12:00:00Z";
        let expires_at = if index % 3 == 0 {
            "2099-01-01T00:00:00Z"
        } else {
            ""
        };
        let (key, sha256) = if index % 2 == 0 {
            (key, String::new())
        } else {
            (String::new(), KeyDigest::of(&key).to_hex())
        };
        if csv {
            writeln!(
                out,
                "{id},{account},pro,\"{name}\",{created_at},{expires_at},{key},{sha256},iocs:read"
            )?;
        } else {
            let mut row = serde_json::json!({
                "id": id, "account_id": account, "tier": "pro", "name": name,
                "created_at": created_at, "scopes": ["iocs:read"],
            });
            let fields = [
                ("expires_at", expires_at),
                ("key", &key),
                ("sha256", &sha256),
            ];
            for (field, value) in fields {
                if !value.is_empty() {
                    row[field] = value.into();
                }
            }
            writeln!(out, "{row}")?;
        }
    }
    out.flush()?;
    eprintln!("wrote {count} rows to {path}");
    Ok(())
}
