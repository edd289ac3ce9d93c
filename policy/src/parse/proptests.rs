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

/// The urlencoded parser as it was written before its walk was fused (split at `&`, the
/// first `=`, decode each side): the fused one must agree with it on every input,
/// errors included.
fn reference_urlencoded(raw: &[u8]) -> Result<Vec<(String, String)>, crate::Deny> {
    use crate::parse::urlencoded::decode_component;
    use crate::Deny;
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in raw.split(|b| *b == b'&') {
        let eq = piece
            .iter()
            .position(|b| *b == b'=')
            .ok_or(Deny::InvalidParameter)?;
        if eq == 0 {
            return Err(Deny::InvalidParameter);
        }
        let name = decode_component(&piece[..eq], true)?.into_owned();
        let value = decode_component(&piece[eq + 1..], true)?.into_owned();
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(Deny::DuplicateParameter);
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Query and form texts near the edge cases: separators, escapes, repeats, bytes that
/// are not printable ASCII.
fn near_urlencoded() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"&".to_vec()),
        Just(b"=".to_vec()),
        Just(b"a".to_vec()),
        Just(b"A".to_vec()),
        Just(b"%41".to_vec()),
        Just(b"%4".to_vec()),
        Just(b"%c3%a9".to_vec()),
        Just(b"+".to_vec()),
        Just(b";".to_vec()),
        Just(b"_.-[]".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\t".to_vec()),
        Just("\u{e9}".as_bytes().to_vec()),
        Just(vec![0xff]),
        Just("\u{ff21}".as_bytes().to_vec()),
        Just(b"%E2%80%8B".to_vec()),
        Just(b"%EF%BC%A1".to_vec()),
        "[a-c0-9]{1,3}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn urlencoded_agrees_with_the_reference(raw in near_urlencoded()) {
        let ours = parse_urlencoded(&raw).map(|p| {
            p.into_iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(ours, reference_urlencoded(&raw));
    }

    #[test]
    fn params_from_one_walk_as_from_pairs(query in near_urlencoded(), body in near_urlencoded()) {
        use crate::params::{ParamSource, ParamValue, Params};
        let mut ours = Params::new();
        let ours = ours
            .extend_urlencoded(&query, ParamSource::Query)
            .and_then(|()| ours.extend_urlencoded(&body, ParamSource::Body))
            .map(|()| ours);
        let mut theirs = Params::new();
        let theirs = (|| {
            for (raw, source) in [(&query, ParamSource::Query), (&body, ParamSource::Body)] {
                for (n, v) in reference_urlencoded(raw)? {
                    theirs.insert(n.into(), ParamValue::Text(v.into()), source)?;
                }
            }
            Ok(theirs)
        })();
        prop_assert_eq!(ours, theirs);
    }

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
