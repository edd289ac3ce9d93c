//! The path normalizer: never panics, and what it accepts is canonical (accepted again,
//! unchanged), since routes match the received path as is.
#![no_main]

use keyguard_policy::parse::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = normalize_path(raw) {
        assert_eq!(path, raw, "an accepted path is the received path");
        assert_eq!(
            normalize_path(path),
            Ok(path),
            "accepted paths are fixed points"
        );
        assert!(path.starts_with('/'));
        assert!(!path.contains("//"));
        assert!(!path.split('/').any(|seg| seg == "." || seg == ".."));
    }
});
