//! `KeyFormat::is_well_formed` on arbitrary strings.
//!
//! Checked on every input: no panic; a format of one prefix agrees with a format that accepts
//! a second one; and when the input is well formed (for the default format or for the one of
//! a single prefix), every one-character substitution by another visible ASCII character is not
//! (the checksum catches it, or the prefix or alphabet no longer fits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_key::key::KeyFormat;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    let live_only = KeyFormat::new("sk_live_");
    let two_prefixes = KeyFormat::new("sk_test_").also_accept("sk_live_");
    assert_eq!(
        live_only.is_well_formed(key),
        two_prefixes.is_well_formed(key) && key.starts_with("sk_live_"),
        "accepting a second prefix changed the verdict on the first"
    );
    for format in [KeyFormat::default(), live_only] {
        if format.is_well_formed(key) {
            assert_no_substitution_is_well_formed(&format, key);
        }
    }
});

fn assert_no_substitution_is_well_formed(format: &KeyFormat, key: &str) {
    let bytes = key.as_bytes();
    for position in 0..bytes.len() {
        for replacement in b'!'..=b'~' {
            if bytes[position] == replacement {
                continue;
            }
            let mut changed = bytes.to_vec();
            changed[position] = replacement;
            let changed = std::str::from_utf8(&changed).expect("ASCII stays UTF-8");
            assert!(
                !format.is_well_formed(changed),
                "a one-character change at {position} is still well formed"
            );
        }
    }
}
