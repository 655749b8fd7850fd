//! `redact::RedactKeys` under `tracing_subscriber`'s `fmt` layer: a key in any field of an event
//! or of its spans is written redacted; everything else is written as it would be without it.
#![cfg(feature = "tracing-redaction")]

use std::io;
use std::sync::{Arc, Mutex};

use tower_api_key::key::KeyFormat;
use tower_api_key::redact::RedactKeys;
use tracing::Level;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

/// An `io::Write` that keeps what it is given, shared with the test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// What `log` writes through a `fmt` subscriber (no timestamps, every level, span events on
/// creation) whose writer is `make_writer(logs)`.
fn written<M>(make_writer: impl FnOnce(Logs) -> M, log: impl FnOnce()) -> String
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(make_writer(logs.clone()))
        .with_max_level(Level::TRACE)
        .with_span_events(FmtSpan::NEW)
        .without_time()
        .finish();
    tracing::subscriber::with_default(subscriber, log);
    logs.text()
}

/// What `log` writes through `RedactKeys` of the default format.
fn redacted(log: impl FnOnce()) -> String {
    written(|logs| RedactKeys::new(move || logs.clone()), log)
}

fn assert_redacted(logs: &str, key: &str, prefix: &str) {
    assert!(!logs.contains(key), "{logs}");
    assert!(!logs.contains(&key[prefix.len()..]), "{logs}");
    assert!(logs.contains(&format!("{prefix}[REDACTED]")), "{logs}");
}

fn live_key() -> String {
    KeyFormat::default().generate().expose_secret().to_owned()
}

#[test]
fn a_key_in_the_message_is_redacted() {
    let key = live_key();
    let logs = redacted(|| tracing::info!("retrying with {key}"));
    assert_redacted(&logs, &key, "sk_live_");
    assert!(logs.contains("retrying with sk_live_[REDACTED]"), "{logs}");
}

#[test]
fn a_key_in_a_display_field_is_redacted() {
    let key = live_key();
    let logs = redacted(|| tracing::warn!(header = %key, "odd header"));
    assert_redacted(&logs, &key, "sk_live_");
    assert!(logs.contains("header=sk_live_[REDACTED]"), "{logs}");
}

#[test]
fn a_key_in_a_debug_field_is_redacted() {
    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug` only
    struct Form {
        comment: String,
    }
    let key = live_key();
    let form = Form {
        comment: format!("my key is {key}, help"),
    };
    let logs = redacted(|| tracing::error!(raw = ?key.as_str(), ?form, "bad form"));
    assert_redacted(&logs, &key, "sk_live_");
    assert!(logs.contains(r#"raw="sk_live_[REDACTED]""#), "{logs}");
    assert!(
        logs.contains("my key is sk_live_[REDACTED], help"),
        "{logs}"
    );
}

#[test]
fn a_key_in_a_span_field_is_redacted_in_every_event_inside_and_the_span_s_own() {
    let key = live_key();
    let test_key = KeyFormat::default()
        .generate_for(tower_api_key::access::KeyMode::Test)
        .unwrap();
    let test_key = test_key.expose_secret();
    let logs = redacted(|| {
        let span = tracing::info_span!("request", uri = %format!("/api?token={key}"));
        let _entered = span.enter();
        tracing::debug!(inner = test_key, "inside");
    });
    assert_redacted(&logs, &key, "sk_live_");
    assert_redacted(&logs, test_key, "sk_test_");
    // The span's creation event, and the event inside with the span's fields before it.
    assert_eq!(
        logs.matches("uri=/api?token=sk_live_[REDACTED]").count(),
        2,
        "{logs}"
    );
    assert!(
        logs.contains(r#"inside inner="sk_test_[REDACTED]""#),
        "{logs}"
    );
}

#[test]
fn text_without_keys_is_written_as_without_the_writer() {
    let log = || {
        let span = tracing::info_span!("request", id = 7, note = "sk_test_x");
        let _entered = span.enter();
        let lookalike = format!("sk_live_{}", "0".repeat(38));
        tracing::info!(filter = "sk_abc", lookalike, "no key: sk_live_ é \u{1F511}");
    };
    let plain = written(|logs| move || logs.clone(), log);
    let through = redacted(log);
    assert!(plain.contains("sk_live_0000"), "{plain}");
    assert_eq!(through, plain);
}

#[test]
fn keys_of_another_format_are_redacted_by_a_writer_given_that_format() {
    let format = KeyFormat::new("acme_").test_prefix("acme_test_");
    let key = format.generate();
    let key = key.expose_secret().to_owned();
    let default_key = live_key();
    let log = || tracing::info!(pasted = %key, other = %default_key, "support ticket");
    let logs = written(
        |logs| RedactKeys::new(move || logs.clone()).key_format(format.clone()),
        log,
    );
    assert_redacted(&logs, &key, "acme_");
    assert!(logs.contains("pasted=acme_[REDACTED]"), "{logs}");
    // The writer redacts the keys of its format, not the default one's.
    assert!(logs.contains(&default_key), "{logs}");
    assert!(redacted(log).contains(&key));
}

#[test]
fn the_inner_writer_is_chosen_per_event_as_without_redaction() {
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    let key = live_key();
    let (warnings, everything) = (Logs::default(), Logs::default());
    let make_writer = {
        let (warnings, everything) = (warnings.clone(), everything.clone());
        let warnings = (move || warnings.clone()).with_max_level(Level::WARN);
        RedactKeys::new(warnings.and(move || everything.clone()))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(make_writer)
        .without_time()
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(key = %key, "quiet");
        tracing::warn!(key = %key, "loud");
    });
    let (warnings, everything) = (warnings.text(), everything.text());
    assert!(
        warnings.contains("loud") && !warnings.contains("quiet"),
        "{warnings}"
    );
    assert!(everything.contains("loud") && everything.contains("quiet"));
    for logs in [warnings, everything] {
        assert_redacted(&logs, &key, "sk_live_");
    }
}
