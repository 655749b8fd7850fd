//! Every shape of `Authorization` and `X-API-Key` a client or an attacker could send, as a table.
//!
//! Each row names the documented answer and the rule it follows from (the module docs of
//! `src/credentials.rs` and the docs of `ApiKeyLayer`). Every row runs twice: through
//! `tower::ServiceExt::oneshot` on the layer, and as raw bytes over HTTP/1.1 to an axum server on
//! 127.0.0.1, so that bytes `http`'s types refuse can still be sent. No row may panic or get a
//! 5xx; every refusal by the layer has the exact envelope; no response repeats a key.
//!
//! Over HTTP, the server (hyper) reads the request before the layer does: it trims spaces and
//! tabs around a header value, and refuses some inputs itself. Rows where that changes the
//! answer say so, and why.

use crate::common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use common::{assert_envelope, Answer, Keys, REACHED};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{key::MAX_KEY_LEN, ApiKey, ApiKeyLayer, KeyIdentity};

const PATH: &str = "/api/whoami";

/// What a row is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// 200 from the inner service, with the key's identity.
    Pass,
    /// 401 `missing_api_key`, `WWW-Authenticate: Bearer`.
    Missing,
    /// 401 `invalid_api_key`, `WWW-Authenticate: Bearer error="invalid_token"`.
    Invalid,
    /// 401 `expired_api_key`, `WWW-Authenticate: Bearer error="invalid_token"`.
    Expired,
    /// 401 `invalid_api_key`, `WWW-Authenticate: Bearer error="invalid_request"`: a key in the
    /// query string.
    KeyInQuery,
    /// `http`'s `HeaderName`/`HeaderValue` refuse the bytes, so no in-process request can carry
    /// them and the layer can never see them.
    Unbuildable,
    /// The HTTP server answers this status itself, before the layer runs.
    Server(StatusCode),
}

impl Expect {
    /// The refusal the layer gives: status, `code`, `WWW-Authenticate`.
    fn refusal(self) -> Option<(StatusCode, &'static str, &'static str)> {
        const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
        match self {
            Self::Missing => Some((StatusCode::UNAUTHORIZED, "missing_api_key", "Bearer")),
            Self::Invalid => Some((StatusCode::UNAUTHORIZED, "invalid_api_key", INVALID_TOKEN)),
            Self::Expired => Some((StatusCode::UNAUTHORIZED, "expired_api_key", INVALID_TOKEN)),
            Self::KeyInQuery => Some((
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                r#"Bearer error="invalid_request""#,
            )),
            Self::Pass | Self::Unbuildable | Self::Server(_) => None,
        }
    }
}

/// One case: a request and its documented answers.
struct Row {
    name: String,
    /// The documented rule the answer follows from.
    rule: &'static str,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    oneshot: Expect,
    http: Expect,
    /// Why the answer over HTTP differs from the layer's own, when it does.
    http_why: Option<&'static str>,
}

impl Row {
    fn new(name: impl Into<String>, rule: &'static str, answer: Expect) -> Self {
        Self {
            name: name.into(),
            rule,
            target: PATH.to_owned(),
            headers: Vec::new(),
            oneshot: answer,
            http: answer,
            http_why: None,
        }
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn header_n(mut self, name: &str, value: &str, times: usize) -> Self {
        for _ in 0..times {
            self = self.header(name, value);
        }
        self
    }

    fn query(mut self, query: impl AsRef<str>) -> Self {
        self.target = format!("{PATH}?{}", query.as_ref());
        self
    }

    /// Over HTTP the answer is `http`, for the reason `why`.
    fn over_http(mut self, http: Expect, why: &'static str) -> Self {
        self.http = http;
        self.http_why = Some(why);
        self
    }

    /// Header values long enough that finding one in a response means it was echoed.
    fn echoable_values(&self) -> impl Iterator<Item = &[u8]> {
        (self.headers.iter())
            .map(|(_, value)| value.as_slice())
            .filter(|value| value.len() >= 20)
    }
}

// The rules, as documented.
const BEARER: &str = "credentials: a key is read from `Authorization: Bearer <key>`";
const X_API_KEY: &str = "credentials: a key is read from `X-API-Key: <key>`";
const NO_KEY: &str = "credentials: no key at all is missing_api_key";
const SCHEME_CASE: &str = "credentials: the Bearer scheme is matched case-insensitively";
const SCHEME_SPACE: &str = "credentials: the scheme must be followed by one or more spaces; \
                            without a space it is another scheme, ignored";
const OTHER_SCHEME: &str =
    "credentials: an Authorization of another scheme is ignored; the request is judged by its \
     other headers";
const TRIM: &str = "credentials: spaces and tabs around a key are ignored";
const EMPTY: &str = "credentials: an empty key counts as no key";
const MALFORMED: &str = "credentials: a key with inner whitespace, control characters, \
                         non-ASCII or non-UTF-8 bytes, or longer than MAX_KEY_LEN is invalid";
const FORMAT: &str = "layer step 2: prefix, length, alphabet and checksum are checked, \
                      without a store lookup";
const SAME_KEY: &str = "credentials: the two headers, and each header repeated, may carry the \
                        same key";
const DIFFERENT_KEYS: &str = "credentials: two different keys are invalid_api_key, never \
                              resolved by picking one";
const TEST_PREFIX: &str = "the checksum covers the body only, so another accepted prefix keeps it \
                           well formed; the digest differs, so no record: invalid_api_key";
const UNKNOWN: &str = "layer step 4: a well-formed key with no record (unknown, deleted) is \
                       invalid_api_key";
const INACTIVE: &str = "layer step 4: a revoked or expired key is expired_api_key";
const QUERY: &str = "credentials: a non-empty access_token/api_key/apikey/api-key/x-api-key \
                     parameter (any case, percent-decoded), or a parameter whose decoded name or \
                     value holds a key shape (an accepted prefix, 38 base62 characters, checksum \
                     or not), is refused with invalid_request, even beside a valid header";
const QUERY_OTHER: &str = "credentials: other parameters, empty ones, values that merely start \
                           with a prefix or hold one glued to a word are fine; parameters are \
                           separated by `&` or `;`";
const COOKIE: &str = "credentials: keys are read from the two headers only; a Cookie is ignored";
const HEADER_NAME: &str = "HTTP: header names are case-insensitive; only the configured names \
                           are read";
const UNBUILDABLE: &str = "http::HeaderValue refuses control bytes other than tab (and DEL)";

// Why the server answers some rows itself.
const HYPER_CONTROL: &str = "httparse refuses control bytes (other than tab) and DEL in a header \
                             value: 400 before the layer";
const OWS: &str = "credentials: whitespace around a header value is ignored, as HTTP parsers \
                   drop it (RFC 9110 5.5)";
const HYPER_OWS: &str = "HTTP strips spaces and tabs around a header value (RFC 9110 5.5), so the \
                         layer sees the value trimmed";

fn bearer(key: &str) -> Vec<u8> {
    format!("Bearer {key}").into_bytes()
}

/// `key` with byte `at` replaced by `with`.
fn substituted(key: &str, at: usize, with: u8) -> String {
    let mut bytes = key.as_bytes().to_vec();
    assert_ne!(bytes[at], with);
    bytes[at] = with;
    String::from_utf8(bytes).unwrap()
}

/// A base62 character other than `than`.
fn other_alnum(than: u8) -> u8 {
    if than == b'7' {
        b'8'
    } else {
        b'7'
    }
}

fn rows(keys: &Keys) -> Vec<Row> {
    use Expect::*;
    let active = keys.active.expose_secret();
    let unknown = keys.unknown.expose_secret();
    let revoked = keys.revoked.expose_secret();
    let expired = keys.expired.expose_secret();
    let deleted = keys.deleted.expose_secret();
    let prefix_len = "sk_live_".len();
    let at = |i: usize| active.as_bytes()[i];
    let swap_at = (prefix_len..active.len() - 1)
        .find(|&i| at(i) != at(i + 1))
        .unwrap();
    let mut swapped = active.as_bytes().to_vec();
    swapped.swap(swap_at, swap_at + 1);
    let swapped = String::from_utf8(swapped).unwrap();
    let letter_at = (prefix_len..active.len())
        .find(|&i| at(i).is_ascii_alphabetic())
        .unwrap();
    let kb = |n: usize| "a".repeat(n * 1024);
    let percent_encoded_key = active.replace('_', "%5F");

    vec![
        // The baseline.
        Row::new("valid key as bearer", BEARER, Pass).header("authorization", bearer(active)),
        Row::new("valid key in x-api-key", X_API_KEY, Pass).header("x-api-key", active),
        Row::new("no credential headers", NO_KEY, Missing),
        // The scheme.
        Row::new("scheme lowercase", SCHEME_CASE, Pass)
            .header("authorization", format!("bearer {active}")),
        Row::new("scheme uppercase", SCHEME_CASE, Pass)
            .header("authorization", format!("BEARER {active}")),
        Row::new("scheme mixed case", SCHEME_CASE, Pass)
            .header("authorization", format!("BeArEr {active}")),
        Row::new("no space after scheme", SCHEME_SPACE, Missing)
            .header("authorization", format!("Bearer{active}")),
        Row::new("tab instead of space after scheme", SCHEME_SPACE, Missing)
            .header("authorization", format!("Bearer\t{active}")),
        Row::new("colon after scheme", SCHEME_SPACE, Missing)
            .header("authorization", format!("Bearer:{active}")),
        Row::new("longer scheme name", SCHEME_SPACE, Missing)
            .header("authorization", format!("BearerToken {active}")),
        Row::new("scheme with a Cyrillic e", SCHEME_SPACE, Missing)
            .header("authorization", format!("B\u{435}arer {active}")),
        Row::new("non-breaking space after scheme", SCHEME_SPACE, Missing).header(
            "authorization",
            [b"Bearer\xc2\xa0", active.as_bytes()].concat(),
        ),
        // Spaces and tabs.
        Row::new("several spaces after scheme", TRIM, Pass)
            .header("authorization", format!("Bearer     {active}")),
        Row::new("space then tabs after scheme", TRIM, Pass)
            .header("authorization", format!("Bearer \t\t{active}")),
        Row::new("trailing spaces and tabs after bearer key", TRIM, Pass)
            .header("authorization", format!("Bearer {active} \t ")),
        Row::new("x-api-key padded with spaces and tabs", TRIM, Pass)
            .header("x-api-key", format!(" \t {active}\t ")),
        Row::new("spaces before the scheme", OWS, Pass)
            .header("authorization", format!("  Bearer {active}")),
        Row::new("scheme alone", EMPTY, Missing).header("authorization", "Bearer"),
        Row::new("scheme and spaces only", EMPTY, Missing).header("authorization", "Bearer    "),
        Row::new("scheme and a tab only", SCHEME_SPACE, Missing)
            .header("authorization", "Bearer\t"),
        Row::new("empty x-api-key", EMPTY, Missing).header("x-api-key", ""),
        Row::new("x-api-key of spaces and tabs", EMPTY, Missing).header("x-api-key", " \t  "),
        Row::new("empty x-api-key beside a valid one", SAME_KEY, Pass)
            .header("x-api-key", "")
            .header("x-api-key", active),
        // Quotes, commas, several tokens.
        Row::new("double-quoted bearer key", FORMAT, Invalid)
            .header("authorization", format!("Bearer \"{active}\"")),
        Row::new("single-quoted x-api-key", FORMAT, Invalid)
            .header("x-api-key", format!("'{active}'")),
        Row::new(
            "two bearer credentials joined by a comma",
            MALFORMED,
            Invalid,
        )
        .header("authorization", format!("Bearer {active}, Bearer {active}")),
        Row::new("same key twice, comma without space", FORMAT, Invalid)
            .header("x-api-key", format!("{active},{active}")),
        Row::new("same key twice, comma and space", MALFORMED, Invalid)
            .header("x-api-key", format!("{active}, {active}")),
        Row::new("key then a trailing comma", FORMAT, Invalid)
            .header("x-api-key", format!("{active},")),
        Row::new("bearer key and a second token", MALFORMED, Invalid)
            .header("authorization", format!("Bearer {active} extra")),
        Row::new("bearer key as an auth-param", FORMAT, Invalid)
            .header("authorization", format!("Bearer token={active}")),
        // Control bytes.
        Row::new("NUL inside the key", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [active.as_bytes(), b"\0"].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("NUL between scheme and key", UNBUILDABLE, Unbuildable)
            .header("authorization", [b"Bearer\0", active.as_bytes()].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("SOH control byte", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [b"\x01", active.as_bytes()].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("vertical tab after scheme", UNBUILDABLE, Unbuildable)
            .header(
                "authorization",
                [b"Bearer \x0b", active.as_bytes()].concat(),
            )
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("ESC sequence in the key", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [active.as_bytes(), b"\x1b[2J"].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("DEL byte in the key", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [active.as_bytes(), b"\x7f"].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("bare CR in the key", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [active.as_bytes(), b"\rX"].concat())
            .over_http(Server(StatusCode::BAD_REQUEST), HYPER_CONTROL),
        Row::new("obs-fold continuation line", UNBUILDABLE, Unbuildable)
            .header("x-api-key", [active.as_bytes(), b"\r\n continued"].concat())
            .over_http(
                Server(StatusCode::BAD_REQUEST),
                "a header line starting with a space (obs-fold) is refused by httparse: 400",
            ),
        Row::new(
            "bare LF smuggling a second x-api-key",
            UNBUILDABLE,
            Unbuildable,
        )
        .header(
            "authorization",
            [bearer(active), b"\nX-API-Key: ".to_vec(), unknown.into()].concat(),
        )
        .over_http(
            Invalid,
            "httparse ends a header line at a bare LF, so the server sees two headers \
                 carrying two different keys: invalid_api_key (different keys rule)",
        ),
        // Bytes above 0x7F.
        Row::new("UTF-8 letter in the key", MALFORMED, Invalid)
            .header("x-api-key", format!("{active}\u{e9}")),
        Row::new("Cyrillic s in the prefix", MALFORMED, Invalid)
            .header("x-api-key", format!("\u{455}{}", &active[1..])),
        Row::new("invalid UTF-8 in the key", MALFORMED, Invalid)
            .header("x-api-key", [active.as_bytes(), b"\xff\xfe"].concat()),
        Row::new("only bytes above 0x7F after bearer", MALFORMED, Invalid).header(
            "authorization",
            [b"Bearer ".as_slice(), &[0x80, 0xbf, 0xc0, 0xff]].concat(),
        ),
        Row::new("fullwidth underscore in the prefix", MALFORMED, Invalid)
            .header("x-api-key", active.replacen('_', "\u{ff3f}", 1)),
        // Sizes.
        Row::new("key of MAX_KEY_LEN visible characters", FORMAT, Invalid).header(
            "x-api-key",
            format!("sk_live_{}", "a".repeat(MAX_KEY_LEN - 8)),
        ),
        Row::new("key one longer than MAX_KEY_LEN", MALFORMED, Invalid).header(
            "x-api-key",
            format!("sk_live_{}", "a".repeat(MAX_KEY_LEN - 7)),
        ),
        Row::new("8 KB x-api-key", MALFORMED, Invalid).header("x-api-key", kb(8)),
        Row::new("8 KB bearer token", MALFORMED, Invalid).header("authorization", bearer(&kb(8))),
        Row::new("valid key padded to 8 KB with spaces", TRIM, Pass)
            .header("x-api-key", format!("{active}{}", " ".repeat(8 * 1024)))
            .over_http(Pass, HYPER_OWS),
        Row::new("64 KB x-api-key", MALFORMED, Invalid).header("x-api-key", kb(64)),
        Row::new("64 KB bearer token", MALFORMED, Invalid).header("authorization", bearer(&kb(64))),
        Row::new("64 KB valid-looking key", MALFORMED, Invalid)
            .header("x-api-key", format!("{active}{}", kb(64))),
        // Repeated headers and both headers.
        Row::new("authorization twice, same key", SAME_KEY, Pass)
            .header("authorization", bearer(active))
            .header("authorization", bearer(active)),
        Row::new("x-api-key twice, same key", SAME_KEY, Pass)
            .header("x-api-key", active)
            .header("x-api-key", active),
        Row::new("x-api-key 50 times, same key", SAME_KEY, Pass).header_n("x-api-key", active, 50),
        Row::new("x-api-key 120 times, same key", SAME_KEY, Pass)
            .header_n("x-api-key", active, 120)
            .over_http(
                Server(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                "hyper parses at most 100 headers per request: 431 before the layer",
            ),
        Row::new(
            "authorization twice, different keys",
            DIFFERENT_KEYS,
            Invalid,
        )
        .header("authorization", bearer(active))
        .header("authorization", bearer(unknown)),
        Row::new("x-api-key twice, different keys", DIFFERENT_KEYS, Invalid)
            .header("x-api-key", active)
            .header("x-api-key", unknown),
        Row::new("x-api-key twice, second one malformed", MALFORMED, Invalid)
            .header("x-api-key", active)
            .header("x-api-key", "not a key"),
        Row::new(
            "x-api-key twice, valid and revoked",
            DIFFERENT_KEYS,
            Invalid,
        )
        .header("x-api-key", active)
        .header("x-api-key", revoked),
        Row::new("both headers agree", SAME_KEY, Pass)
            .header("authorization", bearer(active))
            .header("x-api-key", active),
        Row::new(
            "both headers agree, different padding and case",
            SAME_KEY,
            Pass,
        )
        .header("authorization", format!("bEARER \t{active} "))
        .header("x-api-key", format!("\t{active}")),
        Row::new("both headers conflict", DIFFERENT_KEYS, Invalid)
            .header("authorization", bearer(active))
            .header("x-api-key", unknown),
        Row::new(
            "both headers conflict, valid and malformed",
            MALFORMED,
            Invalid,
        )
        .header("authorization", bearer(active))
        .header("x-api-key", "sk_live_typo"),
        Row::new("both headers agree on a revoked key", INACTIVE, Expired)
            .header("authorization", bearer(revoked))
            .header("x-api-key", revoked),
        Row::new("empty bearer beside a valid x-api-key", EMPTY, Pass)
            .header("authorization", "Bearer ")
            .header("x-api-key", active),
        // Other schemes.
        Row::new("basic alone", OTHER_SCHEME, Missing)
            .header("authorization", "Basic dXNlcjpwYXNzd29yZA=="),
        Row::new("basic carrying the key", OTHER_SCHEME, Missing)
            .header("authorization", format!("Basic {active}")),
        Row::new("token scheme", OTHER_SCHEME, Missing)
            .header("authorization", format!("Token {active}")),
        Row::new("digest scheme", OTHER_SCHEME, Missing).header(
            "authorization",
            r#"Digest username="u", realm="r", nonce="n", uri="/", response="0""#,
        ),
        Row::new("apikey scheme", OTHER_SCHEME, Missing)
            .header("authorization", format!("ApiKey {active}")),
        Row::new("bare key in authorization", OTHER_SCHEME, Missing)
            .header("authorization", active),
        Row::new("basic beside a valid x-api-key", OTHER_SCHEME, Pass)
            .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
            .header("x-api-key", active),
        Row::new(
            "basic then bearer in repeated authorization",
            OTHER_SCHEME,
            Pass,
        )
        .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
        .header("authorization", bearer(active)),
        // Wrong prefix, wrong checksum, one-character changes.
        Row::new("wrong prefix", FORMAT, Invalid)
            .header("x-api-key", format!("pk_live_{}", &active[prefix_len..])),
        Row::new(
            "live key's body under the test prefix",
            TEST_PREFIX,
            Invalid,
        )
        .header("x-api-key", format!("sk_test_{}", &active[prefix_len..])),
        Row::new("prefix in capitals", FORMAT, Invalid)
            .header("x-api-key", format!("SK_LIVE_{}", &active[prefix_len..])),
        Row::new("no prefix", FORMAT, Invalid).header("x-api-key", &active[prefix_len..]),
        Row::new("prefix only", FORMAT, Invalid).header("x-api-key", "sk_live_"),
        Row::new("made-up key", FORMAT, Invalid).header("x-api-key", "sk_live_not-a-real-key"),
        Row::new("wrong checksum", FORMAT, Invalid).header(
            "x-api-key",
            substituted(active, active.len() - 1, other_alnum(at(active.len() - 1))),
        ),
        Row::new("one random character substituted", FORMAT, Invalid).header(
            "x-api-key",
            substituted(active, prefix_len + 5, other_alnum(at(prefix_len + 5))),
        ),
        Row::new("one character substituted by punctuation", FORMAT, Invalid)
            .header("x-api-key", substituted(active, prefix_len + 5, b'-')),
        Row::new("one prefix character substituted", FORMAT, Invalid)
            .header("x-api-key", substituted(active, 2, b'-')),
        Row::new("one character's case flipped", FORMAT, Invalid).header(
            "x-api-key",
            substituted(active, letter_at, at(letter_at) ^ 0x20),
        ),
        Row::new("one character deleted", FORMAT, Invalid).header(
            "x-api-key",
            format!(
                "{}{}",
                &active[..prefix_len + 9],
                &active[prefix_len + 10..]
            ),
        ),
        Row::new("one character inserted", FORMAT, Invalid).header(
            "x-api-key",
            format!(
                "{}x{}",
                &active[..prefix_len + 9],
                &active[prefix_len + 9..]
            ),
        ),
        Row::new("two adjacent characters swapped", FORMAT, Invalid).header("x-api-key", swapped),
        Row::new("truncated by one character", FORMAT, Invalid)
            .header("x-api-key", &active[..active.len() - 1]),
        Row::new("truncated to the random part", FORMAT, Invalid)
            .header("x-api-key", &active[..active.len() - 6]),
        Row::new("one extra trailing character", FORMAT, Invalid)
            .header("x-api-key", format!("{active}0")),
        Row::new("extra trailing punctuation", FORMAT, Invalid)
            .header("authorization", format!("Bearer {active}.")),
        Row::new("key written twice", FORMAT, Invalid)
            .header("x-api-key", format!("{active}{active}")),
        // Records.
        Row::new("well-formed unknown key", UNKNOWN, Invalid).header("x-api-key", unknown),
        Row::new("valid key of a deleted record", UNKNOWN, Invalid)
            .header("authorization", bearer(deleted)),
        Row::new("revoked key", INACTIVE, Expired).header("x-api-key", revoked),
        Row::new("expired key", INACTIVE, Expired).header("authorization", bearer(expired)),
        // The query string.
        Row::new("valid key as api_key parameter only", QUERY, KeyInQuery)
            .query(format!("api_key={active}")),
        Row::new(
            "access_token parameter beside a valid header",
            QUERY,
            KeyInQuery,
        )
        .query(format!("access_token={active}"))
        .header("authorization", bearer(active)),
        Row::new("apikey parameter, not a key", QUERY, KeyInQuery)
            .query("apikey=hunter2")
            .header("x-api-key", active),
        Row::new("api-key parameter", QUERY, KeyInQuery)
            .query(format!("type=ipv4&api-key={unknown}"))
            .header("x-api-key", active),
        Row::new("x-api-key parameter", QUERY, KeyInQuery)
            .query(format!("x-api-key={active}"))
            .header("x-api-key", active),
        Row::new("API_KEY parameter in capitals", QUERY, KeyInQuery)
            .query("API_KEY=abc")
            .header("x-api-key", active),
        Row::new("X-Api-Key parameter in mixed case", QUERY, KeyInQuery)
            .query("X-Api-Key=abc")
            .header("x-api-key", active),
        Row::new("key as the value of another parameter", QUERY, KeyInQuery)
            .query(format!("q={active}"))
            .header("x-api-key", active),
        Row::new(
            "percent-encoded key as a parameter value",
            QUERY,
            KeyInQuery,
        )
        .query(format!("q={percent_encoded_key}"))
        .header("x-api-key", active),
        Row::new(
            "key shape with a wrong checksum as a value",
            QUERY,
            KeyInQuery,
        )
        .query(format!("q={}", substituted(active, letter_at, b'0')))
        .header("x-api-key", active),
        Row::new("key within a longer value", QUERY, KeyInQuery)
            .query(format!("q=leaked+{active}+here"))
            .header("x-api-key", active),
        Row::new("percent-encoded parameter name", QUERY, KeyInQuery)
            .query("%41pi%5Fkey=abc")
            .header("x-api-key", active),
        Row::new("key as a parameter name", QUERY, KeyInQuery)
            .query(active)
            .header("x-api-key", active),
        Row::new("test-prefix value, not a key shape", QUERY_OTHER, Pass)
            .query("q=sk_test_abc")
            .header("x-api-key", active),
        Row::new("bare prefix as a parameter value", QUERY_OTHER, Pass)
            .query("note=sk_live_")
            .header("x-api-key", active),
        Row::new("api_key after a semicolon", QUERY, KeyInQuery)
            .query("q=1;api_key=abc")
            .header("x-api-key", active),
        Row::new("empty api_key parameter", QUERY_OTHER, Pass)
            .query("api_key=")
            .header("x-api-key", active),
        Row::new("api_key parameter without a value", QUERY_OTHER, Pass)
            .query("api_key")
            .header("x-api-key", active),
        Row::new("prefix inside a parameter value", QUERY_OTHER, Pass)
            .query("q=xsk_live_abc")
            .header("x-api-key", active),
        Row::new("token parameter", QUERY_OTHER, Pass)
            .query("token=abc&type=ipv4")
            .header("x-api-key", active),
        // Cookies.
        Row::new("key in a cookie only", COOKIE, Missing)
            .header("cookie", format!("api_key={active}")),
        Row::new("bearer in a cookie only", COOKIE, Missing)
            .header("cookie", format!("authorization=Bearer {active}")),
        Row::new(
            "unknown key in a cookie beside a valid header",
            COOKIE,
            Pass,
        )
        .header("cookie", format!("api_key={unknown}; session=1"))
        .header("x-api-key", active),
        // Header names.
        Row::new("x-api-key name in mixed case", HEADER_NAME, Pass).header("X-Api-KEY", active),
        Row::new("x_api_key with underscores", HEADER_NAME, Missing).header("x_api_key", active),
        Row::new("api-key header", HEADER_NAME, Missing).header("api-key", active),
        Row::new("proxy-authorization header", HEADER_NAME, Missing)
            .header("proxy-authorization", bearer(active)),
        Row::new("space before the colon", UNBUILDABLE, Unbuildable)
            .header("x-api-key ", active)
            .over_http(
                Server(StatusCode::BAD_REQUEST),
                "httparse refuses whitespace between a header name and its colon: 400",
            ),
    ]
}

/// The handler behind the layer over HTTP: 200 and the identity it was handed.
async fn whoami(request: Request<Body>) -> Json<serde_json::Value> {
    let identity = request.extensions().get::<KeyIdentity>();
    Json(serde_json::json!({ REACHED: true, "identity": identity }))
}

/// The same, as the inner service of the `oneshot` run.
async fn whoami_full(
    request: Request<Full<Bytes>>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let identity = request.extensions().get::<KeyIdentity>();
    let body = serde_json::json!({ REACHED: true, "identity": identity }).to_string();
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

/// The row through `oneshot`, in a task of its own so that a panic is caught.
async fn send_oneshot(layer: &ApiKeyLayer, row: &Row) -> Result<Option<Answer>, String> {
    let mut request = Request::builder().uri(&row.target);
    for (name, value) in &row.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            return Ok(None);
        };
        request = request.header(name, value);
    }
    let request = request.body(Full::default()).unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(whoami_full);
    let task =
        tokio::spawn(async move { Answer::read(service.oneshot(request).await.unwrap()).await });
    task.await
        .map(Some)
        .map_err(|error| format!("panicked: {error}"))
}

/// Serves `PATH` behind `layer` with axum, on a free loopback port.
async fn serve(layer: ApiKeyLayer) -> SocketAddr {
    let app = Router::new().route(PATH, get(whoami)).layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Sends the row's request as raw HTTP/1.1 bytes, so that any byte can be sent.
async fn send_raw(address: SocketAddr, row: &Row) -> Answer {
    assert!(address.ip().is_loopback(), "tests only talk to loopback");
    let mut request = format!(
        "GET {} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n",
        row.target
    )
    .into_bytes();
    for (name, value) in &row.headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    parse_response(&response)
}

/// Parses an HTTP/1.1 response read to the end of the connection.
fn parse_response(raw: &[u8]) -> Answer {
    let head_end = find(raw, b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..head_end]).expect("an ASCII response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let status = StatusCode::from_bytes(status.as_bytes()).unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|value| value == "chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        let length = headers
            .get("content-length")
            .map_or(0, |value| value.to_str().unwrap().parse().unwrap());
        rest[..length].to_vec()
    };
    Answer {
        status,
        headers,
        body: body.into(),
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").unwrap();
        let size = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let data = &rest[line_end + 2..];
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Checks an answer against the row's expectation; the panic message names what is wrong.
fn check(answer: &Answer, expect: Expect, secrets: &[Vec<u8>]) {
    assert!(
        !answer.status.is_server_error(),
        "5xx: {} {:?}",
        answer.status,
        answer.body
    );
    match expect {
        Expect::Pass => {
            assert!(
                answer.reached_inner_service(),
                "expected 200 from the inner service, got {} {:?}",
                answer.status,
                answer.body
            );
            assert!(answer.json()["identity"]["key_id"].is_string());
        }
        Expect::Server(status) => {
            assert_eq!(answer.status, status, "body {:?}", answer.body);
            assert!(
                !answer.headers.contains_key("x-request-id"),
                "the layer answered, not the server"
            );
        }
        Expect::Unbuildable => unreachable!("only for oneshot"),
        _ => {
            let (status, code, challenge) = expect.refusal().unwrap();
            assert_envelope(answer, status, code);
            assert_eq!(answer.header("www-authenticate"), challenge);
        }
    }
    let mut whole = Vec::new();
    for (name, value) in &answer.headers {
        whole.extend_from_slice(name.as_str().as_bytes());
        whole.extend_from_slice(value.as_bytes());
    }
    whole.extend_from_slice(&answer.body);
    for secret in secrets {
        assert!(find(&whole, secret).is_none(), "the response repeats a key");
    }
}

/// What must never appear in a response: every key's secret part, and the row's long values.
fn secrets(keys: &Keys, row: &Row) -> Vec<Vec<u8>> {
    let key_bodies = [
        &keys.active,
        &keys.unknown,
        &keys.revoked,
        &keys.expired,
        &keys.deleted,
    ]
    .map(|key: &ApiKey| key.expose_secret().as_bytes()["sk_live_".len()..].to_vec());
    let values = row.echoable_values().map(|value| value[..20].to_vec());
    key_bodies.into_iter().chain(values).collect()
}

/// Runs `check` and turns its panic into the row's failure.
fn verdict(row: &Row, via: &str, check: impl FnOnce()) -> Option<String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    result.err().map(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("{via} `{}` ({}): {message}", row.name, row.rule)
    })
}

#[test]
fn the_table_has_at_least_60_rows_with_distinct_names() {
    let rows = rows(&Keys::new());
    assert!(rows.len() >= 60, "{} rows", rows.len());
    let mut names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "row names must be distinct");
}

#[test]
fn every_server_side_refusal_says_why() {
    for row in rows(&Keys::new()) {
        if row.http != row.oneshot && row.oneshot != Expect::Unbuildable {
            assert!(row.http_why.is_some(), "{}", row.name);
        }
        if let Expect::Server(_) = row.http {
            assert!(row.http_why.is_some(), "{}", row.name);
        }
    }
}

#[tokio::test]
async fn every_row_gets_its_documented_answer_through_oneshot() {
    let keys = Keys::new();
    let rows = rows(&keys);
    let layer = ApiKeyLayer::new(keys.store.clone());
    let mut failures = Vec::new();
    for row in &rows {
        let failure = match send_oneshot(&layer, row).await {
            Err(panic) => Some(format!("oneshot `{}`: {panic}", row.name)),
            Ok(None) => verdict(row, "oneshot", || {
                assert_eq!(row.oneshot, Expect::Unbuildable, "http refused a header")
            }),
            Ok(Some(answer)) => verdict(row, "oneshot", || {
                check(&answer, row.oneshot, &secrets(&keys, row))
            }),
        };
        failures.extend(failure);
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_row_gets_its_documented_answer_over_http() {
    let keys = Keys::new();
    let rows = rows(&keys);
    let address = serve(ApiKeyLayer::new(keys.store.clone())).await;
    let mut failures = Vec::new();
    for row in &rows {
        let answer = send_raw(address, row).await;
        failures.extend(verdict(row, "http", || {
            check(&answer, row.http, &secrets(&keys, row))
        }));
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
