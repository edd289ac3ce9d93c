//! The config loader: any text is either a config or an error naming where it is wrong;
//! never a panic.
#![no_main]

use std::path::Path;

use keyguard_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("/etc/keyguard/fuzz.toml")) {
        assert!(!e.to_string().is_empty());
    }
});
