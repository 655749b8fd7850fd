//! Reading the API key from request headers.
//!
//! The rules, in the order they apply:
//!
//! - A key is read from `Authorization: Bearer <key>` and from `X-API-Key: <key>` (both names
//!   configurable), never from the query string or the body.
//! - The `Bearer` scheme is matched case-insensitively and must be followed by one or more spaces.
//!   An `Authorization` value of another scheme (`Basic ...`), or with no space after the scheme,
//!   is not an API key and is ignored: the request is judged by its other headers.
//! - Spaces and tabs around a key are ignored. An empty key (`Bearer` alone, an empty
//!   `X-API-Key`) counts as no key.
//! - A key must be 1 to [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN) visible ASCII characters. A key
//!   with inner whitespace, control characters, non-ASCII or non-UTF-8 bytes, or longer than that
//!   is malformed: `invalid_api_key`.
//! - Every key in the request must be the same: the two headers, and each header repeated, may
//!   carry the same key, which is then used; two different keys are rejected as
//!   `invalid_api_key`, never resolved by picking one.
//! - No key at all is `missing_api_key`.
//! - A key in the URL query string is refused, even beside a good key in a header: a parameter
//!   named `access_token`, `api_key`, `apikey`, `api-key` or `x-api-key` (any case) with a value,
//!   or any parameter whose name or value (percent-decoded, `+` as a space) holds something
//!   shaped like a key, checksum or not: an accepted prefix and a body of the key's length and
//!   alphabet, not glued to a letter, digit or `_` (the shape
//!   [`KeyFormat::find_keys`](crate::key::KeyFormat::find_keys) looks for), alone
//!   (`?token=sk_live_...`) or within a longer value (`?q=see+sk_live_...`). A leaked key with
//!   a typo is still a leak; a value that merely starts with a prefix (`?type=sk_test_x`) is not
//!   one. After a [legacy prefix](crate::key::KeyFormat::legacy_prefix), whose keys may have
//!   any shape, the body is at least 16 characters of base64url.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;

use crate::key::{every_byte, KeyFormat, MAX_KEY_LEN};

/// Why no key could be read from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CredentialError {
    /// No header carried a key.
    Missing,
    /// Headers carried two different keys.
    Conflicting,
    /// A header carried something that cannot be a key.
    Malformed,
}

/// The two headers a key may come in; either may be switched off.
#[derive(Clone, Debug)]
pub(crate) struct CredentialHeaders {
    pub(crate) authorization: Option<HeaderName>,
    pub(crate) api_key: Option<HeaderName>,
}

impl Default for CredentialHeaders {
    fn default() -> Self {
        Self {
            authorization: Some(http::header::AUTHORIZATION),
            api_key: Some(HeaderName::from_static("x-api-key")),
        }
    }
}

impl CredentialHeaders {
    /// The one key the request carries, by the rules of this module, as visible ASCII bytes.
    ///
    /// On the way, the values of both headers are marked sensitive, so that well-behaved
    /// loggers and HTTP/2's header compression leave them alone: all of them when a key is
    /// returned (a refused request goes no further).
    pub(crate) fn read_key<'a>(
        &self,
        headers: &'a mut HeaderMap,
    ) -> Result<&'a [u8], CredentialError> {
        // One pass over the few headers a request has costs less than hashing both names.
        let mut found: Option<&[u8]> = None;
        for (name, value) in headers.iter_mut() {
            let Some(kind) = self.kind_of(name) else {
                continue;
            };
            value.set_sensitive(true);
            let value: &'a HeaderValue = value;
            let raw = match kind {
                Kind::Authorization => match bearer_token(value) {
                    Some(token) => token,
                    None => continue,
                },
                Kind::ApiKey => value.as_bytes(),
            };
            let token = trim_whitespace(raw);
            if token.is_empty() {
                continue;
            }
            let key = parse_key(token)?;
            match found {
                Some(previous) if previous != key => return Err(CredentialError::Conflicting),
                _ => found = Some(key),
            }
        }
        found.ok_or(CredentialError::Missing)
    }

    fn kind_of(&self, name: &HeaderName) -> Option<Kind> {
        if self.authorization.as_ref() == Some(name) {
            Some(Kind::Authorization)
        } else if self.api_key.as_ref() == Some(name) {
            Some(Kind::ApiKey)
        } else {
            None
        }
    }
}

/// Which of the two headers a header is.
#[derive(Clone, Copy)]
enum Kind {
    Authorization,
    ApiKey,
}

/// Query parameter names that carry credentials by convention: RFC 6750's `access_token`, and
/// the usual names of API keys.
const CREDENTIAL_PARAMETERS: [&str; 5] =
    ["access_token", "api_key", "apikey", "api-key", "x-api-key"];

/// The name of the first query parameter that carries a key, by the rule of this module, as it
/// may be logged: a name that could hold a key itself (longer than a key's body could hide in,
/// or holding a key prefix) is replaced by a placeholder.
pub(crate) fn key_in_query<'q>(query: &'q str, format: &KeyFormat) -> Option<&'q str> {
    let loggable = |name: &'q str| {
        let plain = name.len() <= MAX_LOGGED_NAME_LEN
            && (name.bytes()).all(|byte| byte.is_ascii_alphanumeric() || b"_-.[]%".contains(&byte))
            && !(format.prefixes().chain(format.legacy_prefixes()))
                .any(|prefix| name.contains(prefix));
        if plain {
            name
        } else {
            "(a parameter whose name is not shown)"
        }
    };
    // `;` too: some frameworks split on it, and a stricter reading refuses more leaks.
    query.split(['&', ';']).find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let credential_name = || {
            CREDENTIAL_PARAMETERS
                .iter()
                .any(|known| percent_decoded_eq_ignore_case(name, known))
        };
        let carries_key = holds_key(name, format)
            || (!value.is_empty() && (credential_name() || holds_key(value, format)));
        carries_key.then(|| loggable(name))
    })
}

/// Longer parameter names are not logged: a key's random part (38 characters) cannot hide in one.
const MAX_LOGGED_NAME_LEN: usize = 32;

/// Whether a query component, decoded, holds something shaped like a key of `format`.
fn holds_key(component: &str, format: &KeyFormat) -> bool {
    // Most components are plain text: decoded, they are themselves.
    if !component.contains(['%', '+']) {
        return format.contains_key_shape(component);
    }
    let decoded: Vec<u8> = percent_decoded(component).collect();
    // A key is ASCII: bytes that are not UTF-8 become U+FFFD, which no key touches either.
    format.contains_key_shape(&String::from_utf8_lossy(&decoded))
}

/// The bytes of a query component, percent-decoded, with `+` as a space.
fn percent_decoded(component: &str) -> impl Iterator<Item = u8> + '_ {
    // Split at `+` before decoding, so that an encoded `%2B` stays a `+`.
    component.split('+').enumerate().flat_map(|(index, part)| {
        let space = (index > 0).then_some(b' ');
        space.into_iter().chain(percent_decode_str(part))
    })
}

fn percent_decoded_eq_ignore_case(component: &str, expected: &str) -> bool {
    let mut decoded = percent_decoded(component);
    expected.bytes().all(|want| {
        decoded
            .next()
            .is_some_and(|got| got.eq_ignore_ascii_case(&want))
    }) && decoded.next().is_none()
}

/// The bytes after `Bearer ` in an `Authorization` value, or `None` for another scheme.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    // HTTP parsers drop whitespace around a value; requests built in-process may keep it.
    let bytes = trim_whitespace(value.as_bytes());
    let (scheme, rest) = bytes.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    match rest.first() {
        None => Some(rest),
        Some(b' ') => Some(rest),
        Some(_) => None,
    }
}

fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let is_whitespace = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_whitespace(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_whitespace(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `token` as a key: 1 to `MAX_KEY_LEN` visible ASCII bytes, so also UTF-8.
fn parse_key(token: &[u8]) -> Result<&[u8], CredentialError> {
    if token.len() > MAX_KEY_LEN || !every_byte(token, u8::is_ascii_graphic) {
        return Err(CredentialError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk_live_abc";

    fn read(pairs: &[(&str, &[u8])]) -> Result<String, CredentialError> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        CredentialHeaders::default()
            .read_key(&mut headers)
            .map(|key| String::from_utf8(key.to_vec()).expect("a key is ASCII"))
    }

    fn query_key(query: &str) -> Option<&str> {
        key_in_query(query, &KeyFormat::default())
    }

    /// A key of the default format: `prefix`, then 38 base62 characters, whose checksum is
    /// wrong unless by chance (one in 2^32).
    fn shaped(prefix: &str) -> String {
        format!("{prefix}{}", "aB3".repeat(12) + "xY")
    }

    #[test]
    fn query_with_a_credential_parameter_carries_a_key() {
        assert_eq!(query_key("page=2&api_key=whatever"), Some("api_key"));
        assert_eq!(query_key("ACCESS_TOKEN=x"), Some("ACCESS_TOKEN"));
        assert_eq!(query_key("api%5Fkey=x"), Some("api%5Fkey"));
        assert_eq!(query_key("X-Api-Key=x&b=c"), Some("X-Api-Key"));
        assert_eq!(query_key("q=1;api_key=abc"), Some("api_key"));
    }

    #[test]
    fn query_with_a_generated_key_as_any_value_carries_a_key() {
        let format = KeyFormat::default();
        let key = format.generate();
        let query = format!("page=2&token={}", key.expose_secret());
        assert_eq!(key_in_query(&query, &format), Some("token"));
    }

    #[test]
    fn query_with_a_key_shaped_value_carries_a_key_whatever_its_checksum() {
        let live = shaped("sk_live_");
        assert!(!KeyFormat::default().is_well_formed(&live));
        assert_eq!(query_key(&format!("q={live}")), Some("q"));
        assert_eq!(
            query_key(&format!("a=1&k={}", shaped("sk_test_"))),
            Some("k")
        );
    }

    #[test]
    fn query_with_a_percent_encoded_key_carries_a_key() {
        let encoded = shaped("sk_live_").replace('_', "%5F").replace('a', "%61");
        assert_eq!(query_key(&format!("q={encoded}")), Some("q"));
    }

    #[test]
    fn query_with_a_key_within_a_longer_value_carries_a_key() {
        let live = shaped("sk_live_");
        for query in [
            format!("q=foo+{live}"),
            format!("q=foo%20{live}%20bar"),
            format!("q=see:{live}."),
            format!("q=%FF{live}"),
        ] {
            assert_eq!(query_key(&query), Some("q"), "{query}");
        }
    }

    #[test]
    fn query_with_a_prefix_but_no_key_shape_carries_none() {
        let live = shaped("sk_live_");
        for query in [
            "type=sk_test_x".to_owned(),
            "filter=sk_abc".to_owned(),
            "note=sk_live_".to_owned(),
            "q=sk_live_abc".to_owned(),
            // One character short, one too many, glued to a word: not the key's shape.
            format!("q={}", &live[..live.len() - 1]),
            format!("q={live}0"),
            format!("q=x{live}"),
            format!("q={live}_"),
            // A character outside base62 within the body.
            format!("q={}-{}", &live[..20], &live[21..]),
        ] {
            assert_eq!(query_key(&query), None, "{query}");
        }
    }

    #[test]
    fn query_with_a_key_as_a_name_never_returns_the_name() {
        let live = shaped("sk_live_");
        let name = query_key(&live).unwrap();
        assert!(!name.contains("sk_live_"));
        let query = format!("a=1&{live}=1");
        assert!(query_key(&query).is_some_and(|name| !name.contains(&live[8..])));
    }

    #[test]
    fn names_that_could_hide_a_key_are_never_returned() {
        let live = shaped("sk_live_");
        for query in [
            format!("note_sk_live_abc={live}"),
            format!("abcdefghijklmnopqrstuvwxyz0123456789AB={live}"),
            format!("a+b={live}"),
        ] {
            assert_eq!(
                query_key(&query),
                Some("(a parameter whose name is not shown)"),
                "{query}"
            );
        }
    }

    #[test]
    fn query_without_a_key_carries_none() {
        for query in [
            "",
            "page=2",
            "api_key=",
            "api_key",
            "key=abc",
            "q=sk_live",
            "a=%zz",
            "a=%",
            "apikeys=1",
        ] {
            assert_eq!(query_key(query), None, "{query}");
        }
    }

    #[test]
    fn a_legacy_prefix_refuses_it_and_16_base64url_characters() {
        let format = KeyFormat::default().legacy_prefix("ak_", crate::access::KeyMode::Live);
        for query in [
            "q=ak_0123456789abcdef",
            "q=ak_550e8400-e29b-41d4",
            "ak_0123456789_abcdef=1",
        ] {
            assert!(key_in_query(query, &format).is_some(), "{query}");
        }
        for query in [
            "type=ak_x",
            "q=ak_0123456789abcde",
            "q=sk_live_0123456789abcdef",
            "q=sk_abcdefghijklmnopqrstuv",
        ] {
            assert_eq!(key_in_query(query, &format), None, "{query}");
        }
    }

    #[test]
    fn another_format_s_prefix_is_no_key() {
        let format = KeyFormat::new("acme_");
        assert_eq!(
            key_in_query(&format!("q={}", shaped("sk_live_")), &format),
            None
        );
        assert_eq!(
            key_in_query(&format!("q={}", shaped("acme_")), &format),
            Some("q")
        );
    }

    #[test]
    fn percent_decoding_reads_plus_as_a_space_and_leaves_bad_escapes() {
        let decoded = |component| percent_decoded(component).collect::<Vec<u8>>();
        assert_eq!(decoded("a+b%2Bc%5f"), b"a b+c_");
        assert_eq!(decoded("%zz%4"), b"%zz%4");
    }

    #[test]
    fn reads_bearer_token() {
        assert_eq!(
            read(&[("authorization", b"Bearer sk_live_abc")]).unwrap(),
            KEY
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} {KEY}");
            assert_eq!(read(&[("authorization", value.as_bytes())]).unwrap(), KEY);
        }
    }

    #[test]
    fn whitespace_before_the_scheme_is_ignored() {
        assert_eq!(
            read(&[("authorization", b" \tBearer sk_live_abc")]).unwrap(),
            KEY
        );
    }

    #[test]
    fn several_spaces_after_scheme_are_accepted() {
        assert_eq!(
            read(&[("authorization", b"Bearer    sk_live_abc")]).unwrap(),
            KEY
        );
    }

    #[test]
    fn reads_x_api_key() {
        assert_eq!(read(&[("x-api-key", b"sk_live_abc")]).unwrap(), KEY);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(read(&[("x-api-key", b" \tsk_live_abc \t")]).unwrap(), KEY);
        assert_eq!(
            read(&[("authorization", b"Bearer sk_live_abc  ")]).unwrap(),
            KEY
        );
    }

    #[test]
    fn no_headers_is_missing() {
        assert_eq!(read(&[]), Err(CredentialError::Missing));
    }

    #[test]
    fn empty_token_is_missing() {
        assert_eq!(
            read(&[("authorization", b"Bearer")]),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            read(&[("authorization", b"Bearer   ")]),
            Err(CredentialError::Missing)
        );
        assert_eq!(read(&[("x-api-key", b"")]), Err(CredentialError::Missing));
    }

    #[test]
    fn other_scheme_is_ignored() {
        assert_eq!(
            read(&[("authorization", b"Basic dXNlcjpwYXNz")]),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            read(&[
                ("authorization", b"Basic dXNlcjpwYXNz"),
                ("x-api-key", KEY.as_bytes())
            ])
            .unwrap(),
            KEY
        );
    }

    #[test]
    fn scheme_without_space_is_another_scheme() {
        assert_eq!(
            read(&[("authorization", b"Bearersk_live_abc")]),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            read(&[("authorization", b"Bearer\tsk_live_abc")]),
            Err(CredentialError::Missing)
        );
    }

    #[test]
    fn both_headers_with_same_key_are_accepted() {
        let pairs: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer sk_live_abc"),
            ("x-api-key", b"sk_live_abc"),
        ];
        assert_eq!(read(pairs).unwrap(), KEY);
    }

    #[test]
    fn both_headers_with_different_keys_conflict() {
        let pairs: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer sk_live_abc"),
            ("x-api-key", b"sk_live_xyz"),
        ];
        assert_eq!(read(pairs), Err(CredentialError::Conflicting));
    }

    #[test]
    fn repeated_header_with_same_key_is_accepted() {
        let pairs: &[(&str, &[u8])] =
            &[("x-api-key", b"sk_live_abc"), ("x-api-key", b"sk_live_abc")];
        assert_eq!(read(pairs).unwrap(), KEY);
    }

    #[test]
    fn repeated_header_with_different_keys_conflicts() {
        let pairs: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer sk_live_abc"),
            ("authorization", b"Bearer sk_live_xyz"),
        ];
        assert_eq!(read(pairs), Err(CredentialError::Conflicting));
    }

    #[test]
    fn inner_whitespace_is_malformed() {
        assert_eq!(
            read(&[("x-api-key", b"sk_live abc")]),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            read(&[("authorization", b"Bearer sk_live abc")]),
            Err(CredentialError::Malformed)
        );
    }

    #[test]
    fn non_ascii_and_non_utf8_bytes_are_malformed() {
        assert_eq!(
            read(&[("x-api-key", "sk_live_ä".as_bytes())]),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            read(&[("x-api-key", b"sk_live_\xff")]),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            read(&[("authorization", b"Bearer sk_\x80live")]),
            Err(CredentialError::Malformed)
        );
    }

    #[test]
    fn oversized_value_is_malformed() {
        let long = vec![b'a'; 10 * 1024];
        assert_eq!(
            read(&[("x-api-key", &long)]),
            Err(CredentialError::Malformed)
        );
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(&long);
        assert_eq!(
            read(&[("authorization", &bearer)]),
            Err(CredentialError::Malformed)
        );
    }

    #[test]
    fn longest_accepted_key_is_max_key_len() {
        let at_limit = vec![b'a'; MAX_KEY_LEN];
        assert!(read(&[("x-api-key", &at_limit)]).is_ok());
    }

    #[test]
    fn header_names_are_configurable() {
        let names = CredentialHeaders {
            authorization: Some(HeaderName::from_static("proxy-authorization")),
            api_key: Some(HeaderName::from_static("x-service-key")),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static(KEY));
        assert_eq!(names.read_key(&mut headers), Err(CredentialError::Missing));
        headers.insert("x-service-key", HeaderValue::from_static(KEY));
        assert_eq!(names.read_key(&mut headers), Ok(KEY.as_bytes()));
        let mut headers = HeaderMap::new();
        headers.insert(
            "proxy-authorization",
            HeaderValue::from_static("Bearer sk_live_abc"),
        );
        assert_eq!(names.read_key(&mut headers), Ok(KEY.as_bytes()));
    }

    #[test]
    fn switched_off_header_is_not_read() {
        let names = CredentialHeaders {
            authorization: None,
            ..CredentialHeaders::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer eyJhbGciOi.jwt.sig"),
        );
        assert_eq!(names.read_key(&mut headers), Err(CredentialError::Missing));
        headers.insert("x-api-key", HeaderValue::from_static(KEY));
        assert_eq!(names.read_key(&mut headers), Ok(KEY.as_bytes()));
    }

    #[test]
    fn reading_marks_every_credential_header_sensitive() {
        let mut headers = HeaderMap::new();
        headers.append("authorization", HeaderValue::from_static("Basic dXNlcg=="));
        headers.append(
            "authorization",
            HeaderValue::from_static("Bearer sk_live_abc"),
        );
        headers.append("x-api-key", HeaderValue::from_static(KEY));
        headers.append("x-api-key", HeaderValue::from_static(KEY));
        headers.append("accept", HeaderValue::from_static("*/*"));
        let key = CredentialHeaders::default().read_key(&mut headers);
        assert_eq!(key, Ok(KEY.as_bytes()));
        assert!(headers
            .get_all("authorization")
            .iter()
            .all(HeaderValue::is_sensitive));
        assert!(headers
            .get_all("x-api-key")
            .iter()
            .all(HeaderValue::is_sensitive));
        assert!(!headers["accept"].is_sensitive());
    }
}
