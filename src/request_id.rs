//! The request id that refusals carry; the rule is documented on `ApiKeyLayer`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The `X-Request-Id` header.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The request's own id if it is sane, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    sane_request_id(headers).cloned().unwrap_or_else(generate)
}

/// The request's own id, if it has exactly one and it is sane: the only form of it that may
/// reach a log or a response.
pub(crate) fn sane_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if is_sane(value.as_bytes()) => Some(value),
        _ => None,
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
}

fn generate() -> HeaderValue {
    let mut id = *b"req_00000000000000000000000000000000";
    uuid::Uuid::new_v4().simple().encode_lower(&mut id[4..]);
    HeaderValue::from_bytes(&id).expect("hexadecimal digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(values: &[&[u8]]) -> HeaderValue {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        }
        request_id(&headers)
    }

    fn is_generated(id: &HeaderValue) -> bool {
        let id = id.to_str().unwrap();
        id.len() == 36 && id.starts_with("req_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn generates_req_id_when_absent() {
        assert!(is_generated(&id_for(&[])));
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(id_for(&[]), id_for(&[]));
    }

    #[test]
    fn reuses_sane_incoming_id() {
        for id in [
            &b"req_123"[..],
            b"0f8fad5b-d9cb-469f-a165-70867728950e",
            b"a.b:c_d",
        ] {
            assert_eq!(id_for(&[id]).as_bytes(), id);
        }
    }

    #[test]
    fn replaces_insane_incoming_id() {
        let long = vec![b'a'; MAX_LEN + 1];
        for id in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"<script>",
            b"caf\xc3\xa9",
            &long,
        ] {
            assert!(is_generated(&id_for(&[id])), "{id:?}");
        }
    }

    #[test]
    fn replaces_repeated_incoming_id() {
        assert!(is_generated(&id_for(&[b"one", b"two"])));
    }

    #[test]
    fn longest_reused_id_is_128_characters() {
        let id = vec![b'a'; MAX_LEN];
        assert_eq!(id_for(&[&id]).as_bytes(), &id[..]);
    }
}
