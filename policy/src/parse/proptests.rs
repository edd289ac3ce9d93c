//! The parsers see attacker-chosen bytes: none of them may panic, whatever arrives.

use proptest::prelude::*;

use super::*;
use crate::params::JsonValue;

/// JSON texts built from the grammar, so the parser's accepting paths get exercised too.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,2})?",
        "[a-z\u{e9}\u{1f600} ]{0,6}".prop_map(|s| {
            let mut out = String::new();
            json::write_json_string(&mut out, &s);
            out
        }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(inner, 0..4).prop_map(|v| {
                let members: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\" : {x}"))
                    .collect();
                format!("{{ {} }}", members.join(" , "))
            }),
        ]
    })
}

proptest! {
    #[test]
    fn json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_json(&bytes);
    }

    #[test]
    fn json_never_panics_on_near_json(s in "[\\[\\]{}\",:0-9eE.+\\-tfnrulsa\\\\ ]{0,64}") {
        let _ = parse_json(s.as_bytes());
    }

    #[test]
    fn generated_json_parses_and_numbers_keep_text(s in json_value()) {
        let v = parse_json(s.as_bytes());
        prop_assert!(v.is_ok(), "{s:?}: {v:?}");
        if let Ok(JsonValue::Number(n)) = v {
            prop_assert_eq!(n, s);
        }
    }

    #[test]
    fn urlencoded_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_urlencoded(&bytes);
    }

    #[test]
    fn urlencode_round_trips(pairs in prop::collection::vec(("[a-z_\\[\\]]{1,8}", "\\PC{0,12}"), 0..6)) {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .collect();
        let encoded = urlencode(unique.iter().map(|(n, v)| (n.as_str(), v.as_str())), b"");
        let parsed = parse_urlencoded(encoded.as_bytes()).map(|p| {
            p.into_iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(parsed, Ok(unique));
    }

    #[test]
    fn path_never_panics(s in "\\PC{0,64}") {
        if let Ok(p) = normalize_path(&s) {
            prop_assert_eq!(p, s.as_str());
            prop_assert!(!p.contains('%') && !p.contains("//") && !p.contains(';'));
        }
    }
}
