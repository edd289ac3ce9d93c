//! Test helpers: an Ed25519 key pair that signs assertions the way the gateway does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::assertion::{body_hash, AssertionClaims};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A signing key and its public key as SPKI PEM.
pub(crate) struct TestSigner {
    encoding: EncodingKey,
    /// `-----BEGIN PUBLIC KEY-----` PEM, as `keyguard assertion-key` prints it.
    pub(crate) public_pem: String,
}

impl TestSigner {
    pub(crate) fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse key");
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        );
        TestSigner {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_pem,
        }
    }

    pub(crate) fn sign(&self, claims: &AssertionClaims) -> String {
        self.sign_with_header(Header::new(Algorithm::EdDSA), claims)
    }

    pub(crate) fn sign_with_header(&self, header: Header, claims: &AssertionClaims) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign assertion")
    }
}

/// Claims for `method path` with `body`, issued at `now` by key `k1` of account `acct-1`.
pub(crate) fn claims_for(
    method: &str,
    path: &str,
    body: &[u8],
    action: &str,
    jti: &str,
    now: u64,
) -> AssertionClaims {
    AssertionClaims {
        iss: "keyguard".into(),
        sub: "acct-1".into(),
        kid: "k1".into(),
        scp: vec!["read".into(), "trade".into(), "withdraw".into()],
        act: action.into(),
        cip: "127.0.0.2".into(),
        mth: method.into(),
        pth: path.into(),
        bsh: body_hash(body),
        iat: now,
        exp: now + 30,
        jti: jti.into(),
    }
}
