//! Verification of the gateway's identity assertion (`X-Keyguard-Assertion`).
//!
//! This is what a real exchange would run if it trusted Keyguard: the JWT proves that the
//! gateway authenticated and authorized *this* request. So besides the signature and the
//! issuer, the claims must match the request as received (method, path, SHA-256 of the
//! body), the token must be short-lived, and its `jti` must never have been seen before:
//! an assertion lifted from one request cannot be replayed or attached to another.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

/// The issuer every assertion must name.
pub const ISSUER: &str = "keyguard";

/// The longest lifetime (`exp - iat`) an assertion may declare, in seconds.
pub const MAX_LIFETIME_SECS: u64 = 30;

/// Clock skew tolerated on `iat` and `exp`, in seconds. The gateway and the exchange
/// are different machines in production; a few seconds of drift must not break trading.
pub const LEEWAY_SECS: u64 = 5;

/// The claims of an assertion, as the gateway signs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Issuer: always `keyguard`.
    pub iss: String,
    /// The account the key belongs to.
    pub sub: String,
    /// The key id that signed the client request.
    pub kid: String,
    /// The key's scopes.
    pub scp: Vec<String>,
    /// The action the gateway classified the request as.
    pub act: String,
    /// The client IP the gateway saw.
    pub cip: String,
    /// HTTP method of the forwarded request.
    pub mth: String,
    /// Path of the forwarded request.
    pub pth: String,
    /// base64url (no padding) SHA-256 of the forwarded body.
    pub bsh: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Request id; unique per assertion.
    pub jti: String,
}

/// The parts of a received request an assertion must be bound to.
#[derive(Debug, Clone, Copy)]
pub struct BoundRequest<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// Path without query, e.g. `/tapi`.
    pub path: &'a str,
    /// The body bytes exactly as received.
    pub body: &'a [u8],
}

/// Why an assertion was refused. Each variant has a stable [`code`](AssertionError::code)
/// that the mock reports, so tests can tell a forged token from a replayed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The request carried no assertion header (or a non-text one).
    #[error("no identity assertion")]
    Missing,
    /// The token is not a well-formed JWT with the expected claims.
    #[error("malformed assertion: {0}")]
    Malformed(String),
    /// The signature does not verify under the configured key (or the header's `alg` is
    /// not the one the key is for).
    #[error("assertion signature does not verify")]
    BadSignature,
    /// The header's `kid` names no key in the JWKS.
    #[error("assertion signed by an unknown key")]
    UnknownKey,
    /// `iss` is not `keyguard`.
    #[error("assertion issuer is not keyguard")]
    WrongIssuer,
    /// `exp` is in the past.
    #[error("assertion expired")]
    Expired,
    /// `iat` is in the future.
    #[error("assertion issued in the future")]
    IssuedInFuture,
    /// `exp` is before `iat` or more than [`MAX_LIFETIME_SECS`] after it.
    #[error("assertion lifetime exceeds {MAX_LIFETIME_SECS} s")]
    LifetimeTooLong,
    /// `mth` differs from the request method.
    #[error("assertion is for method {0}")]
    MethodMismatch(String),
    /// `pth` differs from the request path.
    #[error("assertion is for path {0}")]
    PathMismatch(String),
    /// `bsh` differs from the hash of the received body.
    #[error("assertion body hash does not match the body")]
    BodyMismatch,
    /// This `jti` was already used.
    #[error("assertion jti already used")]
    Replayed,
    /// `act` is not the action this endpoint performs.
    #[error("assertion action {asserted} does not match endpoint action {endpoint}")]
    ActionMismatch {
        /// What the gateway asserted.
        asserted: String,
        /// What the endpoint does.
        endpoint: &'static str,
    },
    /// `scp` does not include the endpoint's action.
    #[error("assertion scopes do not include {0}")]
    ScopeMissing(&'static str),
}

impl AssertionError {
    /// A stable machine-readable code.
    pub const fn code(&self) -> &'static str {
        match self {
            AssertionError::Missing => "assertion_missing",
            AssertionError::Malformed(_) => "assertion_malformed",
            AssertionError::BadSignature => "assertion_bad_signature",
            AssertionError::UnknownKey => "assertion_unknown_key",
            AssertionError::WrongIssuer => "assertion_wrong_issuer",
            AssertionError::Expired => "assertion_expired",
            AssertionError::IssuedInFuture => "assertion_issued_in_future",
            AssertionError::LifetimeTooLong => "assertion_lifetime_too_long",
            AssertionError::MethodMismatch(_) => "assertion_method_mismatch",
            AssertionError::PathMismatch(_) => "assertion_path_mismatch",
            AssertionError::BodyMismatch => "assertion_body_mismatch",
            AssertionError::Replayed => "assertion_replayed",
            AssertionError::ActionMismatch { .. } => "assertion_action_mismatch",
            AssertionError::ScopeMissing(_) => "assertion_scope_missing",
        }
    }
}

/// The base64url (no padding) SHA-256 of `body`, as carried in `bsh`.
pub fn body_hash(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Verifies assertions against the gateway's keys and remembers used `jti`s.
///
/// Keys come from a JWKS (what `keyguard assertion-key` prints: HS256 `oct` keys and
/// Ed25519 `OKP` keys, each with its `kid`), or from one Ed25519 SPKI PEM. A token is
/// checked only with the key its header's `kid` names and only under the algorithm that
/// key declares, so an HS256 token can never be checked against an Ed25519 public key
/// taken as an HMAC secret (the classic algorithm-confusion forgery). With a JWKS file,
/// an unknown `kid` makes the verifier re-read the file once, which is how it follows a
/// key rotation, like an exchange re-fetching a JWKS URL.
pub struct AssertionVerifier {
    keys: RwLock<HashMap<String, (Algorithm, DecodingKey)>>,
    /// The one key of [`AssertionVerifier::from_pem`], used whatever the `kid`.
    pem: Option<DecodingKey>,
    jwks_file: Option<PathBuf>,
    seen: Mutex<SeenIds>,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier").finish_non_exhaustive()
    }
}

/// The keys of a JWKS document, by `kid`, with the algorithm each declares.
fn parse_jwks(json: &[u8]) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().ok_or("a JWK without kid")?;
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::OctetKey(_), Some(KeyAlgorithm::HS256)) => Algorithm::HS256,
            (AlgorithmParameters::OctetKeyPair(_), Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            (_, alg) => return Err(format!("JWK {kid}: unsupported key type or alg {alg:?}")),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
        keys.insert(kid, (alg, key));
    }
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    Ok(keys)
}

impl AssertionVerifier {
    /// Builds a verifier from an Ed25519 SPKI PEM public key (`keyguard assertion-key
    /// --pem`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(AssertionVerifier {
            keys: RwLock::new(HashMap::new()),
            pem: Some(DecodingKey::from_ed_pem(pem)?),
            jwks_file: None,
            seen: Mutex::new(SeenIds::default()),
        })
    }

    /// Builds a verifier from a JWKS document.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        Ok(AssertionVerifier {
            keys: RwLock::new(parse_jwks(json)?),
            pem: None,
            jwks_file: None,
            seen: Mutex::new(SeenIds::default()),
        })
    }

    /// Builds a verifier from a JWKS file, or a PEM file (told apart by content), that
    /// is re-read when a token names a key it does not know.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if bytes.starts_with(b"-----BEGIN") {
            return AssertionVerifier::from_pem(&bytes)
                .map_err(|e| format!("{}: not an Ed25519 SPKI PEM key: {e}", path.display()));
        }
        let mut v =
            AssertionVerifier::from_jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        v.jwks_file = Some(path.to_owned());
        Ok(v)
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISSUER]);
        // Time is checked below against an injected clock, so tests can be exact and
        // the lifetime cap (which jsonwebtoken has no notion of) sits next to it.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation
    }

    /// The key and algorithm for `kid`, re-reading the JWKS file once if it is unknown.
    fn key_for(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        if let Some(k) = self.keys.read().get(kid) {
            return Some(k.clone());
        }
        let path = self.jwks_file.as_ref()?;
        let fresh = parse_jwks(&std::fs::read(path).ok()?).ok()?;
        let found = fresh.get(kid).cloned();
        *self.keys.write() = fresh;
        found
    }

    /// Verifies `token` for `request` at `now` (Unix seconds) and, if it is valid, marks
    /// its `jti` as used. A refused token does not consume its `jti`, so a forged copy
    /// cannot lock out the genuine request.
    pub fn verify(
        &self,
        token: &str,
        request: BoundRequest<'_>,
        now: u64,
    ) -> Result<AssertionClaims, AssertionError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AssertionError::Malformed(format!("{:?}", e.kind())))?;
        let (alg, key) = match &self.pem {
            Some(key) => (Algorithm::EdDSA, key.clone()),
            None => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AssertionError::Malformed("no kid in the header".into()))?;
                self.key_for(kid).ok_or(AssertionError::UnknownKey)?
            }
        };
        if header.alg != alg {
            return Err(AssertionError::BadSignature);
        }
        let claims = jsonwebtoken::decode::<AssertionClaims>(token, &key, &Self::validation(alg))
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AssertionError::BadSignature,
                ErrorKind::InvalidIssuer => AssertionError::WrongIssuer,
                other => AssertionError::Malformed(format!("{other:?}")),
            })?
            .claims;

        if claims.exp < claims.iat || claims.exp - claims.iat > MAX_LIFETIME_SECS {
            return Err(AssertionError::LifetimeTooLong);
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(AssertionError::IssuedInFuture);
        }
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AssertionError::Expired);
        }
        if claims.mth != request.method {
            return Err(AssertionError::MethodMismatch(claims.mth));
        }
        if claims.pth != request.path {
            return Err(AssertionError::PathMismatch(claims.pth));
        }
        if claims.bsh != body_hash(request.body) {
            return Err(AssertionError::BodyMismatch);
        }
        if !self.seen.lock().insert(&claims.jti, claims.exp, now) {
            return Err(AssertionError::Replayed);
        }
        Ok(claims)
    }
}

/// Used `jti`s with their expiry. An id can be forgotten once its token would be refused
/// as expired anyway, which bounds memory by request rate × lifetime.
#[derive(Debug, Default)]
struct SeenIds {
    by_id: HashMap<String, u64>,
    // Insertion order; expiries are nearly monotonic (lifetimes are ≤ 30 s), so pruning
    // from the front forgets almost everything that may be forgotten.
    order: VecDeque<(u64, String)>,
}

impl SeenIds {
    /// Records `jti`; false if it was already recorded.
    fn insert(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        while let Some((front_exp, _)) = self.order.front() {
            if front_exp.saturating_add(LEEWAY_SECS) >= now {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
        if self.by_id.contains_key(jti) {
            return false;
        }
        self.by_id.insert(jti.to_owned(), exp);
        self.order.push_back((exp, jti.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests;
