//! The tests that read the process's `tracing` output, apart from the other integration tests:
//! `secret_hygiene` installs a global subscriber that captures every log line at TRACE level,
//! and `request_id` reads the decisions' events through subscribers of its own. Every test
//! installs the global capture first, so that each log callsite's interest is computed with it.
//!
//! ```text
//! cargo test --test logs
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo test --all-features --test logs
//! ```

#[path = "../it/common/mod.rs"]
mod common;

mod request_id;
mod secret_hygiene;
