//! API key records: who a key belongs to and what it may do, from where.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::action::Scopes;
use crate::time::UnixMillis;
use crate::UnknownName;

/// A key's lifecycle state. Narrowing is instant: suspend and revoke apply to the next
/// request the gateway sees after the change is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Temporarily unusable; can be resumed.
    Suspended,
    /// Permanently unusable.
    Revoked,
}

impl KeyStatus {
    /// The lower-case name used in the store, the CLI and the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Suspended => "suspended",
            KeyStatus::Revoked => "revoked",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(KeyStatus::Active),
            "suspended" => Ok(KeyStatus::Suspended),
            "revoked" => Ok(KeyStatus::Revoked),
            _ => Err(UnknownName),
        }
    }
}

/// A withdrawal destination a key may send an asset to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawAddress {
    /// Asset code as the exchange names it, lower-cased (`btc`).
    pub asset: String,
    /// The destination as stored and shown: an address, compared exactly, or an
    /// exchange-side withdrawal key written `key=NAME` or `key=NAME,address=ADDRESS`
    /// (see [`Destination::parse`]).
    pub address: String,
    /// When it was added; it is usable only after the configured cool-down.
    pub added_at: UnixMillis,
}

impl WithdrawAddress {
    /// The destination this entry allows; `None` for an entry written `key=…` that does
    /// not parse (such an entry allows nothing: the CLI and admin API refuse to store
    /// one, so it can only come from a hand-edited store).
    pub fn destination(&self) -> Option<Destination> {
        Destination::parse(&self.address).ok()
    }
}

/// Where an allowed withdrawal may go.
///
/// Kraken (and exchanges like it) withdraw to a *withdrawal key*: a destination the
/// account holder registered at the exchange under a name, which the request names in a
/// `key` field, with the address optional (when sent, Kraken refuses it unless it is the
/// key's address). An allowlist entry can name such a key, so the text of an entry is one
/// of:
/// - `ADDRESS` — the request's address must be exactly this;
/// - `key=NAME` — the request's withdrawal key must be exactly `NAME` (percent-decoded, so
///   a name with spaces or commas is written `key=My%20Ledger`); an address sent along is
///   left to the exchange to match against the key;
/// - `key=NAME,address=ADDRESS` — the key must be `NAME`, and an address, when the request
///   sends one, must be `ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A plain address.
    Address(String),
    /// An exchange-side withdrawal key, optionally pinned to its address.
    Key {
        /// The key's name as the request sends it.
        name: String,
        /// The address the key must resolve to, when the entry pins one.
        address: Option<String>,
    },
}

impl Destination {
    /// Parses an entry's text (see the type docs); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let Some(rest) = text.strip_prefix("key=") else {
            return Ok(Destination::Address(text.to_owned()));
        };
        let (name, address) = match rest.split_once(',') {
            None => (rest, None),
            Some((name, tail)) => match tail.strip_prefix("address=") {
                Some(a) if !a.is_empty() => (name, Some(a.to_owned())),
                _ => {
                    return Err(format!(
                        "{text:?}: after `key=NAME,` only `address=ADDRESS` may follow"
                    ))
                }
            },
        };
        let decoded = percent_encoding::percent_decode_str(name)
            .decode_utf8()
            .map_err(|_| format!("{text:?}: the key name is not UTF-8 once percent-decoded"))?;
        if decoded.is_empty() || decoded.chars().any(char::is_control) {
            return Err(format!(
                "{text:?}: the withdrawal key name must be 1 or more printable characters"
            ));
        }
        Ok(Destination::Key {
            name: decoded.into_owned(),
            address,
        })
    }

    /// Whether a withdrawal naming `key` and/or `address` goes where this entry allows.
    /// A request must name at least one of them (the caller checks).
    pub fn allows(&self, key: Option<&str>, address: Option<&str>) -> bool {
        match self {
            Destination::Address(a) => address == Some(a.as_str()),
            Destination::Key {
                name,
                address: None,
            } => key == Some(name.as_str()),
            Destination::Key {
                name,
                address: Some(pinned),
            } => {
                key.is_none_or(|k| k == name)
                    && address.is_none_or(|a| a == pinned)
                    && (key.is_some() || address.is_some())
            }
        }
    }
}

/// The material a request's signature is checked against.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A shared secret, exactly as handed to the client (Kraken's is base64 text; the
    /// dialect decodes it). Never printed: `Debug` is redacted.
    Hmac(Secret),
    /// A raw 32-byte Ed25519 public key (Binance "Ed25519 API keys").
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Hmac(_) => f.write_str("Hmac(<redacted>)"),
            Credential::Ed25519(pk) => write!(f, "Ed25519({})", hex::encode(pk)),
        }
    }
}

/// Secret bytes that are wiped when dropped and never formatted.
///
/// The HMAC key derived from them is kept once computed: deriving it hashes two padded
/// key blocks, which was about a third of a Zaif signature check. (The derived pads let
/// anyone compute the HMAC, so they are as secret as the bytes; ring does not wipe them.)
pub struct Secret(Vec<u8>, std::sync::OnceLock<DerivedHmac>);

/// How a dialect turns stored secret text into HMAC key bytes (Kraken: base64).
pub type DecodeSecret = fn(&[u8]) -> Option<Vec<u8>>;

/// The one HMAC key a gateway needs for a secret (a gateway speaks one dialect).
struct DerivedHmac {
    algorithm: ring::hmac::Algorithm,
    base64: bool,
    key: Option<ring::hmac::Key>,
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Secret::new(self.0.clone())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes, std::sync::OnceLock::new())
    }

    /// The secret bytes; callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The HMAC key for `algorithm` over these bytes, or over their base64 decoding when
    /// `decode` is given (Kraken hands out base64 text); `None` when decoding fails.
    /// Computed once per secret and then reused.
    pub fn hmac_key(
        &self,
        algorithm: ring::hmac::Algorithm,
        decode: Option<DecodeSecret>,
    ) -> Option<ring::hmac::Key> {
        let derive = || {
            let key = match decode {
                Some(f) => {
                    let bytes = Secret::new(f(&self.0)?);
                    ring::hmac::Key::new(algorithm, bytes.expose())
                }
                None => ring::hmac::Key::new(algorithm, &self.0),
            };
            Some(key)
        };
        let cached = self.1.get_or_init(|| DerivedHmac {
            algorithm,
            base64: decode.is_some(),
            key: derive(),
        });
        if cached.algorithm == algorithm && cached.base64 == decode.is_some() {
            cached.key.clone()
        } else {
            derive()
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort without unsafe: overwrite before the allocation is released.
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the policy knows about one API key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Internal id (`kg_…`), used in logs and the CLI; not a credential.
    pub key_id: String,
    /// The API key string clients send in headers.
    pub api_key: String,
    /// The account (exchange user) the key acts for.
    pub account: String,
    /// Free text set by the owner.
    pub label: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// Source networks allowed to use the key; empty means any (and then no withdraw).
    pub allow_ips: Vec<IpNet>,
    /// Withdrawal destinations per asset.
    pub withdraw_addresses: Vec<WithdrawAddress>,
    /// Networks trusted from the key's creation (the creator's network in the web UI,
    /// `keys create --trust-ip`): known at once for the new-IP rule, and they make the
    /// first other network a new one rather than a trusted first use.
    pub trusted_ips: Vec<IpNet>,
    /// When the key was created.
    pub created_at: UnixMillis,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixMillis>,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// What signatures are verified against.
    pub credential: Credential,
    /// A canary: planted where leaks happen, never to be used. It authenticates like any
    /// key, but its first correctly signed use is refused as [`crate::Deny::Canary`]
    /// and raises the alarm; nothing it signs is ever forwarded.
    pub canary: bool,
}

impl KeyRecord {
    /// Whether `ip` is inside the allowlist. An empty allowlist admits any IP; callers
    /// that need one (withdraw) check [`KeyRecord::allow_ips`] themselves.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_ips.is_empty() || self.allow_ips.iter().any(|net| net.contains(&ip))
    }
}

/// Maps IPv4-mapped IPv6 (`::ffff:192.0.2.1`) to plain IPv4, so one allowlist entry
/// covers a client however the socket reports it.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses an allowlist entry: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address
/// (a /32 or /128). IPv4-mapped IPv6 networks are normalized to IPv4, and host bits must
/// be zero so `10.0.0.1/8` (probably a typo) is refused rather than widened.
pub fn parse_allow_ip(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("`{s}` is not an IP address or CIDR")),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                let v4net =
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| e.to_string())?;
                return Ok(IpNet::V4(v4net));
            }
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        use Destination::*;
        assert_eq!(Destination::parse("bc1q"), Ok(Address("bc1q".into())));
        assert_eq!(
            Destination::parse("key=My%20Ledger"),
            Ok(Key {
                name: "My Ledger".into(),
                address: None
            })
        );
        assert_eq!(
            Destination::parse("key=w1,address=bc1q"),
            Ok(Key {
                name: "w1".into(),
                address: Some("bc1q".into())
            })
        );
        for bad in ["key=", "key=w,bc1q", "key=w,address=", "key=%FF", "key=%00"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        let key_only = Destination::parse("key=w1").unwrap();
        assert!(key_only.allows(Some("w1"), None));
        assert!(key_only.allows(Some("w1"), Some("anything: the exchange checks it")));
        assert!(!key_only.allows(Some("w2"), None));
        assert!(!key_only.allows(None, Some("w1")));
        let pinned = Destination::parse("key=w1,address=bc1q").unwrap();
        assert!(pinned.allows(Some("w1"), Some("bc1q")));
        assert!(pinned.allows(Some("w1"), None));
        assert!(pinned.allows(None, Some("bc1q")));
        assert!(!pinned.allows(Some("w1"), Some("evil")));
        assert!(!pinned.allows(Some("w2"), Some("bc1q")));
        assert!(!pinned.allows(None, None));
        let plain = Destination::parse("bc1q").unwrap();
        assert!(plain.allows(None, Some("bc1q")));
        assert!(plain.allows(Some("any"), Some("bc1q")));
        assert!(!plain.allows(Some("w1"), None));
    }

    #[test]
    fn mapped_v6_normalizes() {
        assert_eq!(
            parse_allow_ip("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_allow_ip("127.0.0.2").unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert!(parse_allow_ip("10.0.0.1/8").is_err());
        assert!(parse_allow_ip("nope").is_err());
        let ip: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(canonical_ip(ip).to_string(), "127.0.0.2");
    }
}
