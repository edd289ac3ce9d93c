//! The strict JSON parser and the parameter-name rules it applies to keys: never panic
//! (deep nesting is bounded), and no two keys of an accepted object are twins.
#![no_main]

use keyguard_policy::parse::names::same_parameter;
use keyguard_policy::parse::parse_json;
use keyguard_policy::JsonValue;
use libfuzzer_sys::fuzz_target;

fn check(value: &JsonValue) {
    match value {
        JsonValue::Object(members) => {
            for (i, (key, v)) in members.iter().enumerate() {
                for (other, _) in &members[..i] {
                    assert!(
                        !same_parameter(other, key),
                        "twins {other:?} {key:?} accepted"
                    );
                }
                check(v);
            }
        }
        JsonValue::Array(items) => items.iter().for_each(check),
        JsonValue::Number(text) => assert!(!text.is_empty()),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse_json(data) {
        check(&value);
    }
});
