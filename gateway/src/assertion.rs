//! The identity assertion (`X-Keyguard-Assertion`): a short-lived EdDSA JWT that tells the
//! upstream which key, account, action and client this request was allowed for, bound to
//! the exact method, path and body forwarded. The upstream verifies it with the public key
//! printed by `keyguard assertion-key` and trusts nothing without it.
//!
//! Tokens are assembled here with a ring key pair held in memory rather than through
//! `jsonwebtoken::encode`, which re-parses the PKCS#8 key on every call; tests check that
//! `jsonwebtoken` verifies what we produce.

use std::path::Path;

use anyhow::{anyhow, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::secrets::{check_private, write_private};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// base64url of `{"alg":"EdDSA","typ":"JWT"}`, computed once.
const HEADER_B64: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9";

/// Signs assertions.
pub struct AssertionSigner {
    pair: Ed25519KeyPair,
    ttl_secs: u64,
}

/// What one assertion states.
#[derive(serde::Serialize)]
pub struct Claims<'a> {
    /// Always "keyguard".
    pub iss: &'static str,
    /// Account id.
    pub sub: &'a str,
    /// API key id.
    pub kid: &'a str,
    /// Scopes of the key.
    pub scp: Vec<&'static str>,
    /// The action allowed.
    pub act: &'static str,
    /// Client IP.
    pub cip: String,
    /// HTTP method forwarded.
    pub mth: &'a str,
    /// Path forwarded.
    pub pth: &'a str,
    /// base64url SHA-256 of the forwarded body.
    pub bsh: String,
    /// base64url SHA-256 of the forwarded query string, when there is one: Binance GETs
    /// carry their whole meaning in the query, so the body hash alone would bind nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qsh: Option<String>,
    /// Issued at (s).
    pub iat: u64,
    /// Expires (s).
    pub exp: u64,
    /// Request id.
    pub jti: &'a str,
}

/// base64url (no padding) SHA-256 of `data`.
pub fn sha256_b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

impl AssertionSigner {
    /// Loads the signing key from `path`, generating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path, ttl_secs: u64) -> anyhow::Result<AssertionSigner> {
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => {
                check_private(path)?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow!("generating the assertion key"))?;
                write_private(path, doc.as_ref())?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        Ok(AssertionSigner { pair, ttl_secs })
    }

    /// The public key as SubjectPublicKeyInfo PEM, for the upstream.
    pub fn public_key_pem(&self) -> String {
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Seconds an assertion stays valid.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(HEADER_B64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn jsonwebtoken_verifies_our_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let signer = AssertionSigner::load_or_create(&dir.path().join("a.key"), 30).unwrap();
        assert_eq!(
            HEADER_B64,
            URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#)
        );
        let now = crate::store::now_ms() / 1000;
        let token = signer.sign(&Claims {
            iss: "keyguard",
            sub: "alice",
            kid: "kg_1",
            scp: vec!["read"],
            act: "read",
            cip: "127.0.0.2".into(),
            mth: "POST",
            pth: "/tapi",
            bsh: sha256_b64url(b"body"),
            qsh: None,
            iat: now,
            exp: now + 30,
            jti: "req1",
        });
        let key = DecodingKey::from_ed_pem(signer.public_key_pem().as_bytes()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&["keyguard"]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["kid"], "kg_1");
        assert_eq!(data.claims["bsh"], sha256_b64url(b"body"));
        // A different key does not verify it.
        let other = AssertionSigner::load_or_create(&dir.path().join("b.key"), 30).unwrap();
        let wrong = DecodingKey::from_ed_pem(other.public_key_pem().as_bytes()).unwrap();
        assert!(decode::<serde_json::Value>(&token, &wrong, &v).is_err());
        // Reloading gives the same key.
        let again = AssertionSigner::load_or_create(&dir.path().join("a.key"), 30).unwrap();
        assert_eq!(again.public_key_pem(), signer.public_key_pem());
    }
}
