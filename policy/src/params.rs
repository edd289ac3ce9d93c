//! Request parameters after strict parsing: every name appears once, across the query
//! and the body, so "which `amount` did the policy read?" has a single answer and the
//! exchange cannot be shown a different one.
//!
//! Names and text values borrow from the request (`Cow`): only the ones that had
//! something to decode (`%XX`, `+`) or came from JSON are owned, so a typical order is
//! parsed without one allocation per parameter.

use std::borrow::Cow;

use crate::decimal::{parse_decimal, Decimal};
use crate::parse::names::NameForms;
use crate::Deny;

/// A JSON value, parsed strictly. Numbers keep their exact source text so amounts never
/// pass through a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonValue {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number as written in the body (RFC 8259 grammar only).
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object with unique keys (compared after unescaping), in source order.
    Object(Vec<(String, JsonValue)>),
}

/// One parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue<'a> {
    /// From a query string or a form body: percent-decoded UTF-8 text.
    Text(Cow<'a, str>),
    /// From a JSON body: the typed value.
    Json(JsonValue),
}

impl ParamValue<'_> {
    /// The same value owning its text.
    pub fn into_owned(self) -> ParamValue<'static> {
        match self {
            ParamValue::Text(s) => ParamValue::Text(Cow::Owned(s.into_owned())),
            ParamValue::Json(v) => ParamValue::Json(v),
        }
    }

    /// The value as a string field. JSON numbers are accepted as their text (an order id
    /// may be sent either way); other JSON types are the wrong type for a string field.
    pub fn as_text(&self) -> Result<&str, Deny> {
        match self {
            ParamValue::Text(s) => Ok(s),
            ParamValue::Json(JsonValue::String(s)) | ParamValue::Json(JsonValue::Number(s)) => {
                Ok(s)
            }
            ParamValue::Json(_) => Err(Deny::InvalidJson),
        }
    }

    /// The value as an exact decimal; JSON may carry it as a number or a string.
    pub fn as_decimal(&self) -> Result<Decimal, Deny> {
        match self {
            ParamValue::Text(s) => parse_decimal(s),
            ParamValue::Json(JsonValue::String(s)) | ParamValue::Json(JsonValue::Number(s)) => {
                parse_decimal(s)
            }
            ParamValue::Json(_) => Err(Deny::InvalidJson),
        }
    }
}

/// The name a PHP-style form parser would file a parameter under: leading whitespace
/// dropped, spaces and dots in the base name turned into `_`, and an array suffix `[]` or
/// `[<digits>]` removed. `address=A&+address=B` or `amount=1&amount[]=1000` would let the
/// gateway check one value while such an exchange reads the other, so twins under this
/// folding count as duplicates. Named sub-keys (`close[price]`) stay distinct.
pub fn folded_name(name: &str) -> String {
    folded_chars(name).collect()
}

/// [`folded_name`] as an iterator.
fn folded_chars(name: &str) -> impl Iterator<Item = char> + '_ {
    let name = name.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (base, suffix) = match name.find('[') {
        Some(i) => name.split_at(i),
        None => (name, ""),
    };
    let is_index = suffix
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| inner.bytes().all(|b| b.is_ascii_digit()));
    let suffix = if is_index { "" } else { suffix };
    base.chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .chain(suffix.chars())
}

/// Where a parameter came from; some dialects allow only one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSource {
    /// The URL query string.
    Query,
    /// The request body.
    Body,
}

/// All parameters of a request, names unique across query and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params<'a> {
    entries: Vec<Entry<'a>>,
}

/// One parameter and its name's readings under lenient parsers ([`NameForms`]), built
/// once per name so the duplicate checks compare plain strings instead of re-folding
/// every pair.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    name: Cow<'a, str>,
    value: ParamValue<'a>,
    source: ParamSource,
    forms: NameForms,
}

impl<'a> Params<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every pair of a query string or form body, as if each went through
    /// [`Params::insert`] after [`crate::parse::parse_urlencoded`] accepted all of them:
    /// a piece that does not parse or a name repeated exactly inside `raw` is refused
    /// before any twin or invisible-character check, as that order of errors is part of
    /// the contract. Names and values borrow from `raw` where nothing was decoded.
    pub fn extend_urlencoded(&mut self, raw: &'a [u8], source: ParamSource) -> Result<(), Deny> {
        let start = self.entries.len();
        self.entries
            .reserve(crate::parse::urlencoded::count_pieces(raw));
        let mut simple = 0u64;
        crate::parse::urlencoded::for_each_pair(raw, |name, value, is_simple| {
            if self.entries[start..].iter().any(|e| e.name == name) {
                return Err(Deny::DuplicateParameter);
            }
            // Which names need their readings built (the first 64; the rest always do).
            let n = self.entries.len() - start;
            if is_simple && n < 64 {
                simple |= 1 << n;
            }
            self.entries.push(Entry {
                name,
                value: ParamValue::Text(value),
                source,
                forms: NameForms::default(),
            });
            Ok(())
        })?;
        for i in start..self.entries.len() {
            let (before, rest) = self.entries.split_at_mut(i);
            let entry = &mut rest[0];
            let n = i - start;
            // A simple name's readings are the name itself: NameForms::of would say so.
            if n >= 64 || simple & (1 << n) == 0 {
                entry.forms = NameForms::of(&entry.name).ok_or(Deny::InvalidParameter)?;
            }
            // Plain against plain (nearly every pair) is NameForms::same's first case,
            // written out so that it is a length check in the loop, not a call.
            let plain = entry.forms.is_plain();
            if before.iter().any(|e| {
                if plain && e.forms.is_plain() {
                    e.name.eq_ignore_ascii_case(&entry.name)
                } else {
                    NameForms::same(&e.name, &e.forms, &entry.name, &entry.forms)
                }
            }) {
                return Err(Deny::DuplicateParameter);
            }
        }
        Ok(())
    }

    /// Adds a parameter. A name already present is a [`Deny::DuplicateParameter`], also
    /// when the two names differ only in a way that a lenient server-side parser reads
    /// away (case, NFKC, whitespace around the name, PHP's folding: see
    /// [`crate::parse::names`]); a name with an invisible character is a
    /// [`Deny::InvalidParameter`] on its own. Requests carry a handful of parameters, so a
    /// linear scan beats hashing here.
    pub fn insert(
        &mut self,
        name: Cow<'a, str>,
        value: ParamValue<'a>,
        source: ParamSource,
    ) -> Result<(), Deny> {
        let forms = NameForms::of(&name).ok_or(Deny::InvalidParameter)?;
        if self
            .entries
            .iter()
            .any(|e| NameForms::same(&e.name, &e.forms, &name, &forms))
        {
            return Err(Deny::DuplicateParameter);
        }
        self.entries.push(Entry {
            name,
            value,
            source,
            forms,
        });
        Ok(())
    }

    /// The same parameters owning their names and values.
    pub fn into_owned(self) -> Params<'static> {
        Params {
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    name: Cow::Owned(e.name.into_owned()),
                    value: e.value.into_owned(),
                    source: e.source,
                    forms: e.forms,
                })
                .collect(),
        }
    }

    /// Whether some parameter reads as `plain` (a lower-case ASCII name such as
    /// `_method`) to a lenient parser, however it is spelled.
    pub fn any_reads_as(&self, plain: &str) -> bool {
        self.entries
            .iter()
            .any(|e| NameForms::reads_as(&e.name, &e.forms, plain))
    }

    /// The value of a field the policy reads (a fact, a freshness field), spelled exactly
    /// `name`. When it is absent but another spelling of it is present (`AMOUNT` for
    /// `amount`), that is a [`Deny::InvalidParameter`]: a lenient exchange would read the
    /// value the gateway did not check.
    pub fn field(&self, name: &str) -> Result<Option<&ParamValue<'a>>, Deny> {
        if let Some(v) = self.get(name) {
            return Ok(Some(v));
        }
        let forms = NameForms::of(name).unwrap_or_default();
        if self
            .entries
            .iter()
            .any(|e| NameForms::same(&e.name, &e.forms, name, &forms))
        {
            return Err(Deny::InvalidParameter);
        }
        Ok(None)
    }

    /// [`Params::field`] as text.
    pub fn field_text(&self, name: &str) -> Result<Option<&str>, Deny> {
        self.field(name)?.map(ParamValue::as_text).transpose()
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&ParamValue<'a>> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.value)
    }

    /// The value of `name` as text, if present.
    pub fn text(&self, name: &str) -> Result<Option<&str>, Deny> {
        self.get(name).map(ParamValue::as_text).transpose()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All parameters in arrival order (query first, then body).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue<'a>, ParamSource)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_ref(), &e.value, e.source))
    }

    /// How many parameters there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> ParamValue<'_> {
        ParamValue::Text(s.into())
    }

    #[test]
    fn folded_twins_are_duplicates() {
        for twin in [
            "address",
            " address",
            "address[]",
            "address[0]",
            "ADDRESS",
            "Address ",
            "ａｄｄｒｅｓｓ",
            "address\u{3000}",
        ] {
            let mut p = Params::new();
            p.insert("address".into(), text("ok"), ParamSource::Body)
                .unwrap();
            assert_eq!(
                p.insert(twin.into(), text("evil"), ParamSource::Body),
                Err(Deny::DuplicateParameter),
                "{twin:?}"
            );
        }
        let mut p = Params::new();
        p.insert("opt.fee".into(), text("1"), ParamSource::Body)
            .unwrap();
        assert_eq!(
            p.insert("opt_fee".into(), text("2"), ParamSource::Body),
            Err(Deny::DuplicateParameter)
        );
        // Control and invisible characters refuse the name itself.
        for bad in ["\taddress", "address\u{200B}", "\u{FEFF}address"] {
            let mut p = Params::new();
            assert_eq!(
                p.insert(bad.into(), text("evil"), ParamSource::Body),
                Err(Deny::InvalidParameter),
                "{bad:?}"
            );
        }
        // Named sub-keys are different parameters.
        let mut p = Params::new();
        p.insert("close[ordertype]".into(), text("limit"), ParamSource::Body)
            .unwrap();
        p.insert("close[price]".into(), text("1"), ParamSource::Body)
            .unwrap();
        p.insert("close".into(), text("x"), ParamSource::Body)
            .unwrap();
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn fields_are_read_only_as_spelled() {
        let mut p = Params::new();
        p.insert("AMOUNT".into(), text("1000"), ParamSource::Body)
            .unwrap();
        p.insert("price".into(), text("1"), ParamSource::Body)
            .unwrap();
        assert_eq!(p.field("amount"), Err(Deny::InvalidParameter));
        assert_eq!(p.field_text("price"), Ok(Some("1")));
        assert_eq!(p.field("quantity"), Ok(None));
        assert!(p.any_reads_as("amount"));
        assert!(!p.any_reads_as("_method"));
    }

    #[test]
    fn folding_as_documented() {
        assert_eq!(folded_name(" \ta.b c[]"), "a_b_c");
        assert_eq!(folded_name("a[12]"), "a");
        assert_eq!(folded_name("a[x]"), "a[x]");
        assert_eq!(folded_name("a[1]b"), "a[1]b");
        assert_eq!(folded_name("plain"), "plain");
    }
}
