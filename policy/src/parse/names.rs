//! When two parameter names are the same parameter. The gateway reads a name exactly, but
//! the exchange behind it may not: PHP files `a.b` under `a_b`, ASP.NET and many JSON
//! binders ignore case, some frameworks NFKC-normalize input or trim it. If the request
//! says `amount=1&AMOUNT=1000`, the gateway checks one value while such an exchange may
//! execute the other, so names equal under any of these readings are duplicates.
//!
//! The rules, applied to query and form names and to JSON object keys at every depth:
//! - **Invisible characters refuse the name on its own**, twin or not: control characters
//!   and Unicode's default-ignorable code points (zero-width space/joiners U+200B..U+200F,
//!   word joiner and invisible operators U+2060..U+206F, bidi embeddings and overrides
//!   U+202A..U+202E, soft hyphen U+00AD, BOM U+FEFF, variation selectors, tags, Hangul
//!   fillers, …). No exchange parameter contains one, and whether an upstream strips,
//!   keeps or rejects them is anybody's guess.
//! - Otherwise a name is compared under two readings, and two names that agree under
//!   either are the same parameter:
//!   - *PHP*: NFKC (non-ASCII names only), leading ASCII whitespace dropped, spaces and
//!     dots in the base name as `_`, an index suffix `[]`/`[<digits>]` removed
//!     ([`crate::params::folded_name`]), then lower-cased;
//!   - *trimmed*: NFKC, whitespace (any Unicode `White_Space`) around the name dropped,
//!     then the same folding and lower-casing.
//!
//! Names made only of ASCII letters, digits, `_` and `-` (nearly every name an exchange
//! uses) read the same under both: they are compared with
//! [`str::eq_ignore_ascii_case`], without building anything.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;

/// How a parameter name reads to a lenient server; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameForms {
    /// The PHP reading, lower-cased; `None` when it is the name itself up to ASCII case.
    php: Option<Box<str>>,
    /// The trimmed reading, lower-cased; `None` as above.
    trimmed: Option<Box<str>>,
}

impl NameForms {
    /// The readings of `name`, or `None` when it contains an invisible character and must
    /// be refused (the caller picks the deny code: a form or query name is an invalid
    /// parameter, a JSON key invalid JSON).
    pub fn of(name: &str) -> Option<NameForms> {
        if is_plain(name) {
            return Some(NameForms::default());
        }
        if name.chars().any(is_invisible) {
            return None;
        }
        let normalized: Cow<'_, str> = if name.is_ascii() {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(name.nfkc().collect())
        };
        let lower = |s: String| -> Box<str> {
            if s.is_ascii() {
                s.to_ascii_lowercase().into()
            } else {
                s.to_lowercase().into()
            }
        };
        let php = lower(crate::params::folded_name(&normalized));
        let trimmed = lower(crate::params::folded_name(normalized.trim()));
        Some(NameForms {
            php: Some(php),
            trimmed: Some(trimmed),
        })
    }

    /// Whether `a` (with forms `fa`) and `b` (with `fb`) name the same parameter.
    #[inline]
    pub fn same(a: &str, fa: &NameForms, b: &str, fb: &NameForms) -> bool {
        // Plain names read the same under both readings, so one comparison (which
        // usually stops at the lengths) settles it.
        if fa.is_plain() && fb.is_plain() {
            return a.eq_ignore_ascii_case(b);
        }
        let php_a = fa.php.as_deref().unwrap_or(a);
        let php_b = fb.php.as_deref().unwrap_or(b);
        if php_a.eq_ignore_ascii_case(php_b) {
            return true;
        }
        let trimmed_a = fa.trimmed.as_deref().unwrap_or(a);
        let trimmed_b = fb.trimmed.as_deref().unwrap_or(b);
        trimmed_a.eq_ignore_ascii_case(trimmed_b)
    }

    /// Whether every reading is the name itself up to ASCII case.
    pub(crate) fn is_plain(&self) -> bool {
        self.php.is_none() && self.trimmed.is_none()
    }

    /// The two readings of `name` (whose forms these are), each lower-cased: names are
    /// the same parameter when either reading is equal. For sorting many names at once.
    pub fn readings(&self, name: &str) -> [String; 2] {
        let php = self.php.as_deref().unwrap_or(name);
        let trimmed = self.trimmed.as_deref().unwrap_or(name);
        [php.to_ascii_lowercase(), trimmed.to_ascii_lowercase()]
    }

    /// Whether `name` (with forms `forms`) is `plain` under some reading, where `plain` is
    /// a lower-case ASCII name such as `_method`.
    pub fn reads_as(name: &str, forms: &NameForms, plain: &str) -> bool {
        NameForms::same(name, forms, plain, &NameForms::default())
    }
}

/// Whether two names are the same parameter; builds the forms of both, so for one-off
/// checks only (the parsers keep each name's forms).
pub fn same_parameter(a: &str, b: &str) -> bool {
    match (NameForms::of(a), NameForms::of(b)) {
        (Some(fa), Some(fb)) => NameForms::same(a, &fa, b, &fb),
        _ => false,
    }
}

/// ASCII letters, digits, `_` and `-` only: every reading is the name up to ASCII case.
fn is_plain(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Control characters and Unicode's `Default_Ignorable_Code_Point` set (Unicode 15,
/// DerivedCoreProperties.txt): characters that render as nothing.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_under_each_reading() {
        for (a, b) in [
            ("amount", "AMOUNT"),
            ("recvWindow", "recvwindow"),
            ("amount", "ａｍｏｕｎｔ"), // fullwidth: NFKC
            ("amount", "Ａmount"),
            ("address", "address "), // trailing space: trimmed
            ("address", "address\u{3000}"),
            ("address", "\u{00A0}address"),
            ("address", " address"), // leading space: PHP and trimmed
            ("opt.fee", "OPT_FEE"),
            ("opt.fee", "opt．fee"), // fullwidth full stop: NFKC, then PHP
            ("address", "address[]"),
            ("address", "Address［0］"),
            ("a b", "a_b"),
            ("address ", "address_"), // PHP: trailing space is `_`
            ("ﬁeld", "field"),        // ligature: NFKC
        ] {
            assert!(same_parameter(a, b), "{a:?} {b:?}");
            assert!(same_parameter(b, a), "{b:?} {a:?}");
        }
    }

    #[test]
    fn distinct_names_stay_distinct() {
        for (a, b) in [
            ("close[price]", "close[ordertype]"),
            ("close", "close[price]"),
            ("price", "price2"),
            ("address", "addr ess"),
            ("a_b", "ab"),
            ("amount", "amount_"),
        ] {
            assert!(!same_parameter(a, b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn invisible_characters_refuse_the_name() {
        for name in [
            "amount\u{200B}",
            "\u{FEFF}amount",
            "am\u{00AD}ount",
            "amount\u{202E}",
            "amount\u{2060}",
            "amount\u{E0041}",
            "amount\u{FE0F}",
            "amount\u{0}",
            "amount\u{85}",
        ] {
            assert_eq!(NameForms::of(name), None, "{name:?}");
        }
        assert!(NameForms::of("amount").is_some());
        assert!(NameForms::of("数量").is_some());
    }

    #[test]
    fn reads_as_plain_name() {
        let forms = NameForms::of(" _METHOD").unwrap();
        assert!(NameForms::reads_as(" _METHOD", &forms, "_method"));
        let forms = NameForms::of("_Method").unwrap();
        assert!(NameForms::reads_as("_Method", &forms, "_method"));
        assert!(!NameForms::reads_as(
            "method",
            &NameForms::default(),
            "_method"
        ));
    }
}
