//! Query strings and form bodies: never panic; accepted pairs have no exact duplicates
//! and survive a round trip through the Python-compatible encoder (what ccxt signs).
#![no_main]

use keyguard_policy::parse::{parse_urlencoded, urlencode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = parse_urlencoded(data) else {
        return;
    };
    for (i, (name, _)) in pairs.iter().enumerate() {
        assert!(!name.is_empty());
        assert!(pairs[..i].iter().all(|(other, _)| other != name));
    }
    let encoded = urlencode(pairs.iter().map(|(n, v)| (&**n, &**v)), b"");
    assert_eq!(parse_urlencoded(encoded.as_bytes()), Ok(pairs));
});
