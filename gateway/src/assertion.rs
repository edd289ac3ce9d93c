//! The identity assertion (`X-Keyguard-Assertion`): a short-lived JWT that tells the
//! upstream which key, account, action and client this request was allowed for, bound to
//! the exact method, path, query and body forwarded. The upstream trusts nothing without it.
//!
//! Two algorithms (DESIGN §3, `[assertion] alg`):
//! - `HS256` (default): HMAC-SHA256 under a 256-bit key in the data dir that the exchange
//!   holds too. About a microsecond per request.
//! - `EdDSA`: Ed25519; the exchange holds only the public key. About 23 µs per request.
//!
//! The JWT header's `kid` names the assertion key, derived from the key itself, so the
//! exchange can pick the right key from the JWKS that `keyguard assertion-key` prints.
//! `--rotate` makes a new key; the previous one stays in the JWKS for one TTL, so tokens
//! it signed before the switch still verify. A running gateway notices a rotated key
//! file within half a second ([`AssertionSigner::reload_if_changed`]).
//!
//! Tokens are assembled here, with the key prepared once, rather than through
//! `jsonwebtoken::encode`, which re-parses the key and goes through `serde_json` on every
//! call; tests check that `jsonwebtoken` verifies what we produce, for both algorithms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use keyguard_config::AssertionAlg;
use keyguard_policy::Scopes;
use parking_lot::Mutex;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::json::Object;
use crate::secrets::{check_private, random_bytes, write_private};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an HS256 assertion key: 256 bits, as RFC 7518 §3.2 asks for HS256.
const HS256_KEY_LEN: usize = 32;

/// What one assertion states.
pub struct Claims<'a> {
    /// Account id (`sub`).
    pub sub: &'a str,
    /// API key id (`kid` claim; not the header's `kid`, which names the assertion key).
    pub kid: &'a str,
    /// Scopes of the key (`scp`).
    pub scp: Scopes,
    /// The action allowed (`act`).
    pub act: &'static str,
    /// Client IP (`cip`).
    pub cip: &'a str,
    /// HTTP method forwarded (`mth`).
    pub mth: &'a str,
    /// Path forwarded (`pth`).
    pub pth: &'a str,
    /// The forwarded body; its base64url SHA-256 is `bsh`.
    pub body: &'a [u8],
    /// The forwarded query string, when there is one; its hash is `qsh`. Binance GETs
    /// carry their whole meaning in the query, so the body hash alone would bind nothing.
    pub query: Option<&'a str>,
    /// Issued at (s); `exp` is `iat` plus the TTL.
    pub iat: u64,
    /// Request id (`jti`).
    pub jti: &'a str,
}

/// base64url (no padding) SHA-256 of `data`.
pub fn sha256_b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// One assertion key, ready to sign.
pub struct SigningKey {
    kid: String,
    /// base64url of the JWT header naming this key, computed once.
    header_b64: String,
    material: Material,
}

enum Material {
    Hmac {
        key: hmac::Key,
        raw: [u8; HS256_KEY_LEN],
    },
    Ed(Ed25519KeyPair),
}

impl SigningKey {
    /// Reads the key in `path` (which must be private to its owner).
    pub fn load(alg: AssertionAlg, path: &Path) -> anyhow::Result<SigningKey> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        check_private(path)?;
        SigningKey::from_bytes(alg, &bytes).with_context(|| {
            format!(
                "{} is not an {} assertion key",
                path.display(),
                alg.as_str()
            )
        })
    }

    fn from_bytes(alg: AssertionAlg, bytes: &[u8]) -> anyhow::Result<SigningKey> {
        let material = match alg {
            AssertionAlg::Hs256 => {
                let raw: [u8; HS256_KEY_LEN] = bytes.try_into().map_err(|_| {
                    anyhow!("expected {HS256_KEY_LEN} bytes, found {}", bytes.len())
                })?;
                Material::Hmac {
                    key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
                    raw,
                }
            }
            AssertionAlg::EdDsa => Material::Ed(
                Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| anyhow!("not Ed25519 PKCS#8"))?,
            ),
        };
        // The kid is a digest, so it names the key without revealing anything of an HMAC
        // secret, and the same file always gets the same kid (no extra state to keep).
        let digest_input: &[u8] = match &material {
            Material::Hmac { raw, .. } => raw,
            Material::Ed(pair) => pair.public_key().as_ref(),
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"keyguard assertion key id\0");
        ctx.update(alg.as_str().as_bytes());
        ctx.update(digest_input);
        let kid = format!(
            "{}-{}",
            match alg {
                AssertionAlg::Hs256 => "hs",
                AssertionAlg::EdDsa => "ed",
            },
            URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..12])
        );
        let header = serde_json::json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(SigningKey {
            kid,
            header_b64,
            material,
        })
    }

    /// Generates a new key and writes it to `path` (mode 0600; the file must not exist).
    pub fn generate(alg: AssertionAlg, path: &Path) -> anyhow::Result<SigningKey> {
        let bytes = match alg {
            AssertionAlg::Hs256 => random_bytes::<HS256_KEY_LEN>()?.to_vec(),
            AssertionAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow!("generating the assertion key"))?
                .as_ref()
                .to_vec(),
        };
        write_private(path, &bytes)?;
        SigningKey::from_bytes(alg, &bytes)
    }

    /// Loads `path`, generating the key on first start.
    pub fn load_or_create(alg: AssertionAlg, path: &Path) -> anyhow::Result<SigningKey> {
        if path.exists() {
            SigningKey::load(alg, path)
        } else {
            SigningKey::generate(alg, path)
        }
    }

    /// The key's id, as in the JWT header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK (RFC 7517; RFC 8037 for Ed25519). For HS256 this is the shared
    /// secret itself (`kty: oct`): hand it to the exchange over a private channel.
    pub fn jwk(&self) -> serde_json::Value {
        match &self.material {
            Material::Hmac { raw, .. } => serde_json::json!({
                "kty": "oct",
                "alg": "HS256",
                "use": "sig",
                "kid": self.kid,
                "k": URL_SAFE_NO_PAD.encode(raw),
            }),
            Material::Ed(pair) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        }
    }

    /// The Ed25519 public key as SubjectPublicKeyInfo PEM; `None` for HS256.
    pub fn public_key_pem(&self) -> Option<String> {
        let Material::Ed(pair) = &self.material else {
            return None;
        };
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        Some(format!(
            "-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"
        ))
    }

    fn sign(&self, claims: &Claims<'_>, ttl_secs: u64) -> String {
        let mut payload = Vec::with_capacity(384);
        let mut o = Object::new(&mut payload);
        o.str("iss", "keyguard")
            .str("sub", claims.sub)
            .str("kid", claims.kid)
            .strs("scp", claims.scp.iter().map(|s| s.as_str()))
            .str("act", claims.act)
            .str("cip", claims.cip)
            .str("mth", claims.mth)
            .str("pth", claims.pth)
            .str("bsh", &sha256_b64url(claims.body));
        if let Some(q) = claims.query {
            o.str("qsh", &sha256_b64url(q.as_bytes()));
        }
        o.u64("iat", claims.iat)
            .u64("exp", claims.iat + ttl_secs)
            .str("jti", claims.jti);
        o.end();
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        token.push('.');
        match &self.material {
            Material::Hmac { key, .. } => {
                let tag = hmac::sign(key, &token.as_bytes()[..token.len() - 1]);
                URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
            }
            Material::Ed(pair) => {
                let sig = pair.sign(&token.as_bytes()[..token.len() - 1]);
                URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
            }
        }
        token
    }
}

/// Identifies one version of a key file, to notice a rotation without re-reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            inode,
        })
    }
}

/// Signs assertions with the current key of one algorithm.
pub struct AssertionSigner {
    current: ArcSwap<SigningKey>,
    alg: AssertionAlg,
    path: PathBuf,
    stamp: Mutex<Option<FileStamp>>,
    ttl_secs: u64,
}

impl AssertionSigner {
    /// Loads the key in `path`, generating it (mode 0600) on first start.
    pub fn load_or_create(
        alg: AssertionAlg,
        path: &Path,
        ttl_secs: u64,
    ) -> anyhow::Result<AssertionSigner> {
        let key = SigningKey::load_or_create(alg, path)?;
        Ok(AssertionSigner {
            current: ArcSwap::from_pointee(key),
            alg,
            path: path.to_owned(),
            stamp: Mutex::new(FileStamp::of(path).ok()),
            ttl_secs,
        })
    }

    /// Seconds an assertion stays valid.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The key signing now.
    pub fn current(&self) -> Arc<SigningKey> {
        self.current.load_full()
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        self.current.load().sign(claims, self.ttl_secs)
    }

    /// Switches to the key in the file if the file changed (`assertion-key --rotate`).
    /// Returns whether it switched. A file that is missing or unreadable for a moment
    /// (between the two renames of a rotation) keeps the current key.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let Ok(stamp) = FileStamp::of(&self.path) else {
            return Ok(false);
        };
        let mut seen = self.stamp.lock();
        if *seen == Some(stamp) {
            return Ok(false);
        }
        let key = SigningKey::load(self.alg, &self.path)?;
        *seen = Some(stamp);
        if key.kid == self.current.load().kid {
            return Ok(false);
        }
        tracing::info!(kid = %key.kid, "assertion key rotated");
        self.current.store(Arc::new(key));
        Ok(true)
    }
}

/// Where the key retired by the last rotation is kept.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

/// Replaces the key in `path` with a new one; the old one moves to
/// [`previous_path`], stamped with the time of the rotation, and is published for one TTL.
pub fn rotate(alg: AssertionAlg, path: &Path) -> anyhow::Result<SigningKey> {
    // Make sure the old key is a valid one before retiring it.
    SigningKey::load_or_create(alg, path)?;
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    let _ = std::fs::remove_file(&staged);
    let key = SigningKey::generate(alg, &staged)?;
    let previous = previous_path(path);
    std::fs::rename(path, &previous)
        .with_context(|| format!("moving {} to {}", path.display(), previous.display()))?;
    // The file's mtime is the key's creation; stamp the rotation instead, which is what
    // decides how long the old key stays published.
    std::fs::File::options()
        .write(true)
        .open(&previous)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .with_context(|| format!("stamping {}", previous.display()))?;
    std::fs::rename(&staged, path)
        .with_context(|| format!("moving {} to {}", staged.display(), path.display()))?;
    Ok(key)
}

/// The JWKS (RFC 7517 §5) an upstream needs: the current key and, for one TTL after a
/// rotation, the previous one.
pub fn jwks(alg: AssertionAlg, path: &Path, ttl_secs: u64) -> anyhow::Result<serde_json::Value> {
    let current = SigningKey::load_or_create(alg, path)?;
    let mut keys = vec![current.jwk()];
    let previous = previous_path(path);
    if let Ok(meta) = std::fs::metadata(&previous) {
        let retired = meta.modified()?;
        let age = SystemTime::now()
            .duration_since(retired)
            .unwrap_or(Duration::ZERO);
        if age <= Duration::from_secs(ttl_secs) {
            keys.push(SigningKey::load(alg, &previous)?.jwk());
        }
    }
    Ok(serde_json::json!({ "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    fn claims(now: u64) -> Claims<'static> {
        Claims {
            sub: "alice \"the\" trader",
            kid: "kg_1",
            scp: [keyguard_policy::Scope::Read, keyguard_policy::Scope::Trade]
                .into_iter()
                .collect(),
            act: "read",
            cip: "127.0.0.2",
            mth: "POST",
            pth: "/tapi",
            body: b"body",
            query: Some("a=1"),
            iat: now,
            jti: "req1",
        }
    }

    /// What an exchange does: pick the key named by the token's header `kid` from the JWKS.
    fn verify_with_jwks(
        token: &str,
        jwks: &serde_json::Value,
    ) -> jsonwebtoken::errors::Result<serde_json::Value> {
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let header = decode_header(token)?;
        let jwk = set
            .find(header.kid.as_deref().unwrap_or(""))
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&["keyguard"]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        Ok(decode::<serde_json::Value>(token, &key, &v)?.claims)
    }

    #[test]
    fn jsonwebtoken_verifies_our_tokens_for_both_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::store::now_ms() / 1000;
        for (alg, jalg) in [
            (AssertionAlg::Hs256, Algorithm::HS256),
            (AssertionAlg::EdDsa, Algorithm::EdDSA),
        ] {
            let path = dir.path().join(format!("{}.key", alg.as_str()));
            let signer = AssertionSigner::load_or_create(alg, &path, 30).unwrap();
            let token = signer.sign(&claims(now));
            let header = decode_header(&token).unwrap();
            assert_eq!(header.alg, jalg);
            assert_eq!(header.kid.as_deref(), Some(signer.current().kid()));
            let set = jwks(alg, &path, 30).unwrap();
            let c = verify_with_jwks(&token, &set).unwrap();
            assert_eq!(c["sub"], "alice \"the\" trader");
            assert_eq!(c["kid"], "kg_1");
            assert_eq!(c["scp"], serde_json::json!(["read", "trade"]));
            assert_eq!(c["bsh"], sha256_b64url(b"body"));
            assert_eq!(c["qsh"], sha256_b64url(b"a=1"));
            assert_eq!(c["exp"], now + 30);
            assert_eq!(c["jti"], "req1");

            // A different key of the same algorithm does not verify it.
            let other = dir.path().join(format!("other-{}.key", alg.as_str()));
            let mut wrong = jwks(alg, &other, 30).unwrap();
            wrong["keys"][0]["kid"] = header.kid.clone().unwrap().into();
            assert!(verify_with_jwks(&token, &wrong).is_err());

            // Reloading gives the same key, and the file is private.
            let again = AssertionSigner::load_or_create(alg, &path, 30).unwrap();
            assert_eq!(again.current().kid(), signer.current().kid());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn the_pem_is_the_ed25519_key_of_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        let signer = AssertionSigner::load_or_create(AssertionAlg::EdDsa, &path, 30).unwrap();
        let pem = signer.current().public_key_pem().unwrap();
        let token = signer.sign(&claims(crate::store::now_ms() / 1000));
        let key = DecodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&["keyguard"]);
        assert!(decode::<serde_json::Value>(&token, &key, &v).is_ok());
        let hs = dir.path().join("h.key");
        let hs = AssertionSigner::load_or_create(AssertionAlg::Hs256, &hs, 30).unwrap();
        assert!(hs.current().public_key_pem().is_none());
    }

    #[test]
    fn rotation_keeps_the_previous_key_published_for_one_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        let signer = AssertionSigner::load_or_create(AssertionAlg::Hs256, &path, 30).unwrap();
        let now = crate::store::now_ms() / 1000;
        let old_token = signer.sign(&claims(now));
        let old_kid = signer.current().kid().to_owned();

        let new = rotate(AssertionAlg::Hs256, &path).unwrap();
        assert_ne!(new.kid(), old_kid);
        assert!(
            signer.reload_if_changed().unwrap(),
            "the signer picks up the new key"
        );
        assert!(!signer.reload_if_changed().unwrap(), "once");
        assert_eq!(signer.current().kid(), new.kid());
        let new_token = signer.sign(&claims(now));

        let set = jwks(AssertionAlg::Hs256, &path, 30).unwrap();
        let kids: Vec<&str> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [new.kid(), old_kid.as_str()]);
        assert!(verify_with_jwks(&old_token, &set).is_ok());
        assert!(verify_with_jwks(&new_token, &set).is_ok());

        // One TTL after the rotation the old key is gone from the JWKS.
        let previous = std::fs::File::options()
            .write(true)
            .open(previous_path(&path))
            .unwrap();
        previous
            .set_modified(SystemTime::now() - Duration::from_secs(31))
            .unwrap();
        let set = jwks(AssertionAlg::Hs256, &path, 30).unwrap();
        assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        assert!(verify_with_jwks(&old_token, &set).is_err());
        assert!(verify_with_jwks(&new_token, &set).is_ok());
    }

    #[test]
    fn a_key_file_of_the_wrong_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        SigningKey::generate(AssertionAlg::EdDsa, &path).unwrap();
        let e = SigningKey::load(AssertionAlg::Hs256, &path).err().unwrap();
        assert!(format!("{e:#}").contains("HS256"), "{e:#}");
    }
}
