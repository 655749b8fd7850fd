//! Keys redacted from `tracing` output (feature `tracing-redaction`).
//!
//! The layer never logs a key, but an application may: a URL with a key in its query string, a
//! request body, a header map in a `Debug` field, a key pasted by a user into a support form.
//! [`RedactKeys`] wraps the writer of `tracing_subscriber`'s `fmt` layer and replaces every key
//! in each line, whatever field it came in (the message, any field, written with `%` or `?`, the
//! fields of the spans around the event), with its prefix and `[REDACTED]`, before the line is
//! written:
//!
//! ```
//! use tower_api_key::key::KeyFormat;
//! use tower_api_key::redact::RedactKeys;
//!
//! tracing_subscriber::fmt()
//!     .with_writer(RedactKeys::new(std::io::stdout))
//!     .init();
//!
//! let key = KeyFormat::default().generate();
//! // Written as `... pasted=sk_live_[REDACTED]`.
//! tracing::info!(pasted = key.expose_secret(), "a user sent us their key");
//! ```
//!
//! What is redacted is what [`KeyFormat::find_keys`] finds, for the default format or the one
//! given to [`RedactKeys::key_format`]: a key of the right checksum, as a whole token (not glued
//! to a letter, digit or `_`). The escape sequences of coloured output count as separators, so
//! `key=<colour codes>sk_live_...` is found too. Bytes that are not UTF-8 are written unchanged,
//! and the text around them is redacted.
//!
//! # One event, one write
//!
//! Each buffer written through the writer is redacted whole, so a key is redacted only if it
//! arrives in one write. `tracing_subscriber`'s `fmt` layer (0.3) does that: it formats an event,
//! with its fields and its spans' fields, into one buffer, then hands the buffer to the writer
//! with one `write_all` (`fmt_layer.rs`, `on_event`), and the writer here consumes the whole
//! buffer in its one `write`. Something that writes an event in pieces through it (a `BufWriter`
//! in front of it, a `write!` of several arguments) could cut a key in two, and each half would
//! pass. Buffer behind it instead: `RedactKeys::new(|| BufWriter::new(std::io::stdout()))`.

use std::borrow::Cow;
use std::fmt;
use std::io;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::key::KeyFormat;

/// A [`MakeWriter`] whose writers redact every key of a [`KeyFormat`] (the default format unless
/// [`RedactKeys::key_format`] gives another) from what is written through them, before it
/// reaches the writer that `make_writer` makes. See [the module](self) for what is redacted.
///
/// ```
/// # use std::sync::{Arc, Mutex};
/// # /// An `io::Write` that keeps what it is given.
/// # #[derive(Clone, Default)]
/// # struct Logs(Arc<Mutex<Vec<u8>>>);
/// # impl std::io::Write for Logs {
/// #     fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
/// #         self.0.lock().unwrap().write(buf)
/// #     }
/// #     fn flush(&mut self) -> std::io::Result<()> {
/// #         Ok(())
/// #     }
/// # }
/// # impl Logs {
/// #     fn text(&self) -> String {
/// #         String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
/// #     }
/// # }
/// use tower_api_key::key::KeyFormat;
/// use tower_api_key::redact::RedactKeys;
///
/// // Keys of a prefix of your own, beside the default live keys.
/// let format = KeyFormat::new("acme_live_").also_accept("sk_live_");
/// let logs = Logs::default();
/// let writer = logs.clone();
/// let subscriber = tracing_subscriber::fmt()
///     .with_writer(RedactKeys::new(move || writer.clone()).key_format(format.clone()))
///     .without_time()
///     .finish();
///
/// let key = format.generate();
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::warn!(query = %format!("?token={}", key.expose_secret()), "key in a URL");
/// });
/// assert!(logs.text().contains("query=?token=acme_live_[REDACTED]"), "{}", logs.text());
/// assert!(!logs.text().contains(key.expose_secret()));
/// ```
#[derive(Clone)]
pub struct RedactKeys<M> {
    make_writer: M,
    format: KeyFormat,
}

impl<M> RedactKeys<M> {
    /// Redacts the keys of the default format (`sk_live_`, `sk_test_`) from what the writers
    /// that `make_writer` makes are given: `std::io::stdout`, `std::io::stderr`, a
    /// `tracing_appender` writer, any [`MakeWriter`].
    pub fn new(make_writer: M) -> Self {
        Self {
            make_writer,
            format: KeyFormat::default(),
        }
    }

    /// Redacts the keys of `format` instead: the one the application's
    /// [`ApiKeyLayer`](crate::ApiKeyLayer) accepts, with its prefixes.
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }
}

impl<M> fmt::Debug for RedactKeys<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactKeys")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactKeys<M> {
    type Writer = RedactedWriter<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedWriter {
            inner: self.make_writer.make_writer(),
            format: &self.format,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactedWriter {
            inner: self.make_writer.make_writer_for(meta),
            format: &self.format,
        }
    }
}

/// The writer [`RedactKeys`] makes: each buffer written, with its keys redacted, goes to the
/// inner writer in one `write_all`.
pub struct RedactedWriter<'a, W> {
    inner: W,
    format: &'a KeyFormat,
}

impl<W> fmt::Debug for RedactedWriter<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactedWriter")
            .field("format", self.format)
            .finish_non_exhaustive()
    }
}

impl<W: io::Write> io::Write for RedactedWriter<'_, W> {
    /// Writes all of `buf`, redacted, or fails: a part of a buffer is never written, since a
    /// key cut at its end would pass.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&redacted(self.format, buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `bytes` with the keys of `format` redacted from each run of text between bytes that are not
/// UTF-8 and ANSI escape sequences; `bytes` itself when there is none.
fn redacted<'b>(format: &KeyFormat, bytes: &'b [u8]) -> Cow<'b, [u8]> {
    let mut out = Vec::new();
    let mut copied = 0;
    let mut offset = 0;
    for chunk in bytes.utf8_chunks() {
        let mut text = chunk.valid();
        while !text.is_empty() {
            let run_len = text.find('\x1b').unwrap_or(text.len());
            let (run, rest) = text.split_at(run_len);
            if let Cow::Owned(clean) = format.redact(run) {
                out.extend_from_slice(&bytes[copied..offset]);
                out.extend_from_slice(clean.as_bytes());
                copied = offset + run.len();
            }
            let skip = escape_len(rest.as_bytes());
            text = &rest[skip..];
            offset += run_len + skip;
        }
        offset += chunk.invalid().len();
    }
    if copied == 0 {
        return Cow::Borrowed(bytes);
    }
    out.extend_from_slice(&bytes[copied..]);
    Cow::Owned(out)
}

/// The length of the ANSI escape sequence at the start of `bytes` (`ESC [`, parameters, a
/// final byte, as colours are written), or 1 for a lone `ESC`; 0 when `bytes` is empty. It
/// ends before any byte that cannot be part of it, so the rest stays UTF-8.
fn escape_len(bytes: &[u8]) -> usize {
    match bytes {
        [] => 0,
        [0x1b, b'[', sequence @ ..] => {
            let end = sequence
                .iter()
                .position(|byte| !(0x20..=0x3f).contains(byte));
            match end.map(|at| (at, sequence[at])) {
                Some((at, 0x40..=0x7e)) => 2 + at + 1,
                Some((at, _)) => 2 + at,
                None => bytes.len(),
            }
        }
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn redact_bytes(bytes: &[u8]) -> Vec<u8> {
        redacted(&KeyFormat::default(), bytes).into_owned()
    }

    fn key() -> String {
        KeyFormat::default().generate().expose_secret().to_owned()
    }

    #[test]
    fn text_without_keys_is_written_as_is_without_a_copy() {
        let format = KeyFormat::default();
        for text in [
            &b"plain line sk_test_x\n"[..],
            b"\xff\xfe",
            b"\x1b[1mbold\x1b[0m",
            b"",
        ] {
            assert!(matches!(redacted(&format, text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn keys_around_bytes_that_are_not_utf8_are_redacted_and_the_bytes_kept() {
        let (one, two) = (key(), key());
        let line = [
            b"\xff",
            one.as_bytes(),
            b" \xc3 ",
            two.as_bytes(),
            b"\xfe\n",
        ]
        .concat();
        assert_eq!(
            redact_bytes(&line),
            b"\xffsk_live_[REDACTED] \xc3 sk_live_[REDACTED]\xfe\n"
        );
    }

    #[test]
    fn a_key_right_after_a_colour_code_is_redacted() {
        // How `fmt`'s default formatter writes `key = %key` with colours on.
        let key = key();
        let line = format!("\x1b[3mkey\x1b[0m\x1b[2m=\x1b[0m{key} \x1b[1m{key}\x1b[0m\n");
        assert_eq!(
            String::from_utf8(redact_bytes(line.as_bytes())).unwrap(),
            "\x1b[3mkey\x1b[0m\x1b[2m=\x1b[0msk_live_[REDACTED] \x1b[1msk_live_[REDACTED]\x1b[0m\n"
        );
    }

    #[test]
    fn escape_sequences_end_at_their_final_byte_or_before_a_stray_byte() {
        assert_eq!(escape_len(b"\x1b[0mrest"), 4);
        assert_eq!(escape_len(b"\x1b[38;5;12mrest"), 10);
        assert_eq!(escape_len(b"\x1b[12\xc3\xa9"), 4);
        assert_eq!(escape_len(b"\x1b[12"), 4);
        assert_eq!(escape_len(b"\x1bx"), 1);
        let key = key();
        let stray = format!("\x1b[1\u{e9}{key}");
        assert_eq!(
            redact_bytes(stray.as_bytes()),
            "\x1b[1\u{e9}sk_live_[REDACTED]".as_bytes()
        );
    }

    #[test]
    fn a_write_takes_the_whole_buffer_and_writes_it_redacted() {
        let make_writer = RedactKeys::new(std::sync::Mutex::new(Vec::new()));
        let key = key();
        let line = format!("leaked {key}\n");
        let written = make_writer.make_writer().write(line.as_bytes()).unwrap();
        assert_eq!(written, line.len());
        let inner = make_writer.make_writer.into_inner().unwrap();
        assert_eq!(inner, b"leaked sk_live_[REDACTED]\n");
    }

    #[test]
    fn debug_shows_the_format_only() {
        let make_writer = RedactKeys::new(std::io::stdout);
        assert!(format!("{make_writer:?}").starts_with("RedactKeys { format: KeyFormat"));
    }
}
